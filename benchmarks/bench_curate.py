"""Throughput of the default curation recipe in MB/s on the built-in corpora, 1 vs 2 worker processes.

The corpus mixes the built-in real corpora (Austen, Brown, King James Bible, Python docs,
chatterbot), interleaved, up to ``--mb`` megabytes of text, written as one document JSONL file.
Each run is the full recipe runner (:func:`training.core.curate.runner.run_recipe`: shards,
checkpoints, dedup indexes on disk, output shards, manifest, datasheet). The reference is the
same run in one process, measured in the same run of this script. Prints per-step time and
removals of the parallel run, and the peak resident memory of each run's main process.

Usage: ``python benchmarks/bench_curate.py [--mb 8] [--workers 2] [--batch-size 64] [--shard-docs 200]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

from training.core import corpora
from training.core.curate import default_recipe
from training.core.curate.runner import run_recipe


def load_mix(limit_mb: float) -> list[dict]:
    streams = [corpora.iter_documents(name) for name in ("austen", "brown", "kjv", "python-docs", "chatterbot")]
    docs: list[dict] = []
    size = 0
    for doc in itertools.chain.from_iterable(itertools.zip_longest(*streams)):
        if doc is None:
            continue
        docs.append(doc)
        size += len(doc["text"].encode())
        if size >= limit_mb * 1e6:
            break
    return docs


def run(inputs: list[str], workers: int, batch_size: int, shard_docs: int) -> tuple[float, dict, float]:
    """(seconds, report, peak RSS MiB of the main process during the run) of one runner run."""
    import threading

    def rss() -> int:  # resident bytes of this process (Linux)
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    peak = [rss()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_recipe(inputs, default_recipe(), Path(tmp) / "v", workers=workers, batch_size=batch_size,
                   shard_docs=shard_docs)
        seconds = time.perf_counter() - t0
        report = json.loads((Path(tmp) / "v" / "report.json").read_text())
    done.set()
    sampler.join()
    return seconds, report, peak[0] / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-docs", type=int, default=200)
    args = ap.parse_args()
    docs = load_mix(args.mb)
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    print(f"corpus: {len(docs)} documents, {mb:.2f} MB from austen/brown/kjv/python-docs/chatterbot; "
          f"cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mix.jsonl"
        src.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        small = Path(tmp) / "small.jsonl"
        small.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs[:20]), encoding="utf-8")
        run([str(small)], 1, args.batch_size, args.shard_docs)  # load the language and profanity models once
        ref_s, _, ref_mem = run([str(src)], 1, args.batch_size, args.shard_docs)
        par_s, report, par_mem = run([str(src)], args.workers, args.batch_size, args.shard_docs)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print("| run | seconds | MB/s | docs/s | speed-up | peak RSS of the main process (MiB) |")
    print("|---|---|---|---|---|---|")
    print(f"| 1 process | {ref_s:.1f} | {mb / ref_s:.3f} | {len(docs) / ref_s:.0f} | x1.00 | {ref_mem:.0f} |")
    print(f"| {args.workers} worker processes | {par_s:.1f} | {mb / par_s:.3f} | {len(docs) / par_s:.0f} | "
          f"x{ref_s / par_s:.2f} | {par_mem:.0f} |")
    print(f"\nkept {report['docs_out']} of {report['docs_in']} documents, "
          f"{report['chars_out'] / max(report['chars_in'], 1):.1%} of characters")
    print("| step | docs in | docs out | % removed | step seconds (summed over workers) | rules |")
    print("|---|---|---|---|---|---|")
    for s in report["steps"]:
        rules = ", ".join(f"{k} {v}" for k, v in list(s["by_rule"].items())[:4])
        print(f"| {s['name']} | {s['docs_in']} | {s['docs_out']} | {s['pct_docs_removed']:.1f} | {s['seconds']:.1f} | "
              f"{rules} |")


if __name__ == "__main__":
    main()
