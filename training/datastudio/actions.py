"""Actions of the data studio: the only code that changes sources and curation runs.

Imports write into a temporary folder and become a :class:`DataSource` (folder renamed into
place inside the same transaction) only when they succeed, so a failed import changes nothing.
Curation runs are created atomically and enqueued on commit; the worker claims them, reports
progress and finishes them — a succeeded run publishes its version folder as an immutable
:class:`DatasetVersion` in the same transaction that marks it succeeded, so a crash never
leaves a dataset version behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from studio.errors import StudioAPIError
from training.actions import worker_id
from training.core.config import ConfigError
from training.models import DatasetVersion, data_path
from training.models.datastudio import (
    CURATION_ACTIVE,
    CURATION_RESUMABLE,
    DOMAINS,
    OUTPUT_FORMATS,
    SOURCE_KINDS,
    CurationRun,
    DataSource,
)

# ---- error codes ------------------------------------------------------------------------------------

SOURCE_INVALID = "source_invalid"
SOURCE_DUPLICATE = "source_duplicate"
SOURCE_MISSING = "source_missing"
RECIPE_INVALID = "recipe_invalid"
CURATION_NOT_ACTIVE = "curation_not_active"
CURATION_NOT_RESUMABLE = "curation_not_resumable"
CURATION_CRASHED = "curation_crashed"
CURATION_INVALID = "curation_invalid_input"
WORKER_LOST = "worker_lost"

HINTS = {
    SOURCE_INVALID: "Fix the field named in 'fields'; the detail says what was wrong with the input.",
    SOURCE_DUPLICATE: "This content is already imported; use the existing source in a curation run.",
    SOURCE_MISSING: "Pick sources that exist (GET /api/datastudio/sources/).",
    RECIPE_INVALID: "Fix the step and setting named in 'fields' (see GET /api/datastudio/recipes/ for the steps).",
    CURATION_NOT_ACTIVE: "Only queued or running curation runs can be cancelled.",
    CURATION_NOT_RESUMABLE: "Only cancelled, interrupted or failed runs can be resumed; start a new run instead.",
    CURATION_CRASHED: "The log tail shows what went wrong; fix it and resume the run (finished shards are kept).",
    CURATION_INVALID: "The recipe or an input was refused; start a new run with corrected settings.",
    WORKER_LOST: "The worker stopped while the run was going; resume it to continue from the last finished shard.",
}

STALE_SECONDS = float(os.environ.get("STUDIO_RUN_STALE_SECONDS", "60"))
MAX_WORKERS = 64


def _error(code: str, detail: str, status: int = 400, fields: dict[str, list[str]] | None = None,
           hint: str = "") -> StudioAPIError:
    return StudioAPIError(code, detail, hint or HINTS[code], status, fields)


def source_limits() -> Any:
    """The import limits: the core's defaults, overridable from the environment (bytes / counts):
    ``STUDIO_SOURCE_MAX_FILE_BYTES``, ``STUDIO_SOURCE_MAX_TOTAL_BYTES``, ``STUDIO_SOURCE_MAX_FILES``."""
    from training.core.curate.sources import SourceLimits

    overrides = {}
    for env, field in (("STUDIO_SOURCE_MAX_FILE_BYTES", "max_file_bytes"),
                       ("STUDIO_SOURCE_MAX_TOTAL_BYTES", "max_total_bytes"),
                       ("STUDIO_SOURCE_MAX_FILES", "max_files")):
        value = os.environ.get(env, "")
        if value.isdigit():
            overrides[field] = int(value)
    return SourceLimits(**overrides)


# ---- sources ----------------------------------------------------------------------------------------

def _check_metadata(kind: str, domain: str, language: str) -> None:
    if kind not in {k for k, _ in SOURCE_KINDS}:
        raise _error(SOURCE_INVALID, f"Unknown source kind {kind!r}.", fields={"kind": [
            f"one of {', '.join(k for k, _ in SOURCE_KINDS)}"]})
    if domain not in {d for d, _ in DOMAINS}:
        raise _error(SOURCE_INVALID, f"Unknown domain {domain!r}.", fields={"domain": [
            f"one of {', '.join(d for d, _ in DOMAINS)}"]})
    if not language or len(language) > 20:
        raise _error(SOURCE_INVALID, "language must be a short code such as 'en'.", fields={"language": ["e.g. en"]})


def _duplicate_of(content_hash: str) -> DataSource | None:
    return DataSource.objects.filter(content_hash=content_hash).order_by("id").first()


def _refuse_duplicate(existing: DataSource) -> StudioAPIError:
    what = f"already imported as source {existing.pk} ({existing.name})"
    return _error(SOURCE_DUPLICATE, f"The same content was {what}.", 409, {"source": [what]},
                  hint=f"Use source {existing.pk} in a curation run; nothing was imported.")


def import_source(user: Any, kind: str, *, name: str = "", domain: str = "", language: str = "",
                  licence: str = "", filename: str = "", content: bytes | None = None, url: str = "",
                  path: str = "", corpus: str = "", on_error: str = "skip") -> DataSource:
    """Import one source (``kind`` upload / url / folder / corpus) as a new :class:`DataSource`.

    The core's importer (:mod:`training.core.curate.sources`) writes ``documents.jsonl`` into a
    temporary folder; the row is created and the folder renamed into place only when the import
    succeeded and its content is new (same sha256 as an earlier source: refused as a repeat).
    Bad input raises a :class:`StudioAPIError` whose code is the core's (``binary_file``,
    ``archive_bomb``, ``malformed_rows`` …) and nothing is changed.
    """
    from training.core.curate import sources as core

    spec = _corpus_spec(corpus) if kind == "corpus" else None
    if kind == "corpus" and spec is None:
        from training.core.corpora import CORPORA

        raise _error(SOURCE_INVALID, f"Unknown corpus {corpus!r}.", fields={"corpus": [
            f"built-in: {', '.join(sorted(CORPORA))}"]})
    if spec is not None:  # a corpus carries its own metadata
        domain = spec.domain if spec.domain in {d for d, _ in DOMAINS} else "other"
        language, licence = spec.language, spec.licence
    domain = domain or {"folder": "code", "url": "web"}.get(kind, "other")
    language = language or "en"
    _check_metadata(kind, domain, language)
    if on_error not in ("skip", "refuse"):
        raise _error(SOURCE_INVALID, "on_error must be 'skip' or 'refuse'.", fields={"on_error": ["skip or refuse"]})
    if kind == "upload" and (content is None or not filename):
        raise _error(SOURCE_INVALID, "An upload needs a file.", fields={"file": ["choose a file"]})
    if kind == "url" and not url:
        raise _error(SOURCE_INVALID, "A URL source needs a URL.", fields={"url": ["e.g. https://example.org/page"]})
    if kind == "folder" and not path:
        raise _error(SOURCE_INVALID, "A folder source needs a path.", fields={"path": ["a folder on the server"]})
    if kind == "upload":
        existing = _duplicate_of(hashlib.sha256(content or b"").hexdigest())
        if existing is not None:
            raise _refuse_duplicate(existing)

    root = data_path("sources")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".import-{uuid.uuid4().hex}"
    tmp.mkdir()
    origin = {"upload": filename, "url": url, "folder": path, "corpus": corpus}[kind]
    display = name or _default_name(kind, origin)
    meta = {"source": display, "domain": domain, "language": language, "licence": licence or "unknown"}
    try:
        try:
            report = _run_import(core, kind, tmp / "documents.jsonl", filename=filename, content=content, url=url,
                                 path=path, corpus=corpus, on_error=on_error, meta=meta)
        except core.SourceError as e:
            raise _import_error(kind, e) from None
        existing = _duplicate_of(report.content_hash)
        if existing is not None:
            raise _refuse_duplicate(existing)
        info = report.to_dict()
        info.pop("out_path", None)
        docs_file = tmp / "documents.jsonl"
        (tmp / "report.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        with transaction.atomic():
            src = DataSource.objects.create(
                name=display, kind=kind, origin=origin, domain=domain, language=language, licence=licence,
                path="", documents=report.documents, bytes=docs_file.stat().st_size,
                content_hash=report.content_hash, report=info, created_by=user if getattr(user, "pk", None) else None)
            folder = root / str(src.pk)
            if folder.exists():  # left over from an import whose transaction rolled back
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            src.path = str(folder)
            src.save(update_fields=["path"])
            sid, n_docs = src.pk, src.documents
            transaction.on_commit(lambda: _publish("source.imported", {"source": sid, "name": display,
                                                                       "documents": n_docs}, actor=user))
        return src
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _corpus_spec(corpus: str) -> Any:
    from training.core.corpora import CORPORA

    return CORPORA.get(corpus)


def _field(kind: str) -> str:
    return {"upload": "file", "url": "url", "folder": "path", "corpus": "corpus"}[kind]


def _default_name(kind: str, origin: str) -> str:
    if kind == "url":
        return origin.split("//", 1)[-1][:120]
    if kind == "upload":
        from training.core.curate.sources import _stem

        return _stem(origin)[:120] or "upload"
    return (Path(origin).name or origin)[:120]


def _run_import(core: Any, kind: str, out: Path, *, filename: str, content: bytes | None, url: str, path: str,
                corpus: str, on_error: str, meta: dict[str, str]) -> Any:
    """Call the core's importer for ``kind``, writing document JSONL to ``out``."""
    limits = source_limits()
    if kind == "upload":
        staged = out.parent / ".upload"
        staged.write_bytes(content or b"")
        try:
            return core.import_file(staged, out, filename=filename, limits=limits, bad_rows=on_error, meta=meta)
        finally:
            staged.unlink(missing_ok=True)
    if kind == "url":
        timeout = float(os.environ.get("STUDIO_SOURCE_URL_TIMEOUT", "30"))
        # Users' URLs must not reach the server's own network unless the operator allows it.
        allow_private = os.environ.get("STUDIO_SOURCE_URL_ALLOW_PRIVATE", "0").lower() in ("1", "true", "yes")
        return core.import_url(url, out, timeout=timeout, limits=limits, bad_rows=on_error, meta=meta,
                               allow_private=allow_private)
    if kind == "folder":
        return core.import_folder(path, out, limits=limits, meta=meta)
    from training.actions import corpus_cache_dir

    return core.import_corpus(corpus, out, cache_dir=corpus_cache_dir(corpus))


