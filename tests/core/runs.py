"""Helpers for the core tests that run the training loops (in process or through ``python -m training.core.cli``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training.core.callbacks import RecordingCallbacks
from training.core.checkpoint import find_checkpoint, load_model
from training.core.config import BaseConfig

REPO = Path(__file__).resolve().parents[2]


def cancel_after_first_step(command: str, cfg: BaseConfig, tmp_path: Path) -> list[dict]:
    """Run ``cli <command>`` on ``cfg``, send SIGTERM (the studio's cancel) once the first step event
    is written, check the exit code is 3 (cancelled), and return the events it wrote."""
    config_file, events = tmp_path / "run.json", tmp_path / "events.jsonl"
    config_file.write_text(cfg.to_json())
    proc = subprocess.Popen([sys.executable, "-m", "training.core.cli", command, "-q", "--config", str(config_file),
                             "--events", str(events)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not (events.exists() and '"event": "step"' in events.read_text()):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-3000:]
    return [json.loads(line) for line in events.read_text().splitlines()]


def whole_and_split_runs(train: Callable[[Any, RecordingCallbacks], dict], make_cfg: Callable[..., BaseConfig],
                         tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """Train ``make_cfg(out, **overrides)`` straight through (``tmp_path/whole``) and again stopped
    after step 2 and resumed (``tmp_path/split``); check the stop and the resume, and that both
    end with the same weights (atol 1e-6). Returns the step metrics of the whole run and of the
    split run (both halves)."""
    whole = RecordingCallbacks()
    train(make_cfg(tmp_path / "whole"), whole)
    first = RecordingCallbacks(stop_at_step=2)
    s1 = train(make_cfg(tmp_path / "split"), first)
    assert s1["status"] == "cancelled" and s1["step"] == 2
    second = RecordingCallbacks()
    s2 = train(make_cfg(tmp_path / "split", resume_from="auto"), second)
    assert s2["status"] == "completed" and s2["start_step"] == 2
    a = load_model(find_checkpoint(tmp_path / "whole"))
    b = dict(load_model(find_checkpoint(tmp_path / "split")).named_parameters())
    for n, p in a.named_parameters():
        torch.testing.assert_close(p, b[n], rtol=0, atol=1e-6)
    return [m for _, m in whole.steps], [m for _, m in first.steps + second.steps]
