"""Pure helpers of the training app: event tailing, commands, failure reasons, downsampling."""

from __future__ import annotations

import json
import sys

import pytest

from training.launch import EventTail, Outcome, child_env, core_command, log_tail
from training.reporting import downsample, stride_for


def test_event_tail_returns_only_complete_new_lines(tmp_path):  # noqa: ANN001
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"event": "old"}) + "\n")
    tail = EventTail(path)  # starts at the end: earlier attempts are not replayed
    assert tail.read() == []
    with open(path, "a") as f:
        f.write(json.dumps({"event": "step", "step": 1}) + "\n" + '{"event": "st')
    assert tail.read() == [{"event": "step", "step": 1}]
    with open(path, "a") as f:
        f.write('ep", "step": 2}\nnot json\n')
    assert tail.read() == [{"event": "step", "step": 2}, {"event": "log", "message": "not json"}]
    assert tail.read() == []


def test_core_command_and_environment():
    assert core_command(["pretrain"]) == [sys.executable, "-m", "training.core.cli", "pretrain"]
    cmd = core_command(["pretrain", "-c", "x.json"], nproc=4, torchrun_args="--nnodes=2 --rdzv-endpoint=n0:29500")
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=4"]
    assert cmd[4:6] == ["--nnodes=2", "--rdzv-endpoint=n0:29500"] and cmd[-3:] == ["pretrain", "-c", "x.json"]
    env = child_env(threads=3, gpus="0,2", data_dir="/srv/studio")
    assert env["OMP_NUM_THREADS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert env["STUDIO_DATA_DIR"] == "/srv/studio" and "DJANGO_SETTINGS_MODULE" not in env


def test_log_tail_folds_progress_bars(tmp_path):  # noqa: ANN001
    path = tmp_path / "run.log"
    path.write_text("start\n 10%|#\r 50%|#####\r100%|##########\nTraceback (most recent call last):\nValueError: boom\n")
    assert log_tail(path, 3).splitlines() == ["100%|##########", "Traceback (most recent call last):", "ValueError: boom"]
    assert log_tail(tmp_path / "missing.log") == ""


def test_stride_and_downsample():
    assert stride_for(4000) == 1 and stride_for(4001) == 2 and stride_for(1_000_000) == 250
    pts = [{"step": i} for i in range(1, 1001)]
    thin = downsample(pts, 100)
    assert len(thin) <= 100 and thin[0]["step"] == 1 and thin[-1]["step"] == 1000
    assert downsample(pts[:5], 100) == pts[:5]


@pytest.mark.parametrize("log,code,end,expected", [
    ("RuntimeError: CUDA out of memory. Tried to allocate 2 GiB", 1, {}, "out_of_memory"),
    ("OSError: [Errno 28] No space left on device", 1, {}, "disk_full"),
    ("loss is nan at step 7", 4, {}, "diverged"),
    ("Traceback\nKeyError: 'x'", 1, {}, "child_crashed"),
    ("", 2, {"status": "failed", "error": {"type": "ConfigError", "field": "model.vocab_size", "detail": "too small",
                                           "hint": "set it to 320"}}, "invalid_input"),
])
def test_failure_reasons(tmp_path, log, code, end, expected):  # noqa: ANN001
    from types import SimpleNamespace

    from training.tasks import _failure

    run = SimpleNamespace(log_path=tmp_path / "run.log")
    run.log_path.write_text(log + "\n")
    reason = _failure(run, Outcome(exit_code=code, cancelled=False, killed=False, end=end))
    assert reason["code"] == expected and reason["hint"] and reason["detail"]
    if expected == "invalid_input":
        assert reason["detail"] == "model.vocab_size: too small" and reason["hint"] == "set it to 320"
    else:
        assert log.splitlines()[-1] in reason["log_tail"]


def test_cancel_sends_sigterm_then_sigkill_after_the_grace_period(tmp_path):  # noqa: ANN001
    from training.launch import ChildProcess, supervise

    events = tmp_path / "events.jsonl"
    script = ("import json, signal, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: open('%s', 'a').write(json.dumps({'event': 'log', "
              "'message': 'got SIGTERM, ignoring it'}) + '\\n'))\n"
              "open('%s', 'a').write(json.dumps({'event': 'step', 'step': 1, 'metrics': {'loss': 1.0}}) + '\\n')\n"
              "time.sleep(60)\n") % (events, events)
    tail = EventTail(events)  # before the child starts, so that nothing it writes is missed
    child = ChildProcess([sys.executable, "-c", script], dict(__import__("os").environ), tmp_path / "run.log")
    seen: list[dict] = []
    beats: list[int] = []
    try:
        outcome = supervise(child, tail, on_events=seen.extend,
                            should_cancel=lambda: any(e.get("event") == "step" for e in seen),
                            on_heartbeat=lambda: beats.append(1), poll_seconds=0.05, cancel_check_seconds=0.05,
                            grace_seconds=1.0)
    finally:
        child.close()
    assert outcome.cancelled and outcome.killed and outcome.exit_code == -9
    assert [e["event"] for e in seen] == ["step", "log"] and beats
