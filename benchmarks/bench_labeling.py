"""Judgement submissions per second and latency with many concurrent annotators, against a live
studio process (``manage.py runstudio``: Daphne + Huey), on SQLite and on PostgreSQL.

Each annotator is a thread with a persistent HTTP connection. Two client styles are measured:
``next item`` then ``submit judgement`` (two requests per judgement), and ``submit judgement``
with ``next: true`` (the response carries the next locked item: one request per judgement, as
the annotator page does). Every submission carries a client token. Reference, measured in the same run with the same clients:
``GET /api/me/`` (session auth, one indexed query) — the floor of one API request on this server.

    .venv/bin/python benchmarks/bench_labeling.py --annotators 50 --per-annotator 20
    .venv/bin/python benchmarks/bench_labeling.py --backends sqlite

PostgreSQL: a throwaway database is created on 127.0.0.1:5432 (user root, trust auth) and dropped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.labeling.live_helpers import check_project, setup_project  # noqa: E402
from tests.live import StudioServer  # noqa: E402

PASSWORD = "bench-annotator-pass-1"


class Client:
    """A signed-in keep-alive HTTP connection."""

    def __init__(self, server: StudioServer, username: str) -> None:
        session = server.session(username, PASSWORD)
        self.headers = {"Cookie": session.cookie_header(), "X-CSRFToken": session.cookie("csrftoken"),
                        "Referer": server.url + "/", "Content-Type": "application/json", "Accept": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any, float]:
        data = None if body is None else json.dumps(body)
        t0 = time.perf_counter()
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                resp = self.conn.getresponse()
                payload = resp.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                if attempt:
                    raise
        return resp.status, json.loads(payload or b"null"), time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_load(clients: list[Client], work: Any) -> tuple[float, list[float], list[str]]:
    barrier = threading.Barrier(len(clients) + 1)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def target(c: Client) -> None:
        barrier.wait()
        mine, errs = work(c)
        with lock:
            latencies.extend(mine)
            errors.extend(errs)

    threads = [threading.Thread(target=target, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies, errors


def bench_backend(name: str, env: dict[str, str], annotators: int, per_annotator: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"bench-labeling-{name}-") as tmp:
        server = StudioServer(Path(tmp), env=env).start()
        try:
            names = [f"bench{i}" for i in range(annotators)]
            items = annotators * per_annotator * 2
            pid = setup_project(server, annotators=names, password=PASSWORD, items=items, name=f"bench {name}",
                                overlap=1, lock_ttl_seconds=600)
            clients = [Client(server, n) for n in names]

            def reference(c: Client) -> tuple[list[float], list[str]]:
                lat, errs = [], []
                for _ in range(per_annotator * 2):
                    status, _, dt = c.request("GET", "/api/me/")
                    lat.append(dt)
                    if status != 200:
                        errs.append(f"me {status}")
                return lat, errs

            def label(c: Client) -> tuple[list[float], list[str]]:
                lat, errs = [], []
                for _ in range(per_annotator):
                    status, a, _ = c.request("POST", f"/api/labeling/projects/{pid}/next/")
                    if status != 200 or not a.get("assignment"):
                        errs.append(f"next {status} {a}")
                        break
                    status, j, dt = c.request("POST", "/api/labeling/judgements/", {
                        "assignment": a["assignment"], "choice": "a", "client_token": uuid.uuid4().hex,
                        "time_on_task_ms": 4000})
                    lat.append(dt)
                    if status != 201:
                        errs.append(f"submit {status} {j}")
                return lat, errs

            def label_and_next(c: Client) -> tuple[list[float], list[str]]:
                lat, errs = [], []
                status, a, _ = c.request("POST", f"/api/labeling/projects/{pid}/next/")
                for n in range(per_annotator):
                    if status != 200 or not a.get("assignment"):
                        errs.append(f"next {status} {a}")
                        break
                    status, j, dt = c.request("POST", "/api/labeling/judgements/", {
                        "assignment": a["assignment"], "choice": "b", "client_token": uuid.uuid4().hex,
                        "time_on_task_ms": 4000, "next": n < per_annotator - 1})
                    lat.append(dt)
                    if status != 201:
                        errs.append(f"submit {status} {j}")
                        break
                    status, a = 200, j.get("next") or {}
                return lat, errs

            ref_wall, ref_lat, ref_err = run_load(clients, reference)
            wall, lat, err = run_load(clients, label)
            wall1, lat1, err1 = run_load(clients, label_and_next)
            err += err1
            state = check_project(server, pid)
            if err or ref_err:  # the server's own messages, without the access log
                lines = [line for line in server.logs().splitlines() if '" 20' not in line]
                print("\n".join(lines[-200:]), file=sys.stderr)
        finally:
            server.stop()
    assert not err and not ref_err, (err[:3], ref_err[:3])
    assert state["judgements"] == 2 * annotators * per_annotator and state["duplicate_pairs"] == 0
    ref = {"ref_per_s": len(ref_lat) / ref_wall, "ref_p99_ms": 1000 * percentile(ref_lat, 99)}

    def row(style: str, lat: list[float], wall: float) -> dict[str, Any]:
        return {"backend": name, "style": style, "submissions": len(lat), "submit_per_s": len(lat) / wall,
                "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * percentile(lat, 95),
                "p99_ms": 1000 * percentile(lat, 99), **ref}

    return [row("next + submit", lat, wall), row("submit with next", lat1, wall1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--per-annotator", type=int, default=20)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    rows = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            rows += bench_backend("sqlite", {}, args.annotators, args.per_annotator)
            print("measured:", json.dumps(rows[-2:]), flush=True)  # kept if a later backend fails
        elif backend == "postgres":
            db = f"labbench_{os.getpid()}"
            subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "root", db], check=True)
            try:
                rows += bench_backend("postgres", {"DATABASE_URL": f"postgres://root@127.0.0.1:5432/{db}"},
                                      args.annotators, args.per_annotator)
            finally:
                subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "root", "--if-exists", db], check=False)
        else:
            raise SystemExit(f"unknown backend {backend!r}")
    print(f"\n{args.annotators} concurrent annotators, {args.per_annotator} judgements each per style "
          "(latency of the submission request)")
    print("| backend | client style | submissions/s | p50 | p95 | p99 | reference GET /api/me/ req/s (p99) "
          "| submissions/s vs reference |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['style']} | {r['submit_per_s']:.0f} | {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | "
              f"{r['p99_ms']:.0f} ms | {r['ref_per_s']:.0f} ({r['ref_p99_ms']:.0f} ms) | "
              f"x{r['submit_per_s'] / r['ref_per_s']:.2f} |")


if __name__ == "__main__":
    main()
