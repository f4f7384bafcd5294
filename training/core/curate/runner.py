"""Run a recipe over document JSONL files into an immutable, versioned dataset folder.

:func:`run_recipe` streams the input documents in batches through a :class:`Pipeline` (the
stateless steps in worker processes), cuts the input into shards of ``shard_docs`` documents
and, after each shard, commits its output shard, its audit trail and a checkpoint (statistics
and the dedup indexes' sizes) in a private work folder. An interrupted or cancelled run resumes
at the first unfinished shard with the same result as an uninterrupted one. Only when every
shard is done is the version folder assembled and renamed into place, so a crash never leaves
a half-written version:

```
<out_dir>/                       (immutable: files are read-only)
  manifest.json                  files (documents, characters, bytes, sha256), counts, recipe,
                                 composition, inputs, timings
  report.json                    per-step statistics by rule, examples kept / removed per rule
  datasheet.md                   generated from the records (training.core.curate.datasheet)
  data/part-00000.jsonl          kept documents ({id, text, source, domain, language, ...})
                                 (or .parquet: id, text, source, domain, language, licence,
                                 kind and the other fields as a JSON string ``meta``)
  decisions/part-00000.jsonl.gz  every drop or change (the audit trail)
<parent>/.<name>.work/           while running: state.json, version/ (the future folder), dedup/
```

>>> import tempfile, json, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "in.jsonl").write_text("".join(json.dumps({"id": str(i), "text": t}) + "\\n"
...                                  for i, t in enumerate(["a b c", "a b c", "d e f"])))
>>> m = run_recipe([str(d / "in.jsonl")], [{"step": "exact_dedup"}], d / "v1")
>>> m["counts"]["docs_in"], m["counts"]["docs_out"], m["files"][0]["path"]
(3, 2, 'data/part-00000.jsonl')
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import shutil
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import IO, Any

from training.core.config import ConfigError
from training.core.curate.base import CurationError, Decision, Doc, batched
from training.core.curate.pipeline import Pipeline

FORMAT_VERSION = 1
OUTPUT_FORMATS = ("jsonl", "parquet")
PARQUET_COLUMNS = ("id", "text", "source", "domain", "language", "licence", "kind")
STATE = "state.json"


def work_dir_for(out_dir: str | Path) -> Path:
    """The private work folder of a run whose version folder will be ``out_dir``."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.work"


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(inputs: list[str]) -> list[dict[str, Any]]:
    out = []
    for p in inputs:
        path = Path(p)
        if not path.is_file():
            raise CurationError("input_missing", f"input {p} does not exist",
                                "pass document JSONL files written by an import")
        st = path.stat()
        out.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def count_documents(inputs: list[str]) -> int:
    """Non-empty lines of the input files (one document each): the total for progress and ETA."""
    n = 0
    for p in inputs:
        with open(p, "rb") as f:
            n += sum(1 for line in f if line.strip())
    return n


