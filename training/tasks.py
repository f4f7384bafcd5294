"""Huey tasks of the training app. Tasks take ids, never model instances.

:func:`run_job` runs one run to its end in child processes (see :mod:`training.launch`):
tokenizer runs call ``cli tokenizer``; pretraining runs call ``cli prepare`` (once per dataset ×
tokenizer, the shards are shared) then ``cli pretrain`` with ``resume_from=auto`` — so resuming a
cancelled or interrupted run continues from its last checkpoint. Fine-tuning and RLHF runs
(``sft``, ``reward``, ``dpo``, ``ppo``) write their snapshot's records and base tokenizer into the
run folder (:func:`training.posttrain.launch_config`) then call ``cli <kind>`` the same way.
:func:`startup_check` (when a
worker starts) and :func:`check_lost_runs` (every minute) mark runs whose worker died
``interrupted``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from django.conf import settings
from huey import crontab
from huey.contrib.djhuey import db_periodic_task, db_task, on_startup

from training import actions
from training import error_codes as codes
from training.launch import REPO, ChildProcess, EventTail, Outcome, child_env, core_command, log_tail, supervise
from training.models import CANCELLED, FAILED, SUCCEEDED, Run, data_path
from training.reporting import RunReporter

log = logging.getLogger(__name__)

EXIT_INVALID, EXIT_CANCELLED, EXIT_DIVERGED = 2, 3, 4
GRACE_SECONDS = float(os.environ.get("STUDIO_RUN_GRACE_SECONDS", "30"))
# extra torchrun flags for runs with several processes, e.g. multi-node rendezvous settings
TORCHRUN_ARGS = os.environ.get("STUDIO_TORCHRUN_ARGS", "")
GPU_RETRY_SECONDS = 10


def _failure(run: Run, outcome: Outcome) -> dict[str, Any]:
    """The reason a child failed: the core's typed error when it printed one, else the log's clues."""
    tail = log_tail(run.log_path, 25)
    error = outcome.end.get("error") if isinstance(outcome.end.get("error"), dict) else None
    lowered = tail.lower()
    if error:
        field = error.get("field") or ""
        detail = error.get("detail") or error.get("type") or "invalid input"
        return {"code": codes.CHILD_INVALID, "detail": f"{field}: {detail}" if field else detail,
                "hint": error.get("hint") or codes.HINTS[codes.CHILD_INVALID], "log_tail": tail}
    if outcome.exit_code == EXIT_DIVERGED:
        code = codes.DIVERGED
    elif "out of memory" in lowered or "memoryerror" in lowered or outcome.exit_code == -9 and not outcome.killed:
        code = codes.OUT_OF_MEMORY
    elif "no space left on device" in lowered:
        code = codes.DISK_FULL
    else:
        code = codes.CHILD_CRASHED
    last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
    detail = {codes.DIVERGED: "The loss became NaN or infinite.",
              codes.OUT_OF_MEMORY: "The process ran out of memory.",
              codes.DISK_FULL: "The disk is full."}.get(code, f"The process exited with code {outcome.exit_code}: {last}")
    return {"code": code, "detail": detail, "hint": codes.HINTS[code], "log_tail": tail}


def _run_phase(run: Run, phase: str, args: list[str], *, nproc: int = 1) -> Outcome:
    """Run one core command for ``run`` and relay its events until it ends."""
    events = run.events_path
    events.parent.mkdir(parents=True, exist_ok=True)
    args = [*args, "--events", str(events), "--quiet"]
    cmd = core_command(args, nproc=nproc, torchrun_args=TORCHRUN_ARGS if nproc > 1 else "")
    env = child_env(threads=run.threads, gpus=actions.run_gpus(run), data_dir=settings.DATA_DIR)
    tail = EventTail(events)
    reporter = RunReporter(run.pk, phase)
    if run.attempt > 1 and phase == run.kind and run.kind != "tokenizer":
        reporter.backfill(events)
    child = ChildProcess(cmd, env, run.log_path)

    def on_events(batch: list[dict[str, Any]]) -> None:
        reporter.handle(batch)
        notes = [e.get("message", "") for e in batch if e.get("event") == "log"]
        if notes:  # the core's notes (resumed from …, validation disabled …) belong in the run's log too
            with open(run.log_path, "a", encoding="utf-8") as f:
                f.writelines(f"[{phase}] {n}\n" for n in notes)

    try:
        actions.heartbeat(run.pk, child.pid)
        return supervise(
            child, tail, on_events=on_events,
            should_cancel=lambda: Run.objects.filter(pk=run.pk, cancel_requested=True).exists(),
            on_heartbeat=lambda: actions.heartbeat(run.pk, child.pid), grace_seconds=GRACE_SECONDS)
    finally:
        child.close()


def _finish_from(run: Run, outcome: Outcome, summary: dict[str, Any] | None = None) -> str:
    if outcome.cancelled or outcome.exit_code == EXIT_CANCELLED:
        actions.finish_run(run.pk, CANCELLED, summary=summary or outcome.end, exit_code=outcome.exit_code)
        return CANCELLED
    actions.finish_run(run.pk, FAILED, error=_failure(run, outcome), summary=outcome.end, exit_code=outcome.exit_code)
    return FAILED


def _tokenizer_run(run: Run) -> str:
    cfg = run.config
    outcome = _run_phase(run, "tokenizer", [
        "tokenizer", "--input", str(run.dataset.documents_file), "--vocab-size", str(cfg["vocab_size"]),
        "--min-frequency", str(cfg["min_frequency"]), "--out", str(run.out_dir / "tokenizer")])
    if outcome.exit_code != 0 or outcome.cancelled:
        return _finish_from(run, outcome)
    tok = actions.register_tokenizer(run, outcome.end)
    actions.finish_run(run.pk, SUCCEEDED, summary={**outcome.end, "tokenizer": tok.pk}, exit_code=0)
    nxt = cfg.get("next")
    if nxt:
        actions.do_create_run(run.created_by, kind="pretrain", name=nxt.get("name", ""), config=nxt["config"],
                              dataset=run.dataset_id, tokenizer=tok.pk)
    return SUCCEEDED


def shards_dir(run: Run) -> Any:
    return data_path("shards", f"d{run.dataset_id}-t{run.tokenizer_id}")


def _pretrain_run(run: Run) -> str:
    shards = shards_dir(run)
    if not (shards / "manifest.json").exists():
        outcome = _run_phase(run, "prepare", [
            "prepare", "--input", str(run.dataset.documents_file), "--tokenizer", run.tokenizer.path,
            "--out", str(shards), "--val-fraction", "0.05", "--workers", str(max(run.threads, 1))])
        if outcome.exit_code != 0 or outcome.cancelled:
            return _finish_from(run, outcome)
    cfg = json.loads(json.dumps(run.config))
    cfg["data"]["dataset_dir"] = str(shards)
    cfg.update(out_dir=str(run.out_dir), tokenizer_dir=run.tokenizer.path, resume_from="auto")
    if run.parent_checkpoint_id:
        cfg["init_from"] = run.parent_checkpoint.path
    config_path = run.out_dir / "launch_config.json"
    config_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    outcome = _run_phase(run, "pretrain", ["pretrain", "--config", str(config_path)], nproc=run.nproc)
    if outcome.exit_code == 0 and not outcome.cancelled and outcome.end.get("status") == "completed":
        actions.finish_run(run.pk, SUCCEEDED, summary=outcome.end, exit_code=0)
        return SUCCEEDED
    return _finish_from(run, outcome, outcome.end)


def _posttrain_run(run: Run) -> str:
    from training.posttrain import launch_config

    config_path, _ = launch_config(run)
    outcome = _run_phase(run, run.kind, [run.kind, "--config", str(config_path)], nproc=run.nproc)
    if outcome.exit_code == 0 and not outcome.cancelled and outcome.end.get("status") == "completed":
        actions.finish_run(run.pk, SUCCEEDED, summary=outcome.end, exit_code=0)
        return SUCCEEDED
    return _finish_from(run, outcome, outcome.end)


RUNNERS = {"tokenizer": _tokenizer_run, "pretrain": _pretrain_run, "sft": _posttrain_run,
           "reward": _posttrain_run, "dpo": _posttrain_run, "ppo": _posttrain_run}


@db_task()
def run_job(run_id: int) -> str | None:
    """Run a queued run to its end; returns its final status (None when it was no longer queued)."""
    try:
        claimed = actions.claim_run(run_id)
    except Exception as e:  # noqa: BLE001 - e.g. the GPU pool became smaller than the run
        Run.objects.filter(pk=run_id, status="queued").update(status=FAILED, error={
            "code": codes.LAUNCH_FAILED, "detail": str(getattr(e, "detail", e)), "hint": getattr(e, "hint", "")})
        return FAILED
    if claimed is None:
        return None
    if claimed == actions.WAIT_FOR_GPUS:  # stays queued; try again shortly
        run_job.schedule((run_id,), delay=GPU_RETRY_SECONDS)
        return "waiting"
    run = Run.objects.select_related("dataset", "tokenizer", "parent_checkpoint", "created_by").get(pk=run_id)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return RUNNERS[run.kind](run)
    except Exception as e:  # noqa: BLE001 - any failure must end the run, never leave it "running"
        log.exception("run %s failed to launch", run_id)
        with open(run.log_path, "a", encoding="utf-8") as f:
            f.write(f"studio: {type(e).__name__}: {e}\n")
        actions.finish_run(run_id, FAILED, error={"code": codes.LAUNCH_FAILED, "detail": f"{type(e).__name__}: {e}",
                                                  "hint": codes.HINTS[codes.LAUNCH_FAILED],
                                                  "log_tail": log_tail(run.log_path)})
        return FAILED


@db_task()
def export_job(artifact_id: int) -> str:
    """Export a checkpoint with ``cli export`` into the artifact's path; the artifact becomes ready or failed."""
    import subprocess

    from training.models import ModelArtifact

    art = ModelArtifact.objects.select_related("checkpoint").get(pk=artifact_id)
    out = art.path
    log_path = data_path("models", art.pk, "export.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = core_command(["export", "--model", art.checkpoint.path, "--format", art.format, "--out", out, "--quiet"])
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.run(cmd, env=child_env(data_dir=settings.DATA_DIR), cwd=REPO, stdout=log_file,
                              stderr=subprocess.STDOUT, start_new_session=True)
    ok = proc.returncode == 0
    info = {**art.info, "exit_code": proc.returncode, "log_tail": "" if ok else log_tail(log_path, 20)}
    ModelArtifact.objects.filter(pk=art.pk).update(status="ready" if ok else "failed", info=info)
    from studio.events import publish

    publish("model.exported" if ok else "model.export_failed", {"model": art.pk, "format": art.format, "path": out})
    return "ready" if ok else "failed"


@on_startup()
def startup_check() -> None:
    """A worker starting marks the runs of dead workers interrupted (never 'running' forever)."""
    try:
        marked = actions.mark_lost_runs(this_worker_starting=True)
        if marked:
            log.warning("runs interrupted by a lost worker: %s", marked)
    except Exception:  # noqa: BLE001 - e.g. the database is not migrated yet
        log.exception("could not check for interrupted runs")
    finally:
        from django.db import close_old_connections

        close_old_connections()


@db_periodic_task(crontab(minute="*"))
def check_lost_runs() -> list[int]:
    """Every minute: runs whose heartbeat is stale become interrupted."""
    return actions.mark_lost_runs()


from training.datastudio import tasks as _datastudio_tasks  # noqa: E402,F401  (registers the data studio tasks)
