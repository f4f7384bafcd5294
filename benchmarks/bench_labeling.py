"""Judgement submissions per second and latency with many concurrent annotators, against a live
studio process (``manage.py runstudio``: the web workers + Huey), on SQLite and on PostgreSQL.

The client is one asyncio loop (uvloop when installed) speaking plain HTTP/1.1 over one
keep-alive connection per annotator, so that the 50 annotators cost the shared cores little.
Every submission carries a client token. Two measurements:

* **saturation** (closed loop): every annotator sends its next request as soon as the previous
  one is answered, with no think time: the most submissions per second the studio manages, and the
  latency at that load. By Little's law the mean latency is then annotators / throughput (50
  annotators at 200/s wait 250 ms on average), whatever the server does per request. Two client
  styles: ``next item`` then ``submit judgement`` (two requests per judgement), and ``submit
  judgement`` with ``next: true`` (the response carries the next locked item: one request per
  judgement, as the annotator page does).
* **paced** (open loop, like wrk2): the annotators together send ``--rate`` submissions per second
  (with ``next: true``), each on its own fixed schedule; latency is measured from the *scheduled*
  send time, so that a slow answer which delays an annotator's next request counts against the
  server (no coordinated omission). Reports the rate achieved and the latency at the target rate.

The annotators sign in with sessions (``--auth session``, the annotator page: cookie and CSRF
token) or label as programs with API tokens (``--auth token``: ``Authorization: Token <key>``,
one token per annotator made as the studio's token API makes them). Reference, measured in the
same run with the same clients and the same authentication: ``GET /api/me/`` (one indexed query,
through Django and DRF) — one ordinary API request on this server. Server CPU per
submission is the CPU time of the studio's whole process tree (web workers, queue) read from
``/proc``. Afterwards every run checks that the project holds exactly the judgements sent and no
(item, annotator) pair twice.

    .venv/bin/python benchmarks/bench_labeling.py --annotators 50 --per-annotator 20 --rate 200
    .venv/bin/python benchmarks/bench_labeling.py --backends sqlite --web-workers 1,3
    .venv/bin/python benchmarks/bench_labeling.py --auth token --annotators 20 --per-annotator 5 --rate 0

PostgreSQL: a throwaway database is created on 127.0.0.1:5432 (user root, trust auth) and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.labeling.live_helpers import api_tokens, check_project, setup_project, signed_in_sessions  # noqa: E402
from tests.live import StudioServer, throwaway_postgres  # noqa: E402

PASSWORD = "bench-annotator-pass-1"


class BenchServer(StudioServer):
    """The live studio; its setup commands (migrate, the demo builder account, the project, the
    sessions, the final check) run in the embedded DEBUG mode, which the demo accounts need: only the
    measured server itself gets ``--production`` settings."""

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        if self.env.get("DEBUG") != "0":
            return super().manage(*args)
        env, self.env = self.env, {**self.env, "DEBUG": "1"}
        try:
            return super().manage(*args)
        finally:
            self.env = env


class Client:
    """A signed-in keep-alive HTTP/1.1 connection (asyncio streams; Content-Length bodies): a
    session (cookie and CSRF token, as the annotator page sends them) or an API token."""

    def __init__(self, server: StudioServer, *, session_key: str | None = None, token: str | None = None) -> None:
        if (session_key is None) == (token is None):
            raise ValueError("give a session key or an API token")
        if token is not None:
            auth = f"Authorization: Token {token}\r\n"
        else:
            csrf = uuid.uuid4().hex  # a CSRF secret (32 characters): the cookie and the header agree
            auth = (f"Cookie: sessionid={session_key}; csrftoken={csrf}\r\nX-CSRFToken: {csrf}\r\n"
                    f"Referer: {server.url}/\r\n")
        self.port = server.port
        self.head = (f"Host: 127.0.0.1:{server.port}\r\n{auth}"
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


def database_cpu(dbname: str) -> float:
    """CPU seconds used so far by the PostgreSQL backend processes serving ``dbname`` (those of the
    studio's open connections; SQLite's work runs inside the studio's own processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
                if title.startswith(b"postgres: ") and f" {dbname} ".encode() in title:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
            except OSError:
                continue
    return total


def bench_backend(name: str, env: dict[str, str], annotators: int, per_annotator: int, rate: float,
                  paced_seconds: float, auth: str = "session") -> list[dict[str, Any]]:
    dbname = env["DATABASE_URL"].rsplit("/", 1)[-1] if env.get("DATABASE_URL") else ""
    with tempfile.TemporaryDirectory(prefix=f"bench-labeling-{name}-") as tmp:
        server = BenchServer(Path(tmp), env=env).start()
        try:
            names = [f"bench{i}" for i in range(annotators)]
            paced_each = max(1, round(rate * paced_seconds / annotators)) if rate else 0
            items = annotators * (per_annotator * 2 + paced_each) + annotators
            pid = setup_project(server, annotators=names, password=PASSWORD, items=items, name=f"bench {name}",
                                overlap=1, lock_ttl_seconds=600)
            if auth == "token":
                keys = api_tokens(server, names)
                clients = [Client(server, token=keys[n]) for n in names]
            else:
                sessions = signed_in_sessions(server, names)
                clients = [Client(server, session_key=sessions[n]) for n in names]

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

            async def paced(c: Client, index: int, start: float) -> tuple[list[float], list[str]]:
                """``paced_each`` submissions on a fixed schedule (this annotator's share of ``rate``);
                latency from the scheduled send time."""
                lat, errs = [], []
                interval = annotators / rate
                first = start + index / rate  # the annotators' schedules interleave evenly
                status, a, _ = await c.request("POST", f"/api/labeling/projects/{pid}/next/")
                for n in range(paced_each):
                    if status != 200 or not a.get("assignment"):
                        errs.append(f"next {status} {a}")
                        break
                    due = first + n * interval
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    status, j, _ = await c.request("POST", "/api/labeling/judgements/", {
                        "assignment": a["assignment"], "choice": "tie", "client_token": uuid.uuid4().hex,
                        "time_on_task_ms": 4000, "next": n < paced_each - 1})
                    lat.append(time.perf_counter() - due)
                    if status != 201:
                        errs.append(f"submit {status} {j}")
                        break
                    status, a = 200, j.get("next") or {}
                return lat, errs

            async def measure() -> list[tuple[float, list[float], list[str], float, float, float | None, str]]:
                out = []
                works = [reference, label, label_and_next]
                if paced_each:
                    start: list[float] = []

                    async def paced_work(c: Client) -> tuple[list[float], list[str]]:
                        if not start:  # one second after the run begins: every annotator has its first item
                            start.append(time.perf_counter() + 1.0)
                        return await paced(c, clients.index(c), start[0])

                    works.append(paced_work)
                for work in works:
                    load = os.getloadavg()[0]
                    s0, d0 = server_cpu(server), database_cpu(dbname) if dbname else 0.0
                    wall, lat, errs, cpu = await run_load(clients, work)
                    if work is works[-1] and paced_each:
                        wall -= 1.0  # the paced run starts one second in
                    db = (database_cpu(dbname) - d0) if dbname else None
                    out.append((wall, lat, errs, cpu, server_cpu(server) - s0, db, f"{load:.1f}→{os.getloadavg()[0]:.1f}"))
                for c in clients:
                    c.close()
                return out

            (ref_wall, ref_lat, ref_err, *_), *styles = run_async(measure())
            err = [e for s in styles for e in s[2]]
            state = check_project(server, pid)
            if err or ref_err:  # the server's own messages, without the access log
                lines = [line for line in server.logs().splitlines() if '" 20' not in line]
                print("\n".join(lines[-200:]), file=sys.stderr)
        finally:
            server.stop()
    assert not err and not ref_err, (err[:3], ref_err[:3])
    sent = sum(len(st[1]) for st in styles)
    assert state["judgements"] == sent and state["duplicate_pairs"] == 0, (state["judgements"], sent)
    ref = {"ref_per_s": len(ref_lat) / ref_wall, "ref_p99_ms": 1000 * percentile(ref_lat, 99)}
    rows = []
    modes = [("saturation", "next + submit"), ("saturation", "submit with next")]
    if paced_each:
        modes.append((f"paced {rate:.0f}/s", "submit with next"))
    for (mode, style), (wall, lat, _, ccpu, scpu, dcpu, load) in zip(modes, styles):
        rows.append({"backend": name, "auth": auth, "workers": env.get("STUDIO_WEB_WORKERS", "default"), "mode": mode,
                     "debug": "off" if env.get("DEBUG") == "0" else "on",
                     "style": style, "submissions": len(lat), "submit_per_s": len(lat) / wall,
                     "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * percentile(lat, 95),
                     "p99_ms": 1000 * percentile(lat, 99), "client_cpu_ms": 1000 * ccpu / len(lat),
                     "server_cpu_ms": 1000 * scpu / len(lat),
                     "db_cpu_ms": None if dcpu is None else 1000 * dcpu / len(lat), "load": load, **ref})
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
    parser.add_argument("--rate", type=float, default=200.0,
                        help="paced run: submissions per second from all annotators together (0: no paced run)")
    parser.add_argument("--paced-seconds", type=float, default=15.0, help="paced run: how long the schedule lasts")
    parser.add_argument("--auth", choices=("session", "token"), default="session",
                        help="how the annotators authenticate: a signed-in session (the annotator page) or an "
                             "API token (a program labeling through the API)")
    parser.add_argument("--production", action="store_true",
                        help="run the studio with production settings (DEBUG=0: no query log, no debug pages)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the studio, e.g. STUDIO_WEB_THREADS=4 (repeatable)")
    args = parser.parse_args()
    extra = {"STUDIO_WEB_SERVER": args.server} if args.server else {}
    if args.production:
        extra.update({"DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "127.0.0.1,localhost",
                      "SECURE_SSL_REDIRECT": "0"})
    extra.update(dict(e.split("=", 1) for e in args.env))
    print(f"load average at the start: {os.getloadavg()[0]:.2f} (2 cores shared with other work)", flush=True)
    rows = []
    for workers in (args.web_workers.split(",") if args.web_workers else [""]):
        wenv = {**extra, **({"STUDIO_WEB_WORKERS": workers} if workers else {})}
        for backend in args.backends.split(","):
            if backend == "sqlite":
                rows += bench_backend("sqlite", wenv, args.annotators, args.per_annotator, args.rate, args.paced_seconds,
                                      args.auth)
            elif backend == "postgres":
                with throwaway_postgres("labbench") as url:
                    rows += bench_backend("postgres", {**wenv, "DATABASE_URL": url},
                                          args.annotators, args.per_annotator, args.rate, args.paced_seconds, args.auth)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            print("measured:", json.dumps(rows[-3:]), flush=True)  # kept if a later run fails
    print(f"\n{args.annotators} concurrent annotators; saturation: {args.per_annotator} judgements each per style, "
          f"paced: {args.rate:.0f} submissions/s for {args.paced_seconds:.0f} s (latency of the submission request, "
          "paced: from its scheduled send time; CPU per submission: server = all studio processes)")
    print("| backend | auth | web workers | DEBUG | mode | client style | submissions/s | p50 | p95 | p99 "
          "| server CPU/sub | PostgreSQL CPU/sub | client CPU/sub | reference GET /api/me/ req/s (p99) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['auth']} | {r['workers']} | {r['debug']} | {r['mode']} | {r['style']} | "
              f"{r['submit_per_s']:.0f} | "
              f"{r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['server_cpu_ms']:.1f} ms | "
              f"{'—' if r['db_cpu_ms'] is None else format(r['db_cpu_ms'], '.1f') + ' ms'} | "
              f"{r['client_cpu_ms']:.2f} ms | {r['ref_per_s']:.0f} ({r['ref_p99_ms']:.0f} ms) | {r['load']} |")


if __name__ == "__main__":
    main()