TOO_LARGE_CODES = {"file_too_large", "too_large", "too_many_files", "archive_bomb"}
UNREACHABLE_CODES = {"url_unreachable", "url_http_error", "corpus_unavailable"}


def _import_error(kind: str, e: Any) -> StudioAPIError:
    """The core's refusal as an API error with the core's code: too large → 413, unreachable → 502."""
    status = 413 if e.code in TOO_LARGE_CODES else 502 if e.code in UNREACHABLE_CODES else 400
    field = "on_error" if e.code == "malformed_rows" else _field(kind)
    return StudioAPIError(e.code, e.detail, e.hint or HINTS[SOURCE_INVALID], status, {field: [e.detail]})


def delete_source(user: Any, source: DataSource) -> None:
    """Delete a source that no curation run used (its files too)."""
    if source.curation_runs.exists():
        raise _error(SOURCE_INVALID, f"Source {source.pk} is used by curation runs; it is kept for their audit trail.",
                     409, {"source": ["in use"]}, hint="Sources of recorded runs cannot be deleted.")
    folder = Path(source.path) if source.path else None
    sid = source.pk
    with transaction.atomic():
        source.delete()
        transaction.on_commit(lambda: _publish("source.deleted", {"source": sid}, actor=user))
    if folder and folder.exists():
        shutil.rmtree(folder, ignore_errors=True)


