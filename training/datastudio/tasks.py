"""Huey tasks of the data studio. Tasks take ids, never model instances.

:func:`curate_job` runs a curation run in a child process (``python -m training.datastudio.child``,
which calls the core's ``run_recipe`` — with ``workers`` processes for the stateless steps), in
its own process group, never in the web server's event loop. The task tails the child's events,
stores and publishes progress (throttled), heartbeats, turns a cancel request into SIGTERM and,
when the child succeeded, publishes the version folder as a dataset version.
:func:`check_lost_curations` marks runs of dead workers interrupted every minute.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

from django.conf import settings
from huey import crontab
from huey.contrib.djhuey import db_periodic_task, db_task

from training.datastudio import actions
from training.datastudio.child import EXIT_CANCELLED, EXIT_INVALID
from training.launch import ChildProcess, EventTail, Outcome, child_env, log_tail, supervise
from training.models.datastudio import CurationRun

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 0.5  # at most two progress events per second reach the browsers


def run_spec(run: CurationRun, *, resume: bool) -> dict[str, Any]:
    """What the child needs: input files, source records, recipe, output folder and options."""
    sources = list(run.sources.order_by("id"))
    return {
        "inputs": [str(s.documents_file) for s in sources], "sources": [s.as_record() for s in sources],
        "recipe": run.recipe, "out_dir": str(actions.version_dir(run)), "name": run.name, "workers": run.workers,
        "shard_docs": run.shard_docs, "output_format": run.output_format, "resume": resume,
    }


def _failure(run: CurationRun, outcome: Outcome) -> dict[str, Any]:
    tail = log_tail(run.log_path, 25)
    error = outcome.end.get("error") if isinstance(outcome.end.get("error"), dict) else None
    if outcome.exit_code == EXIT_INVALID and error:
        where = error.get("field") or error.get("code") or ""
        detail = error.get("detail") or "invalid input"
        return {"code": actions.CURATION_INVALID, "detail": f"{where}: {detail}" if where else detail,
                "hint": error.get("hint") or actions.HINTS[actions.CURATION_INVALID], "log_tail": tail}
    last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
    detail = (error or {}).get("detail") or last
    return {"code": actions.CURATION_CRASHED, "detail": f"The curation process exited with code {outcome.exit_code}: "
                                                        f"{detail}", "hint": actions.HINTS[actions.CURATION_CRASHED],
            "log_tail": tail}


class CurationProcess(ChildProcess):
    """The curation child: a cancel signals the child alone (it stops its worker pool itself after
    the current batch); only the SIGKILL after the grace period goes to the whole process group."""

    def terminate(self) -> None:
        if self.term_sent_at is None:
            self.term_sent_at = time.monotonic()
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


class ProgressRelay:
    """Turns the child's events into stored progress and (throttled) live events."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.last_sent = 0.0
        self.pending: dict[str, Any] | None = None

    def handle(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            if e.get("event") == "progress" and isinstance(e.get("progress"), dict):
                self.pending = e["progress"]
        now = time.monotonic()
        if self.pending is not None and now - self.last_sent >= PUBLISH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending is not None:
            actions.record_progress(self.run_id, self.pending)
            self.pending = None
            self.last_sent = time.monotonic()


def _curate(run: CurationRun) -> str:
    work = run.work_dir
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(run_spec(run, resume=run.attempt > 1), indent=2), encoding="utf-8")
    events = run.events_path
    cmd = [sys.executable, "-m", "training.datastudio.child", "--spec", str(spec_path), "--events", str(events)]
    tail = EventTail(events)
    relay = ProgressRelay(run.pk)
    child = CurationProcess(cmd, child_env(data_dir=settings.DATA_DIR), run.log_path)
    try:
        actions.curation_heartbeat(run.pk, child.pid)
        outcome = supervise(child, tail, on_events=relay.handle,
                            should_cancel=lambda: actions.cancel_requested(run.pk),
                            on_heartbeat=lambda: actions.curation_heartbeat(run.pk, child.pid), grace_seconds=30)
    finally:
        child.close()
    relay.flush()
    if outcome.exit_code == 0 and not outcome.cancelled and outcome.end.get("status") == "complete":
        actions.finish_curation(run.pk, "succeeded", summary=outcome.end, exit_code=0,
                                version_dir=actions.version_dir(run))
        return "succeeded"
    if outcome.cancelled or outcome.exit_code == EXIT_CANCELLED:
        actions.finish_curation(run.pk, "cancelled", summary=outcome.end, exit_code=outcome.exit_code)
        return "cancelled"
    actions.finish_curation(run.pk, "failed", error=_failure(run, outcome), exit_code=outcome.exit_code)
    return "failed"


@db_task()
def curate_job(run_id: int) -> str | None:
    """Run a queued curation run to its end; returns its final status (None when no longer queued)."""
    run = actions.claim_curation(run_id)
    if run is None:
        return None
    try:
        return _curate(run)
    except Exception as e:  # noqa: BLE001 - any failure must end the run, never leave it "running"
        log.exception("curation run %s failed", run_id)
        run.work_dir.mkdir(parents=True, exist_ok=True)
        with open(run.log_path, "a", encoding="utf-8") as f:
            f.write(f"studio: {type(e).__name__}: {e}\n")
        actions.finish_curation(run_id, "failed", error={
            "code": actions.CURATION_CRASHED, "detail": f"{type(e).__name__}: {e}",
            "hint": actions.HINTS[actions.CURATION_CRASHED], "log_tail": log_tail(run.log_path)})
        return "failed"


@db_periodic_task(crontab(minute="*"))
def check_lost_curations() -> list[int]:
    """Every minute: curation runs whose heartbeat is stale become interrupted."""
    return actions.mark_lost_curations()
