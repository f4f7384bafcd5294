"""The callback protocol through which training loops report progress.

Loops never print or write metrics themselves: they call a :class:`Callbacks` object. The
Django side implements the protocol (it stores metrics and broadcasts them); the CLI uses
:class:`JsonlCallbacks` (one JSON event per line, tailed by the studio) and
:class:`ProgressBarCallbacks` (a tqdm bar on stderr). :class:`CallbackList` fans out to several.

Metric names follow what torchtitan and LlamaBoard users know:

``loss``, ``lr``, ``grad_norm``, ``throughput(tps)``, ``tflops``, ``mfu(%)``,
``memory/max_reserved(GiB)``, ``time_metrics/data_loading(%)``, ``current_steps``,
``total_steps``, ``elapsed_time``, ``remaining_time``; on evaluation ``val/loss`` and
``val/perplexity``.

>>> import io, json
>>> buf = io.StringIO()
>>> cb = JsonlCallbacks(buf)
>>> cb.on_step(10, {"loss": 2.5})
>>> json.loads(buf.getvalue())["event"]
'step'
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterable

__all__ = [
    "Callbacks",
    "CallbackList",
    "JsonlCallbacks",
    "ProgressBarCallbacks",
    "RecordingCallbacks",
    "STEP_METRICS",
    "EVAL_METRICS",
]

#: Names of the metrics a pretraining step reports.
STEP_METRICS: tuple[str, ...] = (
    "loss",
    "lr",
    "grad_norm",
    "throughput(tps)",
    "tflops",
    "mfu(%)",
    "memory/max_reserved(GiB)",
    "time_metrics/data_loading(%)",
    "current_steps",
    "total_steps",
    "elapsed_time",
    "remaining_time",
)
#: Names of the metrics an evaluation reports.
EVAL_METRICS: tuple[str, ...] = ("val/loss", "val/perplexity")


class Callbacks:
    """Base class: every hook is a no-op. Subclass and override what you need.

    ``should_stop()`` is polled by the loop once per step; returning True makes the loop finish
    the current step, write a checkpoint and end with status ``"cancelled"``.
    """

    def on_start(self, info: dict[str, Any]) -> None:
        """Called once before the first step with the run's config and sizes."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """Called after each optimizer step (1-based ``step``)."""

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Called after each validation pass."""

    def on_checkpoint(self, step: int, path: str) -> None:
        """Called after a checkpoint was written (and published) at ``path``."""

    def on_log(self, message: str) -> None:
        """A human-readable message (warnings, notes)."""

    def on_end(self, summary: dict[str, Any]) -> None:
        """Called once at the end with the loop's summary (``status`` among others)."""

    def should_stop(self) -> bool:
        """Return True to ask the loop to stop cleanly after the current step."""
        return False


