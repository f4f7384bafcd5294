"""The child process of a curation run: ``python -m training.datastudio.child --spec S --events E``.

It imports no Django. It reads the run's spec (inputs, recipe, output folder, workers, shard
size, format, resume), calls :func:`training.core.curate.runner.run_recipe` and writes JSON lines
to the events file: ``start``, ``progress`` (at most every ``--every`` seconds, plus the last),
``end`` with the summary. SIGTERM to this process (a cancel; the studio signals it alone, not its
worker pool) makes ``should_stop`` true: the runner stops after the current batch, keeping the
finished shards for a resume, and the process exits with :data:`EXIT_CANCELLED`. Exit codes: 0 done, 2 invalid recipe or input, 3 cancelled, 1 crash.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_CRASH, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 3


class EventWriter:
    """Appends one JSON object per line and flushes, so the supervisor sees complete lines."""

    def __init__(self, path: Path, every: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")
        self.every = every
        self.last = 0.0
        self.pending: dict[str, Any] | None = None

    def write(self, event: str, **payload: Any) -> None:
        self.f.write(json.dumps({"event": event, "time": time.time(), **payload}, default=str) + "\n")
        self.f.flush()

    def progress(self, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.pending = None
            self.write("progress", progress=info)
        else:
            self.pending = info

    def flush_progress(self) -> None:
        if self.pending is not None:
            self.write("progress", progress=self.pending)
            self.pending = None


def install_stop_handler() -> dict[str, bool]:
    """SIGTERM sets ``stop["requested"]`` in this process only. Processes forked from it (the
    runner's worker pool) get the default SIGTERM back, so that stopping the pool — which
    terminates its workers with SIGTERM — never waits on a worker that caught the signal."""
    stop = {"requested": False}

    def on_term(signum: int, frame: Any) -> None:  # noqa: ARG001
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    return stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--events", required=True, type=Path)
    parser.add_argument("--every", type=float, default=0.5, help="seconds between progress events")
    args = parser.parse_args(argv)

    stop = install_stop_handler()
    events = EventWriter(args.events, args.every)
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    events.write("start", out_dir=spec["out_dir"], resume=spec.get("resume", False))

    from training.core.config import ConfigError
    from training.core.curate.base import CurationError
    from training.core.curate.runner import run_recipe

    try:
        manifest = run_recipe(spec["inputs"], spec["recipe"], spec["out_dir"], workers=spec.get("workers", 1),
                              shard_docs=spec.get("shard_docs", 10_000),
                              output_format=spec.get("output_format", "jsonl"), on_progress=events.progress,
                              should_stop=lambda: stop["requested"], resume=spec.get("resume", False),
                              name=spec.get("name"), sources=spec.get("sources"))
    except (ConfigError, CurationError) as e:
        events.flush_progress()
        error = ({"field": e.field, "detail": e.message, "hint": e.hint} if isinstance(e, ConfigError)
                 else {"code": e.code, "detail": e.detail, "hint": e.hint})
        events.write("end", summary={"status": "failed", "error": error})
        return EXIT_INVALID
    except Exception as e:  # noqa: BLE001 - reported to the studio, which marks the run failed
        events.flush_progress()
        traceback.print_exc()
        events.write("end", summary={"status": "failed", "error": {"type": type(e).__name__, "detail": str(e)}})
        return EXIT_CRASH
    events.flush_progress()
    if manifest.get("status") == "cancelled":
        events.write("end", summary=manifest)
        return EXIT_CANCELLED
    counts = manifest.get("counts", {})
    events.write("end", summary={"status": manifest.get("status", "complete"), **counts,
                                 "seconds": manifest.get("seconds"), "docs_per_s": manifest.get("docs_per_s"),
                                 "mb_per_s": manifest.get("mb_per_s"), "files": len(manifest.get("files", []))})
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