# ---- recipes ----------------------------------------------------------------------------------------

def validate_recipe(recipe: Any) -> list[dict[str, Any]]:
    """The recipe as the core writes it back (every setting explicit), or a 400 naming ``step.field``."""
    from training.core.curate import Pipeline

    if not isinstance(recipe, list) or not recipe:
        raise _error(RECIPE_INVALID, "A recipe is a non-empty list of steps.", fields={"recipe": [
            'e.g. [{"step": "length", "config": {"min_chars": 200}}]']})
    for i, item in enumerate(recipe):
        if not isinstance(item, dict) or not isinstance(item.get("config", {}), dict):
            raise _error(RECIPE_INVALID, f"Step {i + 1} must be {{\"step\": name, \"config\": {{…}}}}.",
                         fields={f"recipe[{i}]": ["an object with step and config"]})
    try:
        return Pipeline.from_recipe(recipe).to_recipe()
    except ConfigError as e:
        field = f"recipe.{e.field}" if e.field else "recipe"
        raise _error(RECIPE_INVALID, f"{field}: {e.message}", fields={field: [e.message + (
            f" — {e.hint}" if e.hint else "")]}) from None


# ---- curation runs ----------------------------------------------------------------------------------

def _publish(kind: str, payload: dict[str, Any], *, group: str = "studio", actor: Any = None) -> None:
    from studio.events import publish

    publish(kind, payload, group=group, actor=actor)