def iter_input_documents(inputs: list[str], skip: int = 0) -> Iterator[Doc]:
    """The documents of the input JSONL files in order, after the first ``skip`` (not parsed).

    A line that is not a JSON object with a ``text`` string raises :class:`CurationError` naming
    the file and line.
    """
    for p in inputs:
        with open(p, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if skip:
                    skip -= 1
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CurationError("malformed_input", f"{p}:{lineno}: not JSON ({e.msg})",
                                        "inputs are the document files written by an import") from None
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise CurationError("malformed_input", f"{p}:{lineno}: no 'text' string",
                                        "each line must be one JSON object with 'text'")
                doc.setdefault("id", f"{Path(p).stem}/{lineno}")
                yield doc


def sample_documents(inputs: list[str], n: int = 200, seed: int = 0) -> list[Doc]:
    """A uniform random sample of ``n`` documents of the inputs (reservoir sampling: one pass,
    memory for ``n`` documents), in input order: the sample a threshold preview runs on."""
    import random

    rng = random.Random(seed)
    picked: list[tuple[int, Doc]] = []
    for i, doc in enumerate(iter_input_documents(inputs)):
        if len(picked) < n:
            picked.append((i, doc))
        else:
            j = rng.randrange(i + 1)
            if j < n:
                picked[j] = (i, doc)
    return [doc for _, doc in sorted(picked, key=lambda p: p[0])]


class _ShardWriter:
    """Writes one output shard (JSONL or Parquet) and its decisions under temporary names."""

    def __init__(self, version: Path, index: int, output_format: str) -> None:
        self.name = f"part-{index:05d}"
        self.data_path = version / "data" / f"{self.name}.{output_format}"
        self.dec_path = version / "decisions" / f"{self.name}.jsonl.gz"
        self.tmp_data = self.data_path.with_name(f".{self.data_path.name}.partial")
        self.tmp_dec = self.dec_path.with_name(f".{self.dec_path.name}.partial")
        self.format = output_format
        self.docs = self.chars = 0
        self._jsonl: IO[str] | None = None
        self._parquet: Any = None
        self._dec: IO[str] = gzip.open(self.tmp_dec, "wt", encoding="utf-8")
        if output_format == "jsonl":
            self._jsonl = self.tmp_data.open("w", encoding="utf-8")

    def write_decisions(self, decisions: list[Decision]) -> None:
        for d in decisions:
            self._dec.write(json.dumps(d.to_dict(), ensure_ascii=False, default=str) + "\n")

    def write_docs(self, docs: list[Doc]) -> None:
        if not docs:
            return
        self.docs += len(docs)
        self.chars += sum(len(d["text"]) for d in docs)
        if self._jsonl is not None:
            self._jsonl.write("".join(json.dumps(d, ensure_ascii=False, default=str) + "\n" for d in docs))
            return
        import pyarrow as pa  # lazily: only Parquet output needs it
        import pyarrow.parquet as pq

        rows = {c: [None if d.get(c) is None else str(d.get(c)) for d in docs] for c in PARQUET_COLUMNS}
        rows["meta"] = [json.dumps({k: v for k, v in d.items() if k not in PARQUET_COLUMNS}, ensure_ascii=False,
                                   default=str) for d in docs]
        table = pa.table({k: pa.array(v, type=pa.string()) for k, v in rows.items()})
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.tmp_data, table.schema, compression="zstd")
        self._parquet.write_table(table)

    def commit(self) -> dict[str, Any] | None:
        """Close and rename into place; the file record for the manifest (None when empty)."""
        self._dec.close()
        os.replace(self.tmp_dec, self.dec_path)
        if self._jsonl is not None:
            self._jsonl.close()
        if self._parquet is not None:
            self._parquet.close()
        if self.docs == 0:
            self.tmp_data.unlink(missing_ok=True)
            return None
        os.replace(self.tmp_data, self.data_path)
        return {"path": f"data/{self.data_path.name}", "documents": self.docs, "chars": self.chars,
                "bytes": self.data_path.stat().st_size, "sha256": _sha256(self.data_path)}

    def abort(self) -> None:
        for f in (self._dec, self._jsonl):
            if f is not None and not f.closed:
                f.close()
        if self._parquet is not None:
            self._parquet.close()
        self.tmp_dec.unlink(missing_ok=True)
        self.tmp_data.unlink(missing_ok=True)


def _stateful_dirs(pipe: Pipeline, work: Path) -> None:
    for i, step in enumerate(pipe.steps):
        step.set_state_dir(work / "dedup" / f"{i:02d}-{step.name}")


