"""Importing sources: every upload format, bad input refused or listed, folders, URLs, corpora."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.core import corpora
from training.core.curate.sources import (SourceError, SourceLimits, binary_reason, corpus_catalog, import_corpus,
                                          import_file, import_folder, import_url)

PROSE = "It is a truth universally acknowledged, that a single man in possession of a good fortune."


def read_docs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_every_text_format_becomes_documents_with_metadata(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"domain": "books", "language": "en", "licence": "public domain"}
    cases = {
        "a.txt": PROSE, "b.md": "# Title\n\n" + PROSE, "c.html": f"<html><body><p>{PROSE}</p></body></html>",
        "d.jsonl": json.dumps({"text": PROSE, "id": 7, "author": "Austen"}) + "\n" + json.dumps({"content": "two"}),
        "e.json": json.dumps({"data": [{"text": "one"}, {"body": "two"}, "three"]}),
        "f.csv": 'id,text,topic\n1,"first, with comma",x\n2,"multi\nline",y\n',
    }
    expected = {"a.txt": 1, "b.md": 1, "c.html": 1, "d.jsonl": 2, "e.json": 3, "f.csv": 2}
    for name, content in cases.items():
        r = import_file(write(tmp_path / name, content), tmp_path / f"{name}.out.jsonl", meta=meta)
        docs = read_docs(tmp_path / f"{name}.out.jsonl")
        assert r.documents == len(docs) == expected[name], name
        for d in docs:
            assert d["kind"] == "upload" and d["domain"] == "books" and d["language"] == "en"
            assert d["licence"] == "public domain" and d["source"] == Path(name).stem and d["path"] == name
    d = read_docs(tmp_path / "d.jsonl.out.jsonl")
    assert d[0]["record_id"] == 7 and d[0]["author"] == "Austen" and d[0]["id"] == "d/d.jsonl#1"
    assert [x["text"] for x in read_docs(tmp_path / "f.csv.out.jsonl")] == ["first, with comma", "multi\nline"]
    assert read_docs(tmp_path / "f.csv.out.jsonl")[1]["topic"] == "y"
    assert "<p>" in read_docs(tmp_path / "c.html.out.jsonl")[0]["text"]  # the extract step turns it into text

    pq.write_table(pa.table({"text": [PROSE, None, "x"], "n": [1, 2, 3]}), tmp_path / "g.parquet")
    r = import_file(tmp_path / "g.parquet", tmp_path / "g.out.jsonl")
    assert r.documents == 2 and r.bad_rows == [{"file": "g.parquet", "line": 2, "error": "'text' is empty or not a string"}]
    assert [x["n"] for x in read_docs(tmp_path / "g.out.jsonl")] == [1, 3]


def test_archives_are_imported_recursively(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("deep/x.txt", PROSE)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:gz") as t:
        for name, data in {"docs/a.txt": PROSE.encode(), "docs/b.jsonl": b'{"text": "row"}\n',
                           "inner.zip": inner.getvalue(), "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    r = import_file(write(tmp_path / "corpus.tar.gz", tar_bytes.getvalue()), tmp_path / "out.jsonl")
    paths = [d["path"] for d in read_docs(tmp_path / "out.jsonl")]
    assert paths == ["corpus.tar.gz!docs/a.txt", "corpus.tar.gz!docs/b.jsonl", "corpus.tar.gz!inner.zip!deep/x.txt"]
    assert r.refused == [{"file": "corpus.tar.gz!logo.png", "code": "unsupported_format",
                          "reason": "refused: unsupported file type (.png)"}]
    # nesting deeper than max_depth is refused per member
    r = import_file(tmp_path / "corpus.tar.gz", tmp_path / "out1.jsonl", limits=SourceLimits(max_depth=1))
    assert r.documents == 2 and r.refused[0]["code"] == "archive_too_deep"


def test_binary_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    for name, data, why in [("img.txt", b"\x89PNG\r\n\x1a\n" + bytes(100), "PNG image"),
                            ("blob.jsonl", bytes(range(256)) * 4, "NUL bytes"),
                            ("paper.md", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF document")]:
        with pytest.raises(SourceError) as e:
            import_file(write(tmp_path / name, data), tmp_path / "out.jsonl")
        assert e.value.code == "binary_file" and why in e.value.detail and e.value.hint
    assert not (tmp_path / "out.jsonl").exists()
    assert list(tmp_path.glob(".out.jsonl*")) == []  # no temporary file left behind
    assert binary_reason("Grüße, naïve café — “quotes”".encode()) is None
    assert binary_reason("UTF-16 text".encode("utf-16")) is None


def test_archive_bombs_and_oversized_files_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.txt", "0" * (20 << 20))
    with pytest.raises(SourceError) as e:
        import_file(bomb, tmp_path / "out.jsonl")
    assert e.value.code == "archive_bomb" and "fold" in e.value.detail

    tbomb = io.BytesIO()  # tar headers are honest, so the ratio is checked while streaming
    with tarfile.open(fileobj=tbomb, mode="w:gz") as t:
        data = b"a" * (20 << 20)
        info = tarfile.TarInfo("a.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError) as e:
        import_file(write(tmp_path / "bomb.tar.gz", tbomb.getvalue()), tmp_path / "out.jsonl")
    assert e.value.code == "archive_bomb"

    big = write(tmp_path / "big.txt", PROSE * 100)
    with pytest.raises(SourceError) as e:
        import_file(big, tmp_path / "out.jsonl", limits=SourceLimits(max_file_bytes=1000))
    assert e.value.code == "file_too_large" and "1000" in e.value.detail

    zipped = tmp_path / "mixed.zip"  # an oversized member is listed, the rest imported
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.txt", PROSE * 100)
        z.writestr("small.txt", PROSE)
    r = import_file(zipped, tmp_path / "out.jsonl", limits=SourceLimits(max_file_bytes=5000))
    assert r.documents == 1 and r.refused[0]["code"] == "file_too_large" and r.refused[0]["file"] == "mixed.zip!big.txt"

    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(5):
            z.writestr(f"{i}.txt", PROSE)
    with pytest.raises(SourceError) as e:
        import_file(many, tmp_path / "out2.jsonl", limits=SourceLimits(max_files=3))
    assert e.value.code == "too_many_files"
    with pytest.raises(SourceError) as e:
        import_file(many, tmp_path / "out2.jsonl", limits=SourceLimits(max_total_bytes=3 * len(PROSE)))
    assert e.value.code == "too_large"
    assert not (tmp_path / "out2.jsonl").exists()


def test_malformed_rows_are_listed_with_line_numbers_or_refuse_the_import(tmp_path: Path) -> None:
    jsonl = write(tmp_path / "rows.jsonl", '{"text": "ok 1"}\n{"text": broken}\n\n[1, 2]\n{"title": "no text"}\n'
                                           '{"text": "ok 6"}\n')
    r = import_file(jsonl, tmp_path / "out.jsonl")
    assert r.documents == 2 and r.bad_rows_total == 3
    assert [(b["line"], b["error"].split(" (")[0]) for b in r.bad_rows] == [
        (2, "not JSON"), (4, "expected an object with a text field, got list"), (5, "no 'text/content/body' string field")]
    assert [d["id"] for d in read_docs(tmp_path / "out.jsonl")] == ["rows/rows.jsonl#1", "rows/rows.jsonl#6"]

    csv_file = write(tmp_path / "rows.csv", 'text,label\n"fine",a\n"too",many,fields\n"",b\n"last",c\n')
    r = import_file(csv_file, tmp_path / "out.csv.jsonl")
    assert r.documents == 2 and [(b["line"], b["error"]) for b in r.bad_rows] == [
        (3, "3 fields, the header has 2"), (4, "empty 'text'")]

    previous = read_docs(tmp_path / "out.jsonl")
    with pytest.raises(SourceError) as e:
        import_file(jsonl, tmp_path / "out.jsonl", bad_rows="refuse")
    assert e.value.code == "malformed_rows" and "line 2" in e.value.detail
    assert read_docs(tmp_path / "out.jsonl") == previous  # the failed import changed nothing


def test_invalid_encoding_is_decoded_with_replacement_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "latin.txt", "café au lait, naïve".encode("latin-1") + " and ok ✓".encode())
    r = import_file(path, tmp_path / "out.jsonl")
    text = read_docs(tmp_path / "out.jsonl")[0]["text"]
    assert r.replaced_bytes == 2 and r.files_with_replacements == 1
    assert text == "caf\ufffd au lait, na\ufffdve and ok ✓"
    r = import_file(write(tmp_path / "utf16.txt", PROSE.encode("utf-16")), tmp_path / "out16.jsonl")
    assert r.replaced_bytes == 0 and read_docs(tmp_path / "out16.jsonl")[0]["text"] == PROSE


def test_repeated_upload_has_the_same_content_hash(tmp_path: Path) -> None:
    a = import_file(write(tmp_path / "a.txt", PROSE), tmp_path / "1.jsonl")
    b = import_file(write(tmp_path / "upload-tmp-123", PROSE), tmp_path / "2.jsonl", filename="copy.txt")
    c = import_file(write(tmp_path / "c.txt", PROSE + "!"), tmp_path / "3.jsonl")
    import hashlib

    assert a.content_hash == b.content_hash == hashlib.sha256(PROSE.encode()).hexdigest() != c.content_hash
    assert read_docs(tmp_path / "2.jsonl")[0]["source"] == "copy"


def test_unsupported_and_empty_uploads_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as e:
        import_file(write(tmp_path / "x.docx", "text"), tmp_path / "o.jsonl")
    assert e.value.code == "unsupported_format"
    with pytest.raises(SourceError) as e:
        import_file(write(tmp_path / "empty.jsonl", "\n\n"), tmp_path / "o.jsonl")
    assert e.value.code == "no_documents"
    with pytest.raises(SourceError) as e:
        import_file(write(tmp_path / "t.txt", PROSE), tmp_path / "o.jsonl", meta={"domain": "poetry"})
    assert e.value.code == "invalid_domain" and "legal" in e.value.hint


def test_folder_import_respects_gitignore_and_skips_vendored_and_binary_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write(repo / ".gitignore", "*.log\nsecret/\n!keep.log\n")
    write(repo / "src" / "app.py", "def main():\n    return 42\n")
    write(repo / "src" / "util.js", "export const x = 1;\n")
    write(repo / "src" / ".gitignore", "generated.py\n")
    write(repo / "src" / "generated.py", "X = 1\n")
    write(repo / "README.md", "# Project\n")
    write(repo / "Makefile", "all:\n\techo hi\n")
    write(repo / "debug.log", "noise")
    write(repo / "keep.log", "kept log")
    write(repo / "secret" / "key.txt", "hunter2")
    write(repo / "node_modules" / "lib" / "index.js", "module.exports = 1;")
    write(repo / ".venv" / "lib" / "site.py", "x = 1")
    write(repo / "build" / "out.c", "int main;")
    write(repo / "logo.png", b"\x89PNG\r\n\x1a\n" + bytes(64))
    r = import_folder(repo, tmp_path / "out.jsonl")
    docs = {d["path"]: d for d in read_docs(tmp_path / "out.jsonl")}
    assert set(docs) == {"src/app.py", "src/util.js", "README.md", "Makefile", "keep.log"}
    assert docs["src/app.py"]["programming_language"] == "Python" and docs["src/app.py"]["domain"] == "code"
    assert docs["src/util.js"]["programming_language"] == "JavaScript"
    assert docs["Makefile"]["programming_language"] == "Makefile" and docs["src/app.py"]["kind"] == "folder"
    refused = {x["file"]: x["reason"] for x in r.refused}
    assert refused["node_modules/"] == refused[".venv/"] == refused["build/"] == "vendored or build folder"
    assert refused["debug.log"] == refused["secret/"] == refused["src/generated.py"] == "ignored by .gitignore"
    assert "PNG" in refused["logo.png"]
    assert r.programming_languages["Python"] == 1 and len(r.content_hash) == 64
    write(repo / "src" / "app.py", "def main():\n    return 43\n")
    assert import_folder(repo, tmp_path / "out2.jsonl").content_hash != r.content_hash
    r_all = import_folder(repo, tmp_path / "out3.jsonl", respect_gitignore=False)
    assert "debug.log" in {d["path"] for d in read_docs(tmp_path / "out3.jsonl")} and r_all.documents > r.documents


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path == "/page":
            body = f"<html><body><p>{PROSE}</p></body></html>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/data.jsonl":
            body = b'{"text": "one"}\n{"text": "two"}\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/data.jsonl")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/stream":  # no Content-Length: the limit is enforced while streaming
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"x" * 1024)
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_import_streams_with_a_size_limit_and_clear_errors(server: str, tmp_path: Path) -> None:
    r = import_url(f"{server}/page", tmp_path / "page.jsonl", timeout=10)
    doc = read_docs(tmp_path / "page.jsonl")[0]
    assert r.kind == "url" and doc["format"] == "html" and doc["domain"] == "web" and doc["url"] == f"{server}/page"
    assert import_url(f"{server}/data.jsonl", tmp_path / "d.jsonl", timeout=10).documents == 2
    with pytest.raises(SourceError) as e:
        import_url(f"{server}/stream", tmp_path / "s.jsonl", timeout=10, max_bytes=10_000)
    assert e.value.code == "file_too_large" and "10000" in e.value.detail
    with pytest.raises(SourceError) as e:
        import_url(f"{server}/page", tmp_path / "s.jsonl", timeout=10, max_bytes=20)
    assert e.value.code == "file_too_large"
    with pytest.raises(SourceError) as e:
        import_url(f"{server}/missing", tmp_path / "s.jsonl", timeout=10)
    assert e.value.code == "url_http_error" and "404" in e.value.detail
    for bad in ("file:///etc/passwd", "ftp://example.org/x.txt", "not a url"):
        with pytest.raises(SourceError) as e:
            import_url(bad, tmp_path / "s.jsonl")
        assert e.value.code == "invalid_url"
    r = import_url(f"{server}/redirect", tmp_path / "r.jsonl", timeout=10)  # followed, named after the target
    assert r.documents == 2 and read_docs(tmp_path / "r.jsonl")[0]["format"] == "jsonl"
    with pytest.raises(SourceError) as e:
        import_url(f"{server}/loop", tmp_path / "s.jsonl", timeout=10)
    assert e.value.code == "url_unreachable" and "redirects" in e.value.detail
    with pytest.raises(SourceError) as e:  # the server's own network can be closed to URL imports
        import_url(f"{server}/page", tmp_path / "s.jsonl", timeout=10, allow_private=False)
    assert e.value.code == "url_forbidden" and "127.0.0.1" in e.value.detail
    closed = server.rsplit(":", 1)[0] + ":1"
    with pytest.raises(SourceError) as e:
        import_url(closed + "/x.txt", tmp_path / "s.jsonl", timeout=5)
    assert e.value.code == "url_unreachable"
    assert not (tmp_path / "s.jsonl").exists() and list(tmp_path.glob(".download.*")) == []


def test_builtin_corpus_import_and_unavailable_reason(corpus_cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    r = import_corpus("austen", tmp_path / "austen.jsonl", cache_dir=corpus_cache)
    docs = read_docs(tmp_path / "austen.jsonl")
    assert r.documents == len(docs) == 270 and r.kind == "corpus" and len(r.content_hash) == 64
    assert {d["kind"] for d in docs} == {"corpus"} and docs[0]["domain"] == "books" and docs[0]["licence"]
    assert {c["name"] for c in corpus_catalog()} == set(corpora.CORPORA)
    with pytest.raises(SourceError) as e:
        import_corpus("gutenberg", tmp_path / "x.jsonl")
    assert e.value.code == "unknown_corpus"

    def unavailable(name: str, cache_dir: object = None) -> Path:
        raise corpora.CorpusUnavailable("apt-get download r-cran-janeaustenr failed: no package lists")

    monkeypatch.setattr(corpora, "fetch", unavailable)
    with pytest.raises(SourceError) as e:
        import_corpus("austen", tmp_path / "y.jsonl")
    assert e.value.code == "corpus_unavailable"
    assert e.value.detail.startswith("austen cannot be fetched on this machine because apt-get download")
    assert not (tmp_path / "y.jsonl").exists()


def test_gzip_member_that_is_not_a_tar_is_refused_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path / "fake.tar.gz", gzip.compress(b"just text, not a tar archive"))
    with pytest.raises(SourceError) as e:
        import_file(path, tmp_path / "o.jsonl")
    assert e.value.code == "no_documents" and "tar" in e.value.detail
