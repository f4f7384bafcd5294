"""Launching the ML core as a child process and supervising it.

The studio never imports the training loop into a web or worker process: a run is
``python -m training.core.cli …`` (or ``torchrun --nproc_per_node=N -m training.core.cli …``) in
its own process group, with its output appended to the run's log file and its JSON-lines events
(``--events``) tailed by :class:`EventTail`. :func:`supervise` polls the child, relays new events,
sends heartbeats and turns a cancel request into SIGTERM (the core checkpoints and exits), then
SIGKILL after a grace period. The child gets SIGTERM if its worker dies (``PR_SET_PDEATHSIG``), so
a worker killed with SIGKILL leaves a checkpoint behind and no orphan process.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

REPO = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


def child_env(*, threads: int = 0, gpus: str = "", data_dir: str | Path | None = None,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a core child process: the repository on ``PYTHONPATH``, CPU threads, GPUs."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH", "")])])
    env["PYTHONUNBUFFERED"] = "1"
    if threads > 0:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    if data_dir is not None:
        env["STUDIO_DATA_DIR"] = str(data_dir)
    env.update(extra or {})
    return env


def core_command(args: list[str], *, nproc: int = 1, torchrun_args: str = "") -> list[str]:
    """The command line running ``training.core.cli`` with ``args``: one process, or torchrun.

    ``torchrun_args`` adds rendezvous settings for several nodes, e.g.
    ``"--nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=node0:29500"``.

    >>> core_command(["pretrain", "-c", "run.json"])[1:4]
    ['-m', 'training.core.cli', 'pretrain']
    >>> core_command(["pretrain"], nproc=2)[1:4]
    ['-m', 'torch.distributed.run', '--nproc_per_node=2']
    """
    if nproc <= 1 and not torchrun_args:
        return [sys.executable, "-m", "training.core.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={max(nproc, 1)}",
            *shlex.split(torchrun_args), "-m", "training.core.cli", *args]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the stale-heartbeat check still catches a lost worker
        pass


class ChildProcess:
    """A core process in its own session, output appended to ``log_path``."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cmd = cmd
        self.log: IO[bytes] = open(log_path, "ab")
        self.log.write(f"$ {shlex.join(cmd)}\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.term_sent_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self) -> None:
        """SIGTERM to the whole process group (torchrun forwards it to its ranks)."""
        if self.term_sent_at is None:
            self.term_sent_at = time.monotonic()
            self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
            self.proc.wait()
        self.log.close()


class EventTail:
    """Reads the complete JSON lines appended to an events file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # an unfinished line waits for the next read
        out = []
        for line in lines:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append({"event": "log", "message": line.decode(errors="replace")})
        return out


@dataclass
class Outcome:
    """How a child ended: exit code, whether we asked it to stop, and its last ``end`` event."""

    exit_code: int
    cancelled: bool
    killed: bool
    end: dict[str, Any] = field(default_factory=dict)


def supervise(child: ChildProcess, tail: EventTail, *, on_events: Callable[[list[dict[str, Any]]], None],
              should_cancel: Callable[[], bool], on_heartbeat: Callable[[], None],
              poll_seconds: float = 0.1, heartbeat_seconds: float = 5.0, cancel_check_seconds: float = 1.0,
              grace_seconds: float = 30.0) -> Outcome:
    """Run ``child`` to its end: relay events, heartbeat, honour cancel requests (SIGTERM, then SIGKILL)."""
    last_beat = last_cancel_check = 0.0
    cancelled = killed = False
    end: dict[str, Any] = {}

    def relay() -> None:
        nonlocal end
        events = tail.read()
        if events:
            for e in events:
                if e.get("event") == "end":
                    end = e.get("summary") or {}
            on_events(events)

    while True:
        code = child.poll()
        relay()
        if code is not None:
            relay()
            return Outcome(code, cancelled, killed, end)
        now = time.monotonic()
        if now - last_beat >= heartbeat_seconds:
            on_heartbeat()
            last_beat = now
        if not cancelled and now - last_cancel_check >= cancel_check_seconds:
            last_cancel_check = now
            if should_cancel():
                cancelled = True
                child.terminate()
        if child.term_sent_at is not None and not killed and now - child.term_sent_at > grace_seconds:
            killed = True
            child.kill()
        time.sleep(poll_seconds)


def log_tail(path: Path, lines: int = 20, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a log file (progress-bar carriage returns folded)."""
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        text = f.read().decode(errors="replace")
    text_lines = [ln.rsplit("\r", 1)[-1] for ln in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([ln for ln in text_lines if ln.strip()][-lines:])
