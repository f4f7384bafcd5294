"""Judgement submissions per second and latency with many concurrent annotators, against a live
studio process (``manage.py runstudio``: the web workers + Huey), on SQLite and on PostgreSQL.

The client is one asyncio loop (uvloop when installed) speaking plain HTTP/1.1 over one
keep-alive connection per annotator, so that the 50 annotators cost the shared cores little.
Two client styles are measured: ``next item`` then ``submit judgement`` (two requests per
judgement), and ``submit judgement`` with ``next: true`` (the response carries the next locked
item: one request per judgement, as the annotator page does). Every submission carries a client
token. Reference, measured in the same run with the same clients: ``GET /api/me/`` (session auth,
one indexed query) — the floor of one API request on this server.

    .venv/bin/python benchmarks/bench_labeling.py --annotators 50 --per-annotator 20
    .venv/bin/python benchmarks/bench_labeling.py --backends sqlite --web-workers 1,3

PostgreSQL: a throwaway database is created on 127.0.0.1:5432 (user root, trust auth) and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.labeling.live_helpers import check_project, setup_project  # noqa: E402
from tests.live import StudioServer  # noqa: E402

PASSWORD = "bench-annotator-pass-1"


class Client:
    """A signed-in keep-alive HTTP/1.1 connection (asyncio streams; Content-Length bodies)."""

    def __init__(self, server: StudioServer, username: str) -> None:
        session = server.session(username, PASSWORD)
        self.port = server.port
        self.head = (f"Host: 127.0.0.1:{server.port}\r\nCookie: {session.cookie_header()}\r\n"
                     f"X-CSRFToken: {session.cookie('csrftoken')}\r\nReferer: {server.url}/\r\n"
                     "Content-Type: application/json\r\nAccept: application/json\r\n")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any, float]:
        data = b"" if body is None else json.dumps(body).encode()
        raw = f"{method} {path} HTTP/1.1\r\n{self.head}Content-Length: {len(data)}\r\n\r\n".encode() + data
        t0 = time.perf_counter()
        for attempt in range(2):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.writer.write(raw)
                status, payload = await self._response()
                break
            except (OSError, asyncio.IncompleteReadError, ValueError):
                self.close()
                if attempt:
                    raise
        return status, json.loads(payload or b"null"), time.perf_counter() - t0

    async def _response(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if not size:
                    break
                body += chunk[:-2]
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def run_load(clients: list[Client], work: Any) -> tuple[float, list[float], list[str], float]:
    """Run ``work(client)`` for every client at once: (wall seconds, latencies, errors, client CPU s)."""
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    results = await asyncio.gather(*(work(c) for c in clients))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return wall, [x for lat, _ in results for x in lat], [e for _, errs in results for e in errs], cpu


def server_cpu(server: StudioServer) -> float:
    """CPU seconds used so far by the studio's process tree (all web workers and the queue)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [server.proc.pid]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo += children.get(pid, [])
    return total


