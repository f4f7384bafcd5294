"""Turning the core's JSON-lines events into records and live events.

:class:`RunReporter` receives batches of events (``start``, ``step``, ``eval``, ``checkpoint``,
``log``, ``end``) tailed from a child process. Each batch becomes one bulk insert of metric rows,
checkpoint rows, an update of the run's progress, and one ``run.metrics`` event on the run's group
— so the cost per step stays a fraction of a millisecond whatever the number of metrics.
Long runs are downsampled: at most ``STUDIO_METRIC_POINTS`` training points are kept per run
(every ``stride``-th step, plus the last), evaluation points are always kept.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from django.db import transaction

from training.events import publish_run
from training.models import Checkpoint, MetricPoint, Run

MAX_POINTS = int(os.environ.get("STUDIO_METRIC_POINTS", "4000"))
# metrics copied onto a checkpoint's record (pretraining, then fine-tuning and RLHF runs)
CHECKPOINT_METRICS = ("loss", "val/loss", "val/perplexity", "eval/loss", "eval/accuracy", "accuracy",
                      "rewards/accuracies", "rewards/margins", "objective/rlhf_reward", "objective/kl")


def stride_for(total_steps: int, max_points: int = MAX_POINTS) -> int:
    """Keep every ``stride``-th training step so that a run stores at most about ``max_points``.

    >>> stride_for(1000), stride_for(10_000), stride_for(0)
    (1, 3, 1)
    """
    if total_steps <= max_points or max_points <= 0:
        return 1
    return math.ceil(total_steps / max_points)


def downsample(points: list[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """Evenly thin a list of points to at most ``max_points`` (the last one is always kept).

    >>> [p["step"] for p in downsample([{"step": i} for i in range(1, 11)], 4)]
    [1, 4, 7, 10]
    """
    if max_points <= 0 or len(points) <= max_points:
        return points
    stride = math.ceil(len(points) / max_points)
    out = points[::stride]
    if out[-1] is not points[-1]:
        out = out[:-1] + [points[-1]] if len(out) >= max_points else out + [points[-1]]
    return out


def _clean(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class RunReporter:
    """Records the events of one run's child process and relays them to the run's followers."""

    def __init__(self, run_id: int, phase: str = "") -> None:
        self.run_id = run_id
        self.phase = phase
        run = Run.objects.only("total_steps").get(pk=run_id)
        self.stride = stride_for(run.total_steps)
        self.total_steps = run.total_steps
        self.last_train: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.start_info: dict[str, Any] = {}

    def handle(self, events: list[dict[str, Any]]) -> None:
        """Persist one batch of events and publish them (one ``run.metrics`` event per batch)."""
        points: list[MetricPoint] = []
        published: list[dict[str, Any]] = []
        checkpoints: list[tuple[int, str]] = []
        logs: list[str] = []
        step_now: int | None = None
        for e in events:
            kind = e.get("event")
            if kind == "start":
                self._on_start(e.get("info") or {})
            elif kind in ("step", "eval"):
                step = int(e.get("step", 0))
                values = _clean(e.get("metrics") or {})
                if kind == "step":
                    self.last_train = values
                    step_now = step
                    total = int(values.get("total_steps") or self.total_steps or 0)
                    keep = step % self.stride == 0 or step == total
                else:
                    self.last_eval = values
                    keep = True
                point = {"step": step, "kind": "train" if kind == "step" else "eval",
                         "time": float(e.get("time", 0.0)), "values": values}
                if keep:
                    points.append(MetricPoint(run_id=self.run_id, **point))
                    published.append(point)
            elif kind == "checkpoint":
                checkpoints.append((int(e.get("step", 0)), str(e.get("path", ""))))
            elif kind == "log":
                logs.append(str(e.get("message", "")))
        with transaction.atomic():
            if points:
                MetricPoint.objects.bulk_create(points)
            for step, path in checkpoints:
                metrics = {k: v for k, v in {**self.last_train, **self.last_eval}.items()
                           if k in CHECKPOINT_METRICS}
                Checkpoint.objects.update_or_create(run_id=self.run_id, step=step,
                                                    defaults={"path": path, "metrics": metrics})
            if step_now is not None:
                Run.objects.filter(pk=self.run_id).update(current_step=step_now)
        if published:
            publish_run(self.run_id, "run.metrics", {"points": published})
        for step, path in checkpoints:
            publish_run(self.run_id, "run.checkpoint", {"step": step, "path": path})
        for message in logs:
            publish_run(self.run_id, "run.log", {"message": message[:2000], "phase": self.phase})

    def backfill(self, events_path: Any) -> int:
        """Record what an earlier attempt's child wrote after its worker died (nobody was tailing):
        steps after the last recorded one, and checkpoints not yet recorded. Returns the events added."""
        from pathlib import Path

        path = Path(events_path)
        if not path.exists():
            return 0
        last = {kind: MetricPoint.objects.filter(run_id=self.run_id, kind=kind).order_by("-step")
                .values_list("step", flat=True).first() or 0 for kind in ("train", "eval")}
        known = set(Checkpoint.objects.filter(run_id=self.run_id).values_list("step", flat=True))
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind, step = e.get("event"), e.get("step")
                if not isinstance(step, int):
                    continue
                if (kind == "step" and step > last["train"]) or (kind == "eval" and step > last["eval"]) or (
                        kind == "checkpoint" and step not in known and Path(str(e.get("path", ""))).exists()):
                    latest[(kind, step)] = e  # a replayed step: the latest report wins
        events = sorted(latest.values(), key=lambda e: (e["step"], e["event"] != "step"))
        if events:
            self.handle(events)
        return len(events)

    def _on_start(self, info: dict[str, Any]) -> None:
        self.start_info = info
        total = int(info.get("total_steps") or 0)
        start = int(info.get("start_step") or 0)
        updates: dict[str, Any] = {}
        if total:
            self.total_steps = total
            self.stride = stride_for(total)
            updates["total_steps"] = total
        if "start_step" in info:
            updates["current_step"] = start
            # a resumed run replays the steps after its checkpoint: drop the points recorded for them
            MetricPoint.objects.filter(run_id=self.run_id, step__gt=start).delete()
        if updates:
            Run.objects.filter(pk=self.run_id).update(**updates)
        publish_run(self.run_id, "run.started", {
            "phase": self.phase, "start_step": start, "total_steps": total,
            **{k: info[k] for k in ("n_params", "world_size", "device", "dtype", "tokens_per_step") if k in info}})
