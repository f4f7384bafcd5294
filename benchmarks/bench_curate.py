"""Throughput of the default curation recipe in MB/s on the built-in corpora, 1 vs 2 worker processes.

The corpus mixes the built-in real corpora (Austen, Brown, King James Bible, Python docs,
chatterbot), interleaved, up to ``--mb`` megabytes of text. The reference is the same recipe in
one process, measured in the same run. Prints per-step time and removals of the 2-worker run.

Usage: ``python benchmarks/bench_curate.py [--mb 8] [--workers 2] [--batch-size 64]``
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

from training.core import corpora
from training.core.curate import Pipeline, default_recipe


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


def run(docs: list[dict], workers: int, batch_size: int) -> tuple[float, dict]:
    pipe = Pipeline.from_recipe(default_recipe())
    t0 = time.perf_counter()
    kept, report = pipe.run_all(docs, batch_size=batch_size, workers=workers)
    return time.perf_counter() - t0, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    docs = load_mix(args.mb)
    mb = sum(len(d["text"].encode()) for d in docs) / 1e6
    print(f"corpus: {len(docs)} documents, {mb:.2f} MB from austen/brown/kjv/python-docs/chatterbot; "
          f"cores: {os.cpu_count()}")
    run(docs[:20], 1, args.batch_size)  # load the language and profanity models once
    ref_s, _ = run(docs, 1, args.batch_size)
    par_s, report = run(docs, args.workers, args.batch_size)
    print("| run | seconds | MB/s | docs/s | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| 1 process | {ref_s:.1f} | {mb / ref_s:.3f} | {len(docs) / ref_s:.0f} | x1.00 |")
    print(f"| {args.workers} worker processes | {par_s:.1f} | {mb / par_s:.3f} | {len(docs) / par_s:.0f} | "
          f"x{ref_s / par_s:.2f} |")
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