def bench_backend(name: str, env: dict[str, str], annotators: int, per_annotator: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix=f"bench-labeling-{name}-") as tmp:
        server = StudioServer(Path(tmp), env=env).start()
        try:
            names = [f"bench{i}" for i in range(annotators)]
            items = annotators * per_annotator * 2
            pid = setup_project(server, annotators=names, password=PASSWORD, items=items, name=f"bench {name}",
                                overlap=1, lock_ttl_seconds=600)
            with ThreadPoolExecutor(8) as pool:  # signing in hashes passwords on the server: once, before
                clients = list(pool.map(lambda n: Client(server, n), names))

            async def reference(c: Client) -> tuple[list[float], list[str]]:
                lat, errs = [], []
                for _ in range(per_annotator * 2):
                    status, _, dt = await c.request("GET", "/api/me/")
                    lat.append(dt)
                    if status != 200:
                        errs.append(f"me {status}")
                return lat, errs

            async def label(c: Client) -> tuple[list[float], list[str]]:
                lat, errs = [], []
                for _ in range(per_annotator):
                    status, a, _ = await c.request("POST", f"/api/labeling/projects/{pid}/next/")
                    if status != 200 or not a.get("assignment"):
                        errs.append(f"next {status} {a}")
                        break
                    status, j, dt = await c.request("POST", "/api/labeling/judgements/", {
                        "assignment": a["assignment"], "choice": "a", "client_token": uuid.uuid4().hex,
                        "time_on_task_ms": 4000})
                    lat.append(dt)
                    if status != 201:
                        errs.append(f"submit {status} {j}")
                return lat, errs

            async def label_and_next(c: Client) -> tuple[list[float], list[str]]:
                lat, errs = [], []
                status, a, _ = await c.request("POST", f"/api/labeling/projects/{pid}/next/")
                for n in range(per_annotator):
                    if status != 200 or not a.get("assignment"):
                        errs.append(f"next {status} {a}")
                        break
                    status, j, dt = await c.request("POST", "/api/labeling/judgements/", {
                        "assignment": a["assignment"], "choice": "b", "client_token": uuid.uuid4().hex,
                        "time_on_task_ms": 4000, "next": n < per_annotator - 1})
                    lat.append(dt)
                    if status != 201:
                        errs.append(f"submit {status} {j}")
                        break
                    status, a = 200, j.get("next") or {}
                return lat, errs

            async def measure() -> list[tuple[float, list[float], list[str], float, float]]:
                out = []
                for work in (reference, label, label_and_next):
                    s0 = server_cpu(server)
                    wall, lat, errs, cpu = await run_load(clients, work)
                    out.append((wall, lat, errs, cpu, server_cpu(server) - s0))
                for c in clients:
                    c.close()
                return out

            load0 = os.getloadavg()[0]
            (ref_wall, ref_lat, ref_err, _, ref_scpu), *styles = run_async(measure())
            load1 = os.getloadavg()[0]
            err = [e for s in styles for e in s[2]]
            state = check_project(server, pid)
            if err or ref_err:  # the server's own messages, without the access log
                lines = [line for line in server.logs().splitlines() if '" 20' not in line]
                print("\n".join(lines[-200:]), file=sys.stderr)
        finally:
            server.stop()
    assert not err and not ref_err, (err[:3], ref_err[:3])
    assert state["judgements"] == 2 * annotators * per_annotator and state["duplicate_pairs"] == 0
    ref = {"ref_per_s": len(ref_lat) / ref_wall, "ref_p99_ms": 1000 * percentile(ref_lat, 99),
           "load": f"{load0:.1f}→{load1:.1f}"}
    rows = []
    for style, (wall, lat, _, ccpu, scpu) in zip(("next + submit", "submit with next"), styles):
        rows.append({"backend": name, "workers": env.get("STUDIO_WEB_WORKERS", "default"), "style": style,
                     "submissions": len(lat), "submit_per_s": len(lat) / wall,
                     "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * percentile(lat, 95),
                     "p99_ms": 1000 * percentile(lat, 99), "client_cpu_ms": 1000 * ccpu / len(lat),
                     "server_cpu_ms": 1000 * scpu / len(lat), **ref})
    return rows


def run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--per-annotator", type=int, default=20)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--web-workers", default="", help="comma-separated STUDIO_WEB_WORKERS values to compare")
    parser.add_argument("--server", default="", help="STUDIO_WEB_SERVER (uvicorn or daphne); default: the studio's")
    args = parser.parse_args()
    extra = {"STUDIO_WEB_SERVER": args.server} if args.server else {}
    rows = []
    for workers in (args.web_workers.split(",") if args.web_workers else [""]):
        wenv = {**extra, **({"STUDIO_WEB_WORKERS": workers} if workers else {})}
        for backend in args.backends.split(","):
            if backend == "sqlite":
                rows += bench_backend("sqlite", wenv, args.annotators, args.per_annotator)
            elif backend == "postgres":
                db = f"labbench_{os.getpid()}"
                subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "root", db], check=True)
                try:
                    rows += bench_backend("postgres", {**wenv, "DATABASE_URL": f"postgres://root@127.0.0.1:5432/{db}"},
                                          args.annotators, args.per_annotator)
                finally:
                    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "root", "--if-exists", db], check=False)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            print("measured:", json.dumps(rows[-2:]), flush=True)  # kept if a later run fails
    print(f"\n{args.annotators} concurrent annotators, {args.per_annotator} judgements each per style "
          "(latency of the submission request; CPU per submission: server = all studio processes)")
    print("| backend | web workers | client style | submissions/s | p50 | p95 | p99 | server CPU/sub | client CPU/sub "
          "| reference GET /api/me/ req/s (p99) | submissions/s vs reference | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['workers']} | {r['style']} | {r['submit_per_s']:.0f} | {r['p50_ms']:.0f} ms | "
              f"{r['p95_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['server_cpu_ms']:.1f} ms | "
              f"{r['client_cpu_ms']:.2f} ms | {r['ref_per_s']:.0f} ({r['ref_p99_ms']:.0f} ms) | "
              f"x{r['submit_per_s'] / r['ref_per_s']:.2f} | {r['load']} |")


if __name__ == "__main__":
    main()