def publish_curation(run_id: int, kind: str, payload: dict[str, Any], *, studio_wide: bool = False,
                     actor: Any = None) -> None:
    """An event on the run's group ``curation.<id>`` (and the studio stream for state changes)."""
    _publish(kind, {"curation": run_id, **payload}, group=f"curation.{run_id}", actor=actor)
    if studio_wide:
        _publish(kind, {"curation": run_id, **payload}, actor=actor)


def _enqueue(run_id: int) -> None:
    from training.datastudio.tasks import curate_job

    curate_job(run_id)


def _queue_on_commit(run_id: int, user: Any, **extra: Any) -> None:
    """Once the transaction commits: announce the run as queued and hand it to the worker."""
    transaction.on_commit(lambda: publish_curation(run_id, "curation.status", {"status": "queued", **extra},
                                                   studio_wide=True, actor=user))
    transaction.on_commit(lambda: _enqueue(run_id))


def do_create_curation(user: Any, *, name: str = "", recipe: Any = None, sources: list[Any] | None = None,
                       workers: int = 1, shard_docs: int = 5000, output_format: str = "jsonl") -> CurationRun:
    """Validate and create a curation run over ``sources`` (ids), then enqueue it on commit."""
    from training.core.curate import default_recipe

    ids = []
    for s in sources or []:
        try:
            ids.append(int(s))
        except (TypeError, ValueError):
            raise _error(SOURCE_MISSING, f"Source {s!r} is not an id.", fields={"sources": ["ids of sources"]}) from None
    if not ids:
        raise _error(SOURCE_MISSING, "Pick at least one source.", fields={"sources": ["choose one or more sources"]})
    found = {s.pk: s for s in DataSource.objects.filter(pk__in=ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise _error(SOURCE_MISSING, f"Source {missing[0]} does not exist.", fields={"sources": [
            f"no source with id {missing[0]}"]})
    gone = [s for s in found.values() if not s.documents_file.exists()]
    if gone:
        raise _error(SOURCE_MISSING, f"The files of source {gone[0].pk} are gone from {gone[0].path}.",
                     fields={"sources": [f"source {gone[0].pk} has no documents on disk"]}, hint="Import it again.")
    resolved = validate_recipe(default_recipe() if recipe is None else recipe)
    if not 1 <= int(workers) <= MAX_WORKERS:
        raise _error(RECIPE_INVALID, "workers must be between 1 and 64.", fields={"workers": ["1 to 64 processes"]})
    if not 1 <= int(shard_docs) <= 10_000_000:
        raise _error(RECIPE_INVALID, "shard_docs must be positive.", fields={"shard_docs": ["e.g. 5000"]})
    if output_format not in {f for f, _ in OUTPUT_FORMATS}:
        raise _error(RECIPE_INVALID, f"Unknown output format {output_format!r}.", fields={"output_format": [
            "jsonl or parquet"]})
    with transaction.atomic():
        run = CurationRun.objects.create(
            name=name or f"curation of {', '.join(found[i].name for i in ids)}"[:120], recipe=resolved,
            workers=int(workers), shard_docs=int(shard_docs), output_format=output_format,
            created_by=user if getattr(user, "pk", None) else None)
        run.sources.set([found[i] for i in ids])
        _queue_on_commit(run.pk, user)
    return run


def do_cancel_curation(run: CurationRun, user: Any) -> CurationRun:
    """A queued run is cancelled at once; a running one is asked to stop (SIGTERM to its child)."""
    with transaction.atomic():
        run = CurationRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in CURATION_ACTIVE:
            raise _error(CURATION_NOT_ACTIVE, f"Curation run {run.pk} is {run.status}.", 409)
        rid = run.pk
        if run.status == "queued":
            run.status, run.finished_at = "cancelled", timezone.now()
            run.save(update_fields=["status", "finished_at"])
            transaction.on_commit(lambda: publish_curation(rid, "curation.status", {"status": "cancelled"},
                                                           studio_wide=True, actor=user))
        else:
            run.cancel_requested = True
            run.save(update_fields=["cancel_requested"])
            transaction.on_commit(lambda: publish_curation(rid, "curation.cancel_requested", {}, actor=user))
    return run


def do_resume_curation(run: CurationRun, user: Any) -> CurationRun:
    """Queue a cancelled, interrupted or failed run again; finished shards are not redone."""
    with transaction.atomic():
        run = CurationRun.objects.select_for_update().get(pk=run.pk)
        if run.status not in CURATION_RESUMABLE:
            raise _error(CURATION_NOT_RESUMABLE, f"Curation run {run.pk} is {run.status}.", 409)
        run.status, run.cancel_requested, run.finished_at, run.error = "queued", False, None, {}
        run.save(update_fields=["status", "cancel_requested", "finished_at", "error"])
        _queue_on_commit(run.pk, user, resumed=True)
    return run


# ---- state changes made by the worker ----------------------------------------------------------------

def claim_curation(run_id: int) -> CurationRun | None:
    """Move a queued run to running for this worker; None when it is no longer queued."""
    with transaction.atomic():
        run = CurationRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status != "queued":
            return None
        now = timezone.now()
        run.status, run.started_at, run.heartbeat_at = "running", run.started_at or now, now
        run.attempt += 1
        run.worker, run.pid, run.exit_code = worker_id(), None, None
        run.save(update_fields=["status", "started_at", "heartbeat_at", "attempt", "worker", "pid", "exit_code"])
        attempt = run.attempt
        transaction.on_commit(lambda: publish_curation(run_id, "curation.status",
                                                       {"status": "running", "attempt": attempt}, studio_wide=True))
    return run


def curation_heartbeat(run_id: int, pid: int | None = None) -> None:
    updates: dict[str, Any] = {"heartbeat_at": timezone.now()}
    if pid is not None:
        updates["pid"] = pid
    CurationRun.objects.filter(pk=run_id, status="running").update(**updates)


def cancel_requested(run_id: int) -> bool:
    return CurationRun.objects.filter(pk=run_id, cancel_requested=True).exists()


def record_progress(run_id: int, progress: dict[str, Any]) -> None:
    """Store the latest progress (docs/s, ETA, per-step counts) and send it to the run's followers."""
    CurationRun.objects.filter(pk=run_id, status="running").update(progress=progress, heartbeat_at=timezone.now())
    publish_curation(run_id, "curation.progress", {"progress": progress})


def finish_curation(run_id: int, status: str, *, error: dict[str, Any] | None = None,
                    summary: dict[str, Any] | None = None, exit_code: int | None = None,
                    version_dir: Path | None = None) -> DatasetVersion | None:
    """Record how a run ended; a succeeded run also gets its :class:`DatasetVersion` (same transaction)."""
    with transaction.atomic():
        run = CurationRun.objects.select_for_update().get(pk=run_id)
        if run.status != "running":  # e.g. marked interrupted meanwhile
            return None
        ds = None
        if status == "succeeded":
            ds = _register_version(run, version_dir, summary or {})
            run.dataset = ds
        run.status, run.finished_at, run.pid, run.exit_code = status, timezone.now(), None, exit_code
        run.error = error or {}
        if summary:
            run.progress = {**run.progress, **{k: v for k, v in summary.items() if k != "status"},
                            "final": status == "succeeded"}
        run.save(update_fields=["status", "finished_at", "pid", "exit_code", "error", "progress", "dataset"])
        payload = {"status": status, **({"error": error} if error else {}), **({"dataset": ds.pk} if ds else {})}
        transaction.on_commit(lambda: publish_curation(run_id, "curation.status", payload, studio_wide=True))
        if ds is not None:
            from training.actions import publish_dataset

            transaction.on_commit(lambda: publish_dataset(ds))
    return ds


def version_dir(run: CurationRun) -> Path:
    """The immutable version folder a run writes (renamed into place by the core's runner)."""
    return data_path("datasets", f"curation-{run.pk}")


def _register_version(run: CurationRun, folder: Path | None, summary: dict[str, Any]) -> DatasetVersion:
    """The :class:`DatasetVersion` of a finished run: its folder holds ``manifest.json`` and the
    shards under ``data/`` (which tokenizer and pretraining runs read, see ``documents_file``)."""
    from training.actions import _next_version

    folder = folder or version_dir(run)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("status") != "complete":
        raise RuntimeError(f"{folder} is not a complete dataset version")
    files = manifest.get("files", [])
    name = run.name[:100]
    return DatasetVersion.objects.create(
        name=name, version=_next_version(name), path=str(folder), manifest=manifest,
        documents=int(manifest.get("counts", {}).get("docs_out") or sum(f["documents"] for f in files)),
        bytes=sum(int(f.get("bytes") or 0) for f in files),
        source={"kind": "curation", "curation_run": run.pk, "sources": list(run.sources.values_list("pk", flat=True)),
                "recipe": [s["step"] for s in run.recipe], "format": manifest.get("output_format", "jsonl")},
        created_by=run.created_by)


def mark_lost_curations() -> list[int]:
    """Runs whose worker stopped heartbeating become interrupted (resumable), never 'running' forever."""
    from training.actions import worker_gone

    cutoff = timezone.now() - timedelta(seconds=STALE_SECONDS)
    marked = []
    for run in CurationRun.objects.filter(status="running"):
        if not worker_gone(run.worker) and run.heartbeat_at is not None and run.heartbeat_at > cutoff:
            continue
        with transaction.atomic():
            locked = CurationRun.objects.select_for_update().get(pk=run.pk)
            if locked.status != "running":
                continue
            locked.status, locked.finished_at, locked.pid = "interrupted", timezone.now(), None
            locked.error = {"code": WORKER_LOST, "detail": f"The worker {locked.worker} stopped while the run was going.",
                            "hint": HINTS[WORKER_LOST]}
            locked.save(update_fields=["status", "finished_at", "pid", "error"])
            err = locked.error
            transaction.on_commit(lambda rid=run.pk, err=err: publish_curation(
                rid, "curation.status", {"status": "interrupted", "error": err}, studio_wide=True))
            marked.append(run.pk)
    return marked
