"""Runs in the browser: what the studio's plumbing costs, measured against the core alone.

Three parts (``--part all`` runs them in order):

``latency``   metric-to-browser latency: a tiny pretraining run in the real studio (web server,
              Huey worker, core child); a websocket client follows ``/ws/runs/<id>/`` and
              compares the time each point was emitted by the core with the time it arrived.
              Target: p95 < 500 ms.
``overhead``  step-time overhead of streaming: the same pretraining config run (a) by the
              studio (events to a JSONL file, tailed, stored and published while it trains) and
              (b) by the bare CLI without ``--events``; interleaved repeats, same threads.
              Target: < 2 %.
``chat``      chat time to first token and tokens/s through the model-serving worker (what the
              websocket consumer uses) against calling the core's generation directly in this
              process, same model (SmolLM2-135M-Instruct), prompt, greedy decoding and threads.
              Target: overhead < 10 %.

    python benchmarks/bench_runs.py --part all
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY = {
    "model": {"preset": "tiny", "dim": 128, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "max_seq_len": 128},
    "data": {"seq_len": 64, "micro_batch_size": 4, "val_batches": 2},
    "optim": {"lr": 3e-3, "warmup_steps": 10},
    "eval_every": 50, "ckpt_every": 0, "device": "cpu", "dtype": "fp32",
}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def wait_run(session, rid: int, timeout: float = 900, every: float = 0.3) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = session.request("GET", f"/api/runs/{rid}/")[1]
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(every)
    raise TimeoutError(f"run {rid} did not finish")


def start_studio(tmp: Path):  # noqa: ANN201
    from tests.live import StudioServer

    server = StudioServer(tmp).start()
    s = server.session("builder", "builder-demo-pass")
    status, ds = s.request("POST", "/api/datasets/", {"corpus": "austen", "limit": 40})
    assert status == 201, ds
    status, run = s.request("POST", "/api/runs/", {"kind": "tokenizer", "dataset": ds["id"], "config": {"vocab_size": 1024}})
    assert status == 201, run
    run = wait_run(s, run["id"])
    assert run["status"] == "succeeded", run
    return server, s, ds["id"], run["summary"]["tokenizer"]


def studio_run(server, s, ds: int, tok: int, steps: int, threads: int, listen: bool,
               poll: float = 0.3) -> tuple[dict, list[float]]:  # noqa: ANN001
    """One pretraining run through the studio; returns its final record and the metric latencies (s)."""
    import websockets

    latencies: list[float] = []
    stop = threading.Event()
    ready = threading.Event()
    rid_box: list[int] = []

    async def follow() -> None:
        while not rid_box:
            await asyncio.sleep(0.01)
        url = server.url.replace("http", "ws") + f"/ws/runs/{rid_box[0]}/?after=0"
        async with websockets.connect(url, additional_headers={"Cookie": s.cookie_header(), "Origin": server.url}) as ws:
            ready.set()
            while not stop.is_set():
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=0.5))
                except asyncio.TimeoutError:
                    continue
                now = time.time()
                if msg.get("kind") == "run.metrics":
                    latencies.extend(now - p["time"] for p in msg["payload"]["points"] if p["kind"] == "train")

    thread = threading.Thread(target=lambda: asyncio.run(follow()), daemon=True) if listen else None
    if thread:
        thread.start()
    status, run = s.request("POST", "/api/runs/", {"kind": "pretrain", "config": {**TINY, "steps": steps},
                                                  "dataset": ds, "tokenizer": tok, "threads": threads})
    assert status == 201, run
    rid_box.append(run["id"])
    run = wait_run(s, run["id"], every=poll)  # a browser page polls the log every 3 s
    stop.set()
    if thread:
        thread.join(10)
    assert run["status"] == "succeeded", run["error"]
    return run, latencies


def part_latency(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server, s, ds, tok = start_studio(Path(tmp))
        try:
            run, lat = studio_run(server, s, ds, tok, args.steps, args.threads, listen=True)
        finally:
            server.stop()
    # points that arrived as history replay (the client connected after they were emitted) are not live
    lat = [x for x in lat if x >= 0]
    print(f"metric-to-browser latency over {len(lat)} points ({args.steps} steps, "
          f"{run['summary'].get('elapsed_time', 0) / max(args.steps, 1) * 1000:.0f} ms/step): "
          f"p50 {percentile(lat, 0.5) * 1000:.0f} ms, p95 {percentile(lat, 0.95) * 1000:.0f} ms, "
          f"max {max(lat) * 1000:.0f} ms (target p95 < 500 ms)")


def cli_run(shards: str, tok_dir: str, out: Path, steps: int, threads: int, events: bool = False) -> tuple[float, float]:
    """The bare CLI (optionally with ``--events``): (loop's elapsed_time, CPU seconds of the process)."""
    import resource

    from training.core.config import ModelConfig
    from training.launch import child_env, core_command

    cfg = json.loads(json.dumps(TINY))
    model = {**ModelConfig.preset("tiny").to_dict(), **{k: v for k, v in cfg["model"].items() if k != "preset"}}
    model["vocab_size"] = json.loads((Path(shards) / "manifest.json").read_text())["vocab_size"]
    cfg.update(model=model, steps=steps, out_dir=str(out), tokenizer_dir=tok_dir)
    cfg["data"]["dataset_dir"] = shards
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(cfg))
    extra = ["--events", str(out.parent / f"{out.name}.events.jsonl")] if events else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(core_command(["pretrain", "--config", str(path), "--quiet", *extra]),
                          env=child_env(threads=threads), cwd=REPO, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    last = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")][-1]
    return float(json.loads(last)["elapsed_time"]), cpu


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def part_overhead(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server, s, ds, tok = start_studio(Path(tmp))
        try:
            studio_times, studio_side_cpu = [], []
            plain, with_events = [], []
            studio_run(server, s, ds, tok, 20, args.threads, listen=False)  # prepares the shards
            shards = str(Path(tmp) / "shards" / f"d{ds}-t{tok}")
            tok_dir = s.request("GET", f"/api/tokenizers/{tok}/")[1]["path"]
            helpers = [int(x) for x in subprocess.run(["ps", "-o", "pid=", "--ppid", str(server.proc.pid)],
                                                       capture_output=True, text=True).stdout.split()]
            for i in range(args.repeats):
                plain.append(cli_run(shards, tok_dir, Path(tmp) / f"cli{i}", args.steps, args.threads))
                with_events.append(cli_run(shards, tok_dir, Path(tmp) / f"ev{i}", args.steps, args.threads, events=True))
                cpu0 = sum(_cpu_seconds(p) for p in helpers)
                run, _ = studio_run(server, s, ds, tok, args.steps, args.threads, listen=True, poll=3.0)
                studio_side_cpu.append(sum(_cpu_seconds(p) for p in helpers) - cpu0)
                studio_times.append(float(run["summary"]["elapsed_time"]))
        finally:
            server.stop()
    med = statistics.median
    c, e, st = med(t for t, _ in plain), med(t for t, _ in with_events), med(studio_times)
    cc, ce = med(x for _, x in plain), med(x for _, x in with_events)
    print(f"{args.steps} steps, {args.threads} thread(s), {args.repeats} interleaved repeats (medians)")
    print(f"  bare CLI, no events:        {c:.3f} s wall, {cc:.3f} CPU-s  {[round(t, 2) for t, _ in plain]}")
    print(f"  bare CLI, --events JSONL:   {e:.3f} s wall, {ce:.3f} CPU-s  {[round(t, 2) for t, _ in with_events]}")
    print(f"  studio (events tailed, stored, published, websocket client): {st:.3f} s wall "
          f"{[round(t, 2) for t in studio_times]}")
    print(f"  in-process cost of reporting (CPU, --events vs none): {100 * (ce / cc - 1):+.2f} %")
    print(f"  wall-clock overhead, studio vs bare CLI: {100 * (st / c - 1):+.2f} % (target < 2 %)")
    print(f"  studio side (web + worker processes): {med(studio_side_cpu):.2f} CPU-s per run of {st:.1f} s "
          f"= {100 * med(studio_side_cpu) / st:.1f} % of one core")


def part_chat(args: argparse.Namespace) -> None:
    import torch

    from training.core.interop.smollm2 import load_smollm2
    from training.serving import ServingClient, stream_chat

    cache = str(REPO / "var" / "cache")
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    prompt = [{"role": "user", "content": "Write a short paragraph about the sea."}]
    n_tokens = args.chat_tokens
    model, tok = load_smollm2(cache)

    def direct() -> tuple[float, float, int]:
        t0 = time.perf_counter()
        stamps: list[float] = []
        res = stream_chat(model, tok, prompt, lambda piece: stamps.append(time.perf_counter()), lambda: False,
                          max_new_tokens=n_tokens, temperature=0.0)
        n = res["stats"]["tokens"]
        ttft = res["stats"]["ttft_s"]
        return ttft, (n - 1) / (res["stats"]["total_s"] - ttft), n

    env = {**os.environ, "STUDIO_SERVE_THREADS": str(threads), "STUDIO_SERVE_CACHE": cache}
    client = ServingClient(env=env)
    inside: list[float] = []

    def served() -> tuple[float, float, int]:
        done = threading.Event()
        stamps: list[float] = []
        final: list[dict] = []

        def handler(msg: dict) -> None:
            if msg["type"] == "token":
                stamps.append(time.perf_counter())
            elif msg["type"] in ("done", "error"):
                final.append(msg)
                done.set()

        t0 = time.perf_counter()
        client.generate({"source": "smollm2", "messages": prompt, "max_new_tokens": n_tokens, "temperature": 0.0}, handler)
        done.wait(600)
        assert final and final[0]["type"] == "done", final
        n = final[0]["stats"]["tokens"]
        ttft = final[0]["stats"]["ttft_s"] if not stamps else stamps[0] - t0
        end = stamps[-1] - t0 if stamps else time.perf_counter() - t0
        inside.append(final[0]["stats"]["tokens_per_s"])
        return ttft, (n - 1) / (end - ttft), n

    try:
        served()  # load the model in the worker (not measured)
        direct()
        d, w = [], []
        for _ in range(args.repeats):
            d.append(direct())
            w.append(served())
    finally:
        client.close()
    dt, dtps = min(x[0] for x in d), max(x[1] for x in d)
    wt, wtps = min(x[0] for x in w), max(x[1] for x in w)
    print(f"SmolLM2-135M-Instruct, greedy, {d[0][2]} new tokens, {threads} threads, best of {args.repeats}")
    print(f"  core directly:           TTFT {dt * 1000:.0f} ms, {dtps:.1f} tokens/s")
    print(f"  serving worker (client): TTFT {wt * 1000:.0f} ms, {wtps:.1f} tokens/s "
          f"(inside the worker: {max(inside):.1f} tokens/s)")
    print(f"  all runs (TTFT s, tokens/s): direct {[(round(a, 3), round(b, 1)) for a, b, _ in d]}, "
          f"served {[(round(a, 3), round(b, 1)) for a, b, _ in w]}")
    print(f"  overhead: TTFT {100 * (wt / dt - 1):+.1f} %, tokens/s {100 * (1 - wtps / dtps):+.1f} % slower "
          f"(target < 10 %)")


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["latency", "overhead", "chat", "all"], default="all")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chat-tokens", type=int, default=64)
    args = p.parse_args()
    for part in (["latency", "overhead", "chat"] if args.part == "all" else [args.part]):
        print(f"== {part}")
        {"latency": part_latency, "overhead": part_overhead, "chat": part_chat}[part](args)


if __name__ == "__main__":
    main()
