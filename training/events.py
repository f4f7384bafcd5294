"""Events of the training app, published to ``run.<id>`` (the run page follows it) and, for state
changes, to the studio-wide stream (the dashboard's activity list)."""

from __future__ import annotations

from typing import Any

from studio.events import publish


def run_group(run_id: int) -> str:
    """Event group of one run, followed by ``/ws/runs/<id>/``."""
    return f"run.{run_id}"


def publish_run(run_id: int, kind: str, payload: dict[str, Any], *, studio_wide: bool = False,
                actor: Any = None) -> None:
    """Publish ``kind`` to the run's group (and to the studio stream when ``studio_wide``)."""
    publish(kind, {"run": run_id, **payload}, group=run_group(run_id), actor=actor)
    if studio_wide:
        publish(kind, {"run": run_id, **payload}, actor=actor)
