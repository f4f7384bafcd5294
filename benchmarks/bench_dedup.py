"""Near-dedup throughput and peak memory: training.core.curate (numpy MinHash-LSH) vs datasketch.

Same corpus (real Austen + Brown paragraphs with planted near duplicates of Jaccard >= 0.8),
same parameters (word 5-grams, num_perm, bands x rows), same greedy algorithm (each document is
compared with the earlier kept ones and dropped when it shares an LSH band with one), same
process and thread. datasketch uses its fastest documented path (``MinHash.update_batch`` and
``MinHashLSH.query`` / ``insert``). Prints docs/s, peak traced memory, recall and precision on
the planted pairs, and the speed ratio.

Usage: ``python benchmarks/bench_dedup.py [--docs 20000] [--num-perm 128] [--repeat 3]``
(datasketch comes with ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc
from typing import Callable

from training.core import corpora
from training.core.curate import MinHashConfig, dedup, jaccard, near_duplicates, optimal_params
from training.core.curate.text import ngram_tokens


def build_corpus(n_docs: int, planted_frac: float, seed: int = 0) -> tuple[list[str], set[int], int]:
    """Real paragraphs (>= 30 words) plus planted edited copies with Jaccard >= 0.8."""
    rng = random.Random(seed)
    paras: list[str] = []
    for name in ("austen", "brown"):
        for text in corpora.load_texts(name):
            if name == "brown":  # one long paragraph per sample: cut into ~120-word pieces
                w = text.split()
                paras += [" ".join(w[i:i + 120]) for i in range(0, len(w) - 30, 120)]
            else:
                paras += [p for p in text.split("\n\n") if len(p.split()) >= 30]
    n_planted = int(n_docs * planted_frac)
    base = paras[: n_docs - n_planted]
    planted: list[str] = []
    while len(planted) < n_planted:
        src = base[rng.randrange(len(base))]
        words = src.split()
        out = []
        rate = rng.uniform(0.005, 0.03)
        for x in words:
            r = rng.random()
            if r < rate / 3:
                continue
            out.append(rng.choice(words) if r < 2 * rate / 3 else x)
            if 2 * rate / 3 <= r < rate:
                out.append(rng.choice(words))
        cand = " ".join(out)
        if jaccard(cand, src, 5) >= 0.8:
            planted.append(cand)
    docs = base + planted
    return docs, set(range(len(base), len(docs))), len(base)


def ours(docs: list[str], num_perm: int, bands: int, rows: int) -> set[int]:
    dedup._WORD_CACHE.clear()  # measure cold: no word hashes kept from an earlier run
    cfg = MinHashConfig(num_perm=num_perm, bands=bands, rows=rows, verify=False, threshold=0.8)
    return {d for d, _, _ in near_duplicates(docs, cfg, batch_size=2048)}


def ours_verified(docs: list[str], num_perm: int, bands: int, rows: int) -> set[int]:
    dedup._WORD_CACHE.clear()
    cfg = MinHashConfig(num_perm=num_perm, bands=bands, rows=rows, verify=True, threshold=0.7)
    return {d for d, _, _ in near_duplicates(docs, cfg, batch_size=2048)}


def ours_on_disk(docs: list[str], num_perm: int, bands: int, rows: int) -> set[int]:
    """As :func:`ours_verified` with the index in files (signatures, band runs, ids): what the
    recipe runner uses, so that memory does not grow with the corpus."""
    import tempfile

    dedup._WORD_CACHE.clear()
    with tempfile.TemporaryDirectory() as workdir:
        cfg = MinHashConfig(num_perm=num_perm, bands=bands, rows=rows, verify=True, threshold=0.7, workdir=workdir)
        return {d for d, _, _ in near_duplicates(docs, cfg, batch_size=2048)}


def datasketch_lsh(docs: list[str], num_perm: int, bands: int, rows: int) -> set[int]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
    dups: set[int] = set()
    for i, text in enumerate(docs):
        w = ngram_tokens(text)
        shingles = {" ".join(w[k:k + 5]).encode("utf-8") for k in range(max(len(w) - 4, 1))}
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(shingles))
        if lsh.query(m):
            dups.add(i)
        else:
            lsh.insert(str(i), m)
    return dups


def measure(fn: Callable[..., set[int]], docs: list[str], repeat: int, *args: int) -> tuple[float, float, set[int]]:
    """(best seconds over ``repeat`` runs, peak traced MiB of one more run, result)."""
    best = float("inf")
    result: set[int] = set()
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn(docs, *args)
        best = min(best, time.perf_counter() - t0)
    gc.collect()
    tracemalloc.start()
    fn(docs, *args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak / 2**20, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--planted", type=float, default=0.1)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.7, help="similarity the LSH parameters are tuned for")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    bands, rows = optimal_params(args.threshold, args.num_perm)
    docs, planted, n_base = build_corpus(args.docs, args.planted)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    print(f"corpus: {len(docs)} docs ({mb:.1f} MB), {len(planted)} planted near duplicates (J >= 0.8); "
          f"5-grams, num_perm={args.num_perm}, bands x rows = {bands} x {rows} (optimal for t={args.threshold})")
    try:
        import threadpoolctl

        print("BLAS threads:", [p["num_threads"] for p in threadpoolctl.threadpool_info()])
    except ImportError:
        pass
    rows_out = []
    for name, fn in (("datasketch 2.0.0 MinHashLSH", datasketch_lsh), ("curate (numpy), LSH only", ours),
                     ("curate (numpy), LSH + verify J>=0.7", ours_verified),
                     ("curate (numpy), LSH + verify, index on disk", ours_on_disk)):
        secs, peak, found = measure(fn, docs, args.repeat, args.num_perm, bands, rows)
        tp = len(found & planted)
        rows_out.append((name, secs, peak, tp / len(planted), tp / max(len(found), 1)))
    ref = rows_out[0][1]
    print("| implementation | seconds | docs/s | peak traced MiB | recall | precision | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, secs, peak, recall, precision in rows_out:
        print(f"| {name} | {secs:.2f} | {len(docs) / secs:,.0f} | {peak:.1f} | {recall:.3f} | {precision:.3f} | "
              f"x{ref / secs:.2f} |")


if __name__ == "__main__":
    main()