def run_recipe(inputs: list[str], recipe: list[dict[str, Any]], out_dir: str | Path, *, workers: int = 1,
               shard_docs: int = 10_000, batch_size: int = 256, output_format: str = "jsonl",
               on_progress: Callable[[dict[str, Any]], None] | None = None,
               should_stop: Callable[[], bool] | None = None, resume: bool = True, max_examples: int = 5,
               name: str | None = None, sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Curate ``inputs`` (document JSONL files) with ``recipe`` into the version folder ``out_dir``.

    ``workers``: processes for the stateless steps; ``shard_docs``: input documents per shard
    (the unit of resumption and of output files); ``batch_size``: documents per batch;
    ``output_format``: ``"jsonl"`` or ``"parquet"``; ``on_progress(dict)`` after every batch with
    ``docs_done``, ``docs_total``, ``docs_kept``, ``docs_per_s``, ``mb_per_s``, ``eta_s``,
    ``shards_done``, ``shards_total`` and per-step ``steps`` counts; ``should_stop()`` is polled
    after every batch: when true the run stops, keeps the finished shards in the work folder and
    returns ``{"status": "cancelled", ...}``; ``resume``: continue an interrupted run with the same
    inputs and recipe (False starts over); ``sources``: source records for the datasheet.

    Returns the manifest (``status`` ``"complete"``), which is also ``out_dir/manifest.json``.
    Raises :class:`CurationError` (``version_exists``, ``resume_mismatch``, ``malformed_input``,
    ``input_missing``) or :class:`ConfigError` (a bad recipe).
    """
    out = Path(out_dir)
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError("output_format", f"must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    if shard_docs < 1 or batch_size < 1 or workers < 1:
        raise ConfigError("shard_docs", "shard_docs, batch_size and workers must be at least 1")
    recipe = copy.deepcopy(recipe)
    pipe = Pipeline.from_recipe(recipe, max_examples=max_examples)  # validates before touching files
    if out.exists():
        manifest_path = out / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("recipe") == recipe and resume:
                shutil.rmtree(work_dir_for(out), ignore_errors=True)  # a crash right after the rename
                return manifest
        raise CurationError("version_exists", f"{out} already exists; dataset versions are immutable",
                            "choose a new version folder")
    work = work_dir_for(out)
    fingerprint = _fingerprint(inputs)
    docs_total = count_documents(inputs)
    if docs_total == 0:
        raise CurationError("no_documents", "the inputs hold no documents", "import a source with documents first")
    params = {"recipe": recipe, "inputs": fingerprint, "shard_docs": shard_docs, "batch_size": batch_size,
              "output_format": output_format}
    state: dict[str, Any] | None = None
    if (work / STATE).exists() and resume:
        state = json.loads((work / STATE).read_text())
        if state["params"] != params:
            raise CurationError("resume_mismatch", f"{work} belongs to a run with other inputs or settings",
                                "resume with the same inputs and recipe, or pass resume=False to start over")
    elif work.exists():
        shutil.rmtree(work)
    version = work / "version"
    for sub in ("data", "decisions"):
        (version / sub).mkdir(parents=True, exist_ok=True)
    _stateful_dirs(pipe, work)
    if state is None:
        state = {"params": params, "shards_done": 0, "files": [], "pipeline": None, "steps": {},
                 "seconds": 0.0, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        _atomic_json(work / STATE, state)
    elif state["pipeline"]:
        pipe.load_state_dict(state["pipeline"])
    for i, step in enumerate(pipe.steps):  # back to the last checkpoint (drops later, lost work)
        step.restore(state["steps"].get(str(i), {}))
    for stray in list((version / "data").iterdir()) + list((version / "decisions").iterdir()):
        if not any(stray.name.startswith(f"part-{k:05d}.") for k in range(state["shards_done"])):
            stray.unlink()

    shards_total = max(1, -(-docs_total // shard_docs))
    done_before = state["shards_done"] * shard_docs
    t0 = time.perf_counter()
    seconds_before = state["seconds"]
    meta: deque = deque()  # (shard, last batch of the shard?) for each batch handed to the pipeline
    pending_decisions: list[Decision] = []
    pipe.on_decisions = lambda step, decisions, batch: pending_decisions.extend(decisions)
    docs_in_start = pipe.docs_in
    chars_start = pipe.stats[0].chars_in if pipe.stats else 0

    def shard_batches() -> Iterator[list[Doc]]:
        stream = iter_input_documents(inputs, skip=done_before)
        shard = state["shards_done"]
        while True:
            prev = None
            for b in batched(islice(stream, shard_docs), batch_size):
                if prev is not None:
                    meta.append((shard, False))
                    yield prev
                prev = b
            if prev is None:
                return
            meta.append((shard, True))
            yield prev
            shard += 1

    writer: _ShardWriter | None = None
    status = "complete"
    gen = pipe.run_batches(shard_batches(), workers)
    try:
        for kept in gen:
            shard, last = meta.popleft()
            if writer is None:
                writer = _ShardWriter(version, shard, output_format)
            writer.write_decisions(pending_decisions)
            pending_decisions.clear()
            writer.write_docs(kept)
            docs_done = done_before + pipe.docs_in - docs_in_start
            if last:
                record = writer.commit()
                writer = None
                if record is not None:
                    state["files"].append(record)
                state["shards_done"] = shard + 1
                state["pipeline"] = pipe.state_dict()
                state["steps"] = {str(i): s.checkpoint() for i, s in enumerate(pipe.steps)}
                state["seconds"] = seconds_before + time.perf_counter() - t0
                _atomic_json(work / STATE, state)  # the commit point of the shard
            if on_progress is not None:
                chars = (pipe.stats[0].chars_in if pipe.stats else 0) - chars_start
                on_progress(_progress(pipe, docs_done, docs_total, done_before, chars, t0,
                                      state["shards_done"], shards_total))
            if should_stop is not None and should_stop():
                status = "cancelled"
                break
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        gen.close()  # stops the worker pool
    if status == "cancelled":
        if writer is not None:
            writer.abort()
        return {"status": "cancelled", "shards_done": state["shards_done"], "shards_total": shards_total,
                "docs_done": min(docs_total, state["shards_done"] * shard_docs), "work_dir": str(work)}
    return _finish(out, work, version, pipe, state, params, inputs, docs_total, workers, name, sources)


def _progress(pipe: Pipeline, docs_done: int, docs_total: int, done_before: int, chars: int, t0: float,
              shards_done: int, shards_total: int) -> dict[str, Any]:
    elapsed = time.perf_counter() - t0
    fresh = docs_done - done_before
    rate = fresh / elapsed if elapsed > 0 else 0.0
    return {"docs_done": docs_done, "docs_total": docs_total, "docs_kept": pipe.docs_out,
            "docs_per_s": round(rate, 2), "mb_per_s": round(chars / 1e6 / elapsed, 3) if elapsed > 0 else 0.0,
            "eta_s": round((docs_total - docs_done) / rate, 1) if rate > 0 else None,
            "elapsed_s": round(elapsed, 2), "shards_done": shards_done, "shards_total": shards_total,
            "steps": {s.name: {"docs_in": s.docs_in, "docs_out": s.docs_out, "by_rule": dict(s.by_rule)}
                      for s in pipe.stats}}


def _finish(out: Path, work: Path, version: Path, pipe: Pipeline, state: dict[str, Any], params: dict[str, Any],
            inputs: list[str], docs_total: int, workers: int, name: str | None,
            sources: list[dict[str, Any]] | None) -> dict[str, Any]:
    from training.core.curate.datasheet import datasheet_markdown

    report = pipe.report()
    report["skipped"] = report.get("skipped", {})
    seconds = state["seconds"]
    manifest = {
        "format_version": FORMAT_VERSION, "status": "complete", "name": name or out.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started_at": state.get("started_at"), "output_format": params["output_format"],
        "files": state["files"],
        "decision_files": sorted(f"decisions/{p.name}" for p in (version / "decisions").iterdir()),
        "counts": {k: report[k] for k in ("docs_in", "docs_out", "chars_in", "chars_out", "words_in", "words_out")},
        "recipe": params["recipe"], "composition": report["composition"],
        "inputs": [{"path": f["path"], "size": f["size"]} for f in params["inputs"]],
        "shard_docs": params["shard_docs"], "batch_size": params["batch_size"], "workers": workers,
        "seconds": round(seconds, 3),
        "docs_per_s": round(docs_total / seconds, 2) if seconds > 0 else None,
        "mb_per_s": round(report["chars_in"] / 1e6 / seconds, 3) if seconds > 0 else None,
    }
    _atomic_json(version / "report.json", report)
    (version / "datasheet.md").write_text(datasheet_markdown(manifest, report, sources or []), encoding="utf-8")
    _atomic_json(version / "manifest.json", manifest)
    for p in version.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    os.replace(version, out)  # atomic: the version appears complete or not at all
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def iter_version_documents(version_dir: str | Path) -> Iterator[Doc]:
    """The documents of a dataset version, shard by shard (JSONL or Parquet)."""
    folder = Path(version_dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["files"]:
        path = folder / f["path"]
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    extra = json.loads(row.pop("meta") or "{}")
                    yield {**{k: v for k, v in row.items() if v is not None}, **extra}
        else:
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    yield json.loads(line)


def iter_decisions(version_dir: str | Path, rule: str | None = None, step: str | None = None) -> Iterator[dict[str, Any]]:
    """The audit trail of a dataset version (every drop or change), optionally of one rule / step."""
    folder = Path(version_dir)
    for path in sorted((folder / "decisions").glob("part-*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                d = json.loads(line)
                if (rule is None or d["rule"] == rule) and (step is None or d["step"] == step):
                    yield d
