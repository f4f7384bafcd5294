"""Throughput of the default curation recipe in MB/s on the built-in corpora, 1 vs 2 worker processes.

The corpus mixes the built-in real corpora (Austen, Brown, King James Bible, Python docs,
chatterbot), interleaved, up to ``--mb`` megabytes of text, written as one document JSONL file.
Each run is the full recipe runner (:func:`training.core.curate.runner.run_recipe`: shards,
checkpoints, dedup indexes on disk, output shards, manifest, datasheet). The reference is the
same run in one process, measured in the same run of this script. Prints per-step time and
removals of the parallel run, and the peak resident memory of each run's main process.

Usage: ``python benchmarks/bench_curate.py [--mb 8] [--workers 2] [--batch-size 64] [--shard-docs 200]``;
``--memory 20000,80000``: peak memory of a dedup-only run as the corpus grows.
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
    """(seconds, report, peak RSS MiB of the main process during the run) of one default-recipe run."""
    return run_with_recipe(inputs, default_recipe(), workers, batch_size, shard_docs)


def run_with_recipe(inputs: list[str], recipe: list[dict], workers: int, batch_size: int,
                    shard_docs: int, anonymous: bool = False) -> tuple:
    """(seconds, report, peak RSS MiB of the main process during the run[, peak anonymous MiB])."""
    import threading

    def statm() -> tuple[int, int]:  # resident and resident file-backed bytes of this process (Linux)
        f = Path("/proc/self/statm").read_text().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(f[1]) * page, (int(f[1]) - int(f[2])) * page

    peak = list(statm())
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            now = statm()
            peak[0], peak[1] = max(peak[0], now[0]), max(peak[1], now[1])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_recipe(inputs, recipe, Path(tmp) / "v", workers=workers, batch_size=batch_size,
                   shard_docs=shard_docs)
        seconds = time.perf_counter() - t0
        report = json.loads((Path(tmp) / "v" / "report.json").read_text())
    done.set()
    sampler.join()
    if anonymous:
        return seconds, report, peak[0] / 2**20, peak[1] / 2**20
    return seconds, report, peak[0] / 2**20


def memory_scaling(sizes: list[int], shard_docs: int, batch_size: int) -> None:
    """Peak memory of the runner with exact + near dedup (indexes in files) as the corpus grows.

    Documents are 100 words drawn at random from the Austen vocabulary, so every document is
    distinct and kept (the index grows by one entry per document) while the vocabulary, and so
    the word-hash cache, stays that of a real corpus. Peak RSS counts the pages of the index files
    the process has mapped (page cache the kernel can drop); "anonymous" leaves them out.
    """
    import random

    vocab = sorted({w for t in corpora.load_texts("austen") for w in t.split()})
    rng = random.Random(0)
    recipe = [{"step": "exact_dedup"}, {"step": "near_dedup"}]
    print(f"vocabulary: {len(vocab):,} words")
    print("| documents | MB | seconds | docs/s | peak RSS (MiB) | peak anonymous (MiB) | kept |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "docs.jsonl"
            with src.open("w", encoding="utf-8") as f:
                for i in range(n):
                    f.write(json.dumps({"id": str(i), "text": " ".join(rng.choices(vocab, k=100))}) + "\n")
            mb = src.stat().st_size / 1e6
            seconds, report, peak, anon = run_with_recipe([str(src)], recipe, 1, batch_size, shard_docs,
                                                          anonymous=True)
            print(f"| {n:,} | {mb:.0f} | {seconds:.1f} | {n / seconds:,.0f} | {peak:.0f} | {anon:.0f} | "
                  f"{report['docs_out']:,} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-docs", type=int, default=200)
    ap.add_argument("--memory", default="", help="e.g. 20000,80000: peak memory of dedup as the corpus grows")
    args = ap.parse_args()
    if args.memory:
        memory_scaling([int(x) for x in args.memory.split(",")], max(args.shard_docs, 10_000), 1024)
        return
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
