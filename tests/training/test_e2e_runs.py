"""End to end with real processes: the studio's web server, a separate Huey worker process on
SQLite, the core in child processes, and a websocket client receiving live metrics. The worker is
killed with SIGKILL in the middle of a run and started again: the run is marked interrupted, resumes
from its last checkpoint and completes with the same number of steps."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import websockets

from tests.live import REPO, StudioServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 120
CONFIG = {
    "model": {"preset": "tiny", "dim": 64, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "max_seq_len": 64},
    "data": {"seq_len": 32, "micro_batch_size": 2, "val_batches": 1},
    "optim": {"lr": 3e-3, "warmup_steps": 5},
    "steps": STEPS, "eval_every": 20, "ckpt_every": 20, "device": "cpu", "dtype": "fp32",
}


class Worker:
    """``manage.py run_huey`` as its own process (what a worker machine runs)."""

    def __init__(self, server: StudioServer) -> None:
        self.log = open(server.data_dir / f"worker-{time.monotonic_ns()}.log", "w")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "manage.py"), "run_huey", "--workers", "1",
                                      "--flush-locks"], env=server.env, cwd=REPO, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # noqa: ANN001, ANN201
    srv = StudioServer(tmp_path_factory.mktemp("studio-runs"), worker=False).start()
    yield srv
    srv.stop()


def wait_for(fn, what: str, timeout: float = 300.0, every: float = 0.3):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Listener(threading.Thread):
    """A websocket client following /ws/runs/<id>/ in the background, keeping every event."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.events: list[dict] = []
        self.connected = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        last = 0
        while not self.done.is_set():
            try:
                async with websockets.connect(f"{self.url}?after={last}", additional_headers=self.headers,
                                              open_timeout=20) as ws:
                    self.connected.set()
                    while not self.done.is_set():
                        try:
                            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=0.5))
                        except asyncio.TimeoutError:
                            continue
                        if msg.get("type") == "event":
                            last = msg["id"]
                            msg["received_at"] = time.time()
                            self.events.append(msg)
            except (OSError, websockets.exceptions.WebSocketException):
                await asyncio.sleep(0.5)


def test_worker_killed_mid_run_then_resumed(server):  # noqa: ANN001
    s = server.session("builder", "builder-demo-pass")
    worker = Worker(server)
    try:
        status, ds = s.request("POST", "/api/datasets/", {"corpus": "austen", "limit": 12})
        assert status == 201, ds
        status, tok_run = s.request("POST", "/api/runs/", {"kind": "tokenizer", "dataset": ds["id"],
                                                          "config": {"vocab_size": 320}})
        assert status == 201, tok_run
        tok_run = wait_for(lambda: (r := s.request("GET", f"/api/runs/{tok_run['id']}/")[1])["status"]
                           not in ("queued", "running") and r, "the tokenizer run")
        assert tok_run["status"] == "succeeded", tok_run
        tokenizer = tok_run["summary"]["tokenizer"]

        status, run = s.request("POST", "/api/runs/", {"kind": "pretrain", "name": "killed", "config": CONFIG,
                                                      "dataset": ds["id"], "tokenizer": tokenizer, "threads": 1})
        assert status == 201, run
        rid = run["id"]
        listener = Listener(server.url.replace("http", "ws") + f"/ws/runs/{rid}/",
                            {"Cookie": s.cookie_header(), "Origin": server.url})
        listener.start()
        assert listener.connected.wait(30)

        running = wait_for(lambda: (r := s.request("GET", f"/api/runs/{rid}/")[1])["current_step"] >= 25 and r,
                           "the run to pass its first checkpoint")
        assert running["status"] == "running" and running["pid"]
        child = running["pid"]
        worker.kill()
        # the core child got SIGTERM when its worker died: it checkpoints and exits, no orphan left
        wait_for(lambda: not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read().split()[2] == "Z",
                 "the orphaned core process to exit", timeout=120)
        assert s.request("GET", f"/api/runs/{rid}/")[1]["status"] == "running"  # nobody noticed yet

        worker = Worker(server)  # a worker starting marks the dead worker's run interrupted
        lost = wait_for(lambda: (r := s.request("GET", f"/api/runs/{rid}/")[1])["status"] == "interrupted" and r,
                        "the run to be marked interrupted", timeout=120)
        assert lost["error"]["code"] == "worker_lost" and lost["error"]["hint"]
        ckpt_steps = sorted(c["step"] for c in s.request("GET", f"/api/checkpoints/?run={rid}")[1]["results"])
        assert ckpt_steps and ckpt_steps[0] == 20

        status, resumed = s.request("POST", f"/api/runs/{rid}/resume/")
        assert status == 200 and resumed["status"] == "queued", resumed
        final = wait_for(lambda: (r := s.request("GET", f"/api/runs/{rid}/")[1])["status"]
                         not in ("queued", "running") and r, "the resumed run to finish")
        assert final["status"] == "succeeded", (final["error"], s.request("GET", f"/api/runs/{rid}/log/")[1]["text"])
        assert final["attempt"] == 2 and final["current_step"] == final["total_steps"] == STEPS
        assert final["summary"]["start_step"] >= 20  # continued from a checkpoint, not from scratch
        assert final["summary"]["step"] == STEPS
        log = s.request("GET", f"/api/runs/{rid}/log/?lines=5000")[1]["text"]
        assert f"at step {final['summary']['start_step']}" in log  # "resumed from … at step N"

        status, page = s.request("GET", f"/api/runs/{rid}/metrics/?kind=train&limit=1000")
        steps = [p["step"] for p in page["results"]]
        assert steps == list(range(1, STEPS + 1))  # every step once: replayed steps replaced, none missing

        # the websocket client saw metrics arrive live, the interruption and the end
        wait_for(lambda: any(e["kind"] == "run.status" and e["payload"]["status"] == "succeeded"
                             for e in listener.events), "the final status on the websocket", timeout=30)
        listener.done.set()
        streamed = {p["step"] for e in listener.events if e["kind"] == "run.metrics" for p in e["payload"]["points"]}
        assert streamed >= set(range(final["summary"]["start_step"] + 1, STEPS + 1))
        statuses = [e["payload"]["status"] for e in listener.events if e["kind"] == "run.status"]
        assert "interrupted" in statuses and statuses[-1] == "succeeded"
    finally:
        worker.stop()