class CallbackList(Callbacks):
    """Fans each event out to several callbacks; stops when any of them asks to."""

    def __init__(self, callbacks: Iterable[Callbacks | None] = ()) -> None:
        self.callbacks: list[Callbacks] = [c for c in callbacks if c is not None]

    def append(self, callback: Callbacks) -> None:
        self.callbacks.append(callback)

    def on_start(self, info: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_start(info)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        for c in self.callbacks:
            c.on_step(step, metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        for c in self.callbacks:
            c.on_eval(step, metrics)

    def on_checkpoint(self, step: int, path: str) -> None:
        for c in self.callbacks:
            c.on_checkpoint(step, path)

    def on_log(self, message: str) -> None:
        for c in self.callbacks:
            c.on_log(message)

    def on_end(self, summary: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_end(summary)

    def should_stop(self) -> bool:
        # evaluate all so that every callback sees the poll (no short-circuit surprises)
        return any([c.should_stop() for c in self.callbacks])


def _json_safe(value: Any) -> Any:
    """Make a value JSON-serializable: NaN/inf become None, tensors and paths become numbers/strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # torch / numpy scalars
        try:
            return _json_safe(value.item())
        except (ValueError, RuntimeError):
            pass
    return str(value)


class JsonlCallbacks(Callbacks):
    """Writes one JSON object per line and flushes it, so that another process can tail the file.

    Events: ``{"event": "start", "info": {...}}``, ``{"event": "step", "step": 10, "metrics": {...}}``,
    ``{"event": "eval", ...}``, ``{"event": "checkpoint", "step": .., "path": ..}``,
    ``{"event": "log", "message": ..}``, ``{"event": "end", "summary": {...}}``. Every event has
    ``"time"`` (Unix seconds). ``path_or_stream`` is a file path (appended to), ``"-"`` for
    stdout, or an open text stream.
    """

    def __init__(self, path_or_stream: str | Path | IO[str]) -> None:
        self._owns = False
        if isinstance(path_or_stream, (str, Path)):
            if str(path_or_stream) == "-":
                self.stream: IO[str] = sys.stdout
            else:
                path = Path(path_or_stream)
                path.parent.mkdir(parents=True, exist_ok=True)
                self.stream = open(path, "a", encoding="utf-8")
                self._owns = True
        else:
            self.stream = path_or_stream
        self._lock = threading.Lock()

    def emit(self, event: str, **payload: Any) -> None:
        """Write one event line (thread-safe) and flush."""
        record = {"event": event, "time": round(time.time(), 3), **_json_safe(payload)}
        line = json.dumps(record, sort_keys=False)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def on_start(self, info: dict[str, Any]) -> None:
        self.emit("start", info=info)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.emit("step", step=step, metrics=metrics)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.emit("eval", step=step, metrics=metrics)

    def on_checkpoint(self, step: int, path: str) -> None:
        self.emit("checkpoint", step=step, path=str(path))

    def on_log(self, message: str) -> None:
        self.emit("log", message=message)

    def on_end(self, summary: dict[str, Any]) -> None:
        self.emit("end", summary=summary)
        self.close()

    def close(self) -> None:
        if self._owns and not self.stream.closed:
            self.stream.close()


class ProgressBarCallbacks(Callbacks):
    """A tqdm progress bar on stderr showing loss, lr and throughput."""

    def __init__(self, desc: str = "pretrain", stream: IO[str] | None = None) -> None:
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.bar: Any = None

    def on_start(self, info: dict[str, Any]) -> None:
        from tqdm import tqdm

        total = int(info.get("total_steps", 0)) or None
        initial = int(info.get("start_step", 0))
        self.bar = tqdm(total=total, initial=initial, desc=self.desc, file=self.stream, dynamic_ncols=True)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(
            loss=f"{metrics.get('loss', float('nan')):.4f}",
            lr=f"{metrics.get('lr', float('nan')):.2e}",
            tps=f"{metrics.get('throughput(tps)', 0.0):.0f}",
            refresh=False,
        )

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.write(f"step {step}: val/loss {metrics.get('val/loss', float('nan')):.4f} "
                           f"val/perplexity {metrics.get('val/perplexity', float('nan')):.2f}", file=self.stream)

    def on_log(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream)

    def on_end(self, summary: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RecordingCallbacks(Callbacks):
    """Keeps every event in memory (tests, notebooks); can ask the loop to stop at a given step."""

    def __init__(self, stop_at_step: int | None = None) -> None:
        self.stop_at_step = stop_at_step
        self.info: dict[str, Any] = {}
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.checkpoints: list[tuple[int, str]] = []
        self.logs: list[str] = []
        self.summary: dict[str, Any] | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        self.info = info

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, dict(metrics)))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.evals.append((step, dict(metrics)))

    def on_checkpoint(self, step: int, path: str) -> None:
        self.checkpoints.append((step, str(path)))

    def on_log(self, message: str) -> None:
        self.logs.append(message)

    def on_end(self, summary: dict[str, Any]) -> None:
        self.summary = summary

    def should_stop(self) -> bool:
        return self.stop_at_step is not None and bool(self.steps) and self.steps[-1][0] >= self.stop_at_step

    @property
    def losses(self) -> list[float]:
        return [m["loss"] for _, m in self.steps]
