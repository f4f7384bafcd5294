"""Tokenizing a corpus into shards: one document at a time vs Rust batch encoding vs a process pool.

Reference: ``prepare_shards(batch_size=1)`` (each document encoded alone, one core). Compared in
the same run: batches of 512 documents (the Rust tokenizer's own threads) and a pool of
``--workers`` processes. Usage: ``python benchmarks/prepare_shards.py [--corpus austen]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from training.core import corpora
from training.core.data import prepare_shards
from training.core.tokenizer import train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="austen")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    texts = corpora.load_texts(args.corpus, Path("var/cache"))
    mb = sum(len(t.encode()) for t in texts) / 1e6
    tok = train_tokenizer(texts, vocab_size=args.vocab)
    variants = {
        "one doc at a time": dict(batch_size=1),
        "rust batch (512 docs)": dict(batch_size=512),
        f"pool x{args.workers} (64 docs)": dict(batch_size=64, num_workers=args.workers),
    }
    best = {k: float("inf") for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, kw in variants.items():
                t0 = time.perf_counter()
                m = prepare_shards(texts, tok, Path(tmp) / f"{rep}-{len(best)}-{hash(name)}", **kw)
                best[name] = min(best[name], time.perf_counter() - t0)
    tokens = m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"]
    print(f"prepare_shards on {args.corpus}: {len(texts)} documents, {mb:.1f} MB, {tokens} tokens, "
          f"cpus={os.cpu_count()}")
    ref = best["one doc at a time"]
    for name, t in best.items():
        print(f"  {name:24s} {t:6.2f} s  {mb / t:5.2f} MB/s  speedup x{ref / t:.2f}")


if __name__ == "__main__":
    main()
