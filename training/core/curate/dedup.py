"""Exact and MinHash-LSH near deduplication, vectorised with numpy, plus the LSH S-curve maths.

Near-dedup pipeline for a batch of documents (all numpy, no per-shingle Python work):

1. words -> 64-bit word hashes (blake2b, cached per distinct word);
2. word ``ngram``-shingles -> 64-bit shingle hashes: a polynomial over the word hashes of each
   window, computed for all windows of all documents at once, then the splitmix64 finalizer;
3. ``num_perm`` hash functions ``h_k(x) = (a_k * x + b_k mod 2^64) >> 32`` (multiply-shift, a
   universal family that needs no 128-bit modulo) over all shingles at once, in chunks of
   bounded size, and a segmented minimum per document -> signatures ``(N, num_perm)`` uint32;
4. LSH: the signature is cut in ``bands`` bands of ``rows`` values, each band hashed to a 64-bit
   key; documents sharing a key in any band are candidates, verified by their estimated
   Jaccard similarity (the fraction of equal signature values) against ``threshold``.

The streaming index (:class:`LSHIndex`) keeps, per kept document, its band keys in sorted runs
(:class:`SortedRuns`: searched with ``np.searchsorted``, merged like an LSM tree), its signature
and its id: about ``16 * bands + 4 * num_perm`` bytes plus the id per kept document, whatever the
text length; with ``workdir`` all of it lives in files (memory-mapped runs, append-only
signatures and ids), so memory is bounded by the batch.

>>> round(lsh_probability(0.8, bands=14, rows=8), 3)   # datatrove's note: 0.924
0.924
>>> optimal_params(0.8, 128)
(9, 13)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.core.curate.base import DROP, Decision, Doc, Step, StepConfig, StepResult, require, require_fraction
from training.core.curate.text import ngram_tokens, normalize_for_hash

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_WORD_CACHE: dict[str, int] = {}
_WORD_CACHE_MAX = 2_000_000
_CHUNK_ELEMENTS = 1 << 20  # shingles x num_perm per chunk: 1M uint64 = 8 MB
# a document may carry its MinHash signature, computed earlier (in a worker process) with this
# step's config, under this key; NearDedup.process takes it out of the document
SIGNATURE_KEY = "_minhash_signature"


# ------------------------------------------------------------------------------------------
# Exact dedup
# ------------------------------------------------------------------------------------------

def content_hash(text: str, normalize: bool = True) -> int:
    """64-bit hash of a document's text (normalized: case, punctuation and spacing ignored)."""
    key = normalize_for_hash(text) if normalize else text
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class ExactDedupConfig(StepConfig):
    """Exact dedup. ``normalize``: compare texts after lower-casing and removing punctuation/spacing;
    ``workdir``: folder for the on-disk index ("" keeps it in memory: about 16 bytes per distinct
    document plus its id)."""

    normalize: bool = True
    workdir: str = ""


class ExactDedup(Step):
    """Drop documents whose (normalized) text was seen before; rule ``exact_duplicate`` with the
    id of the first occurrence in ``detail["duplicate_of"]``.

    The index is one sorted run set of 64-bit hashes (:class:`SortedRuns`) and the kept ids,
    in memory or on disk under ``workdir``.
    """

    name = "exact_dedup"
    config_class = ExactDedupConfig

    def __init__(self, config: ExactDedupConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._folder: Path | None = None
        self._state_dir: Path | None = None
        self._runs: SortedRuns | None = None
        self._ids: _IdStore | None = None
        self._hashes: _SignatureStore | None = None  # kept hashes in order, as uint32 pairs

    def reset(self) -> None:
        if self._runs is not None:
            self._runs.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder, self._runs, self._ids, self._hashes = None, None, None, None

    def set_state_dir(self, folder: str | Path) -> None:
        self.reset()
        self._state_dir = Path(folder)

    def _open(self) -> None:
        cfg: ExactDedupConfig = self.config  # type: ignore[assignment]
        if self._state_dir is not None:
            self._state_dir.mkdir(parents=True, exist_ok=True)
            self._folder = self._state_dir
        else:
            self._folder = _private_folder(cfg.workdir, "exact-")
        self._runs, self._ids = SortedRuns(1, self._folder), _IdStore(self._folder)
        self._hashes = _SignatureStore(2, self._folder)

    def checkpoint(self) -> dict[str, Any]:
        return {"size": len(self._ids) if self._ids is not None else 0}

    def restore(self, marker: dict[str, Any]) -> None:
        size = int(marker.get("size", 0))
        if self._runs is None:
            self._open()
        assert self._runs is not None and self._ids is not None and self._hashes is not None
        self._hashes.truncate(size)
        self._ids.truncate(size)
        self._runs = _rebuild_runs(self._runs, self._folder, 1, size, lambda lo, hi: (
            self._hashes.take(np.arange(lo, hi)).view(np.uint64)))  # type: ignore[union-attr]

    def process(self, docs: list[Doc]) -> StepResult:
        cfg: ExactDedupConfig = self.config  # type: ignore[assignment]
        if self._runs is None:
            self._open()
        assert self._ids is not None and self._hashes is not None
        hashes = np.fromiter((content_hash(d["text"], cfg.normalize) for d in docs), dtype=np.uint64,
                             count=len(docs))
        stored = self._runs.lookup(hashes[:, None], limit=1)
        first_in_batch: dict[int, int] = {}
        kept: list[Doc] = []
        decisions: list[Decision] = []
        new_rows: list[int] = []
        for q, doc in enumerate(docs):
            h = int(hashes[q])
            if stored[q].size:
                first = self._ids[int(stored[q][0])]
            elif h in first_in_batch:
                first = str(docs[first_in_batch[h]]["id"])
            else:
                first_in_batch[h] = q
                new_rows.append(q)
                kept.append(doc)
                continue
            decisions.append(Decision(str(doc["id"]), self.name, "exact_duplicate", DROP,
                                      value=1.0, threshold=None, detail={"duplicate_of": first}))
        if new_rows:
            rows = np.asarray(new_rows)
            self._runs.add(hashes[rows][:, None], np.arange(len(self._ids), len(self._ids) + rows.size))
            self._ids.extend([str(docs[r]["id"]) for r in new_rows])
            self._hashes.append(hashes[rows].view(np.uint32).reshape(-1, 2))
        return StepResult(kept, decisions)


# ------------------------------------------------------------------------------------------
# LSH maths: S-curve, optimal bands x rows, false positive / negative rates
# ------------------------------------------------------------------------------------------

def lsh_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that two documents of Jaccard similarity ``s`` share at least one band:
    ``1 - (1 - s**rows) ** bands`` (the S-curve)."""
    p = 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands
    return float(p) if np.ndim(p) == 0 else p


def lsh_threshold(bands: int, rows: int) -> float:
    """The similarity where the S-curve is steepest, approximately ``(1/bands) ** (1/rows)``."""
    return (1.0 / bands) ** (1.0 / rows)


def false_positive_area(threshold: float, bands: int, rows: int, points: int = 201) -> float:
    """Integral of the S-curve below ``threshold``: weight of pairs that are candidates but should not be."""
    s = np.linspace(0.0, threshold, points)
    return float(np.trapezoid(lsh_probability(s, bands, rows), s))


def false_negative_area(threshold: float, bands: int, rows: int, points: int = 201) -> float:
    """Integral of ``1 - S-curve`` above ``threshold``: weight of similar pairs that are missed."""
    s = np.linspace(threshold, 1.0, points)
    return float(np.trapezoid(1.0 - lsh_probability(s, bands, rows), s))


def optimal_params(threshold: float, num_perm: int, fp_weight: float = 0.5,
                   fn_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimizing the weighted false positive and
    false negative areas around ``threshold`` (the rule datasketch and text-dedup use)."""
    require(0.0 < threshold < 1.0, "threshold", f"must be in (0, 1), got {threshold}")
    require(num_perm >= 2, "num_perm", f"must be >= 2, got {num_perm}")
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = (fp_weight * false_positive_area(threshold, b, r, 51)
                   + fn_weight * false_negative_area(threshold, b, r, 51))
            if err < best_err - 1e-12:
                best, best_err = (b, r), err
    return best


def s_curve(bands: int, rows: int, points: int = 101, threshold: float | None = None) -> dict[str, Any]:
    """Data to plot the S-curve: similarities, probabilities, the knee and the error estimates."""
    s = np.linspace(0.0, 1.0, points)
    out: dict[str, Any] = {
        "similarity": s.round(4).tolist(),
        "probability": np.asarray(lsh_probability(s, bands, rows)).round(6).tolist(),
        "bands": bands, "rows": rows, "num_perm": bands * rows,
        "knee": round(lsh_threshold(bands, rows), 4),
    }
    if threshold is not None:
        out["threshold"] = threshold
        out["false_positive_area"] = round(false_positive_area(threshold, bands, rows), 6)
        out["false_negative_area"] = round(false_negative_area(threshold, bands, rows), 6)
        out["p_candidate_at_threshold"] = round(float(lsh_probability(threshold, bands, rows)), 6)
    return out


# ------------------------------------------------------------------------------------------
# MinHash signatures
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MinHashConfig(StepConfig):
    """MinHash-LSH near-dedup.

    ``ngram``: words per shingle; ``num_perm``: hash functions; ``bands`` x ``rows`` (at most
    ``num_perm``; 0 and 0 choose them with :func:`optimal_params` for ``threshold``);
    ``threshold``: estimated Jaccard similarity above which a candidate is a duplicate (used to
    verify LSH candidates when ``verify``); ``seed``: fixes the hash functions; ``workdir``:
    folder for on-disk signatures ("" keeps them in memory); ``max_candidates``: candidates
    checked per band and document (bounds the work on huge buckets).
    Defaults follow datatrove (5-grams, 14 bands x 8 rows = 112 hashes, knee about 0.72).
    """

    ngram: int = 5
    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    threshold: float = 0.7
    verify: bool = True
    seed: int = 42
    workdir: str = ""
    max_candidates: int = 32

    def __post_init__(self) -> None:
        require(self.ngram >= 1, "ngram", f"must be >= 1, got {self.ngram}")
        require(2 <= self.num_perm <= 1024, "num_perm", f"must be in [2, 1024], got {self.num_perm}")
        require_fraction(self.threshold, "threshold")
        require((self.bands == 0) == (self.rows == 0), "bands",
                "set both bands and rows, or both to 0 to choose them from threshold")
        require(self.bands * self.rows <= self.num_perm, "bands",
                f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}",
                f"e.g. bands={self.num_perm // max(self.rows, 1)} or raise num_perm")
        require(self.bands >= 0 and self.rows >= 0, "rows", "must be >= 0")
        require(self.max_candidates >= 1, "max_candidates", "must be >= 1")

    def band_rows(self) -> tuple[int, int]:
        """The (bands, rows) in use."""
        if self.bands == 0:
            return optimal_params(self.threshold, self.num_perm)
        return self.bands, self.rows


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective 64-bit mixer, vectorised (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _word_hash(word: str) -> int:
    h = _WORD_CACHE.get(word)
    if h is None:
        if len(_WORD_CACHE) >= _WORD_CACHE_MAX:
            _WORD_CACHE.clear()
        h = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
        _WORD_CACHE[word] = h
    return h


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes_batch(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of the word ``ngram``-shingles of every text, concatenated.

    Returns ``(hashes (S,) uint64, offsets (N+1,) int64)``: the shingles of text ``i`` are
    ``hashes[offsets[i]:offsets[i+1]]``. A text with fewer than ``ngram`` words has one shingle
    (all its words); an empty text has none.
    """
    toks = [ngram_tokens(t) for t in texts]
    lengths = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
    flat = [w for t in toks for w in t]
    table = {w: _word_hash(w) for w in dict.fromkeys(flat)}  # hash each distinct word once
    wh = np.fromiter(map(table.__getitem__, flat), dtype=np.uint64, count=len(flat))  # (W,)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    n_sh = np.where(lengths >= ngram, lengths - ngram + 1, (lengths > 0).astype(np.int64))  # (N,)
    offsets = np.concatenate([[0], np.cumsum(n_sh)]).astype(np.int64)
    total = int(offsets[-1])
    out = np.empty(total, dtype=np.uint64)
    if total == 0:
        return out, offsets
    # windows that start in every text with >= ngram words: polynomial over word hashes
    long_docs = lengths >= ngram
    win = len(flat) - ngram + 1
    if win > 0 and long_docs.any():
        acc = np.zeros(win, dtype=np.uint64)
        mult = np.uint64(0x9E3779B97F4A7C15)
        for k in range(ngram):  # (win,) per k: acc = acc * mult + w[i + k]
            acc = acc * mult + wh[k:k + win]
        acc = _splitmix64(acc)
        # positions of valid window starts: for each long doc, starts[d] .. starts[d]+n_sh[d]-1
        doc_idx = np.repeat(np.arange(len(texts)), np.where(long_docs, n_sh, 0))
        within = np.arange(doc_idx.size) - np.repeat(offsets[:-1][long_docs], n_sh[long_docs])
        pos = starts[:-1][doc_idx] + within
        dest = offsets[:-1][doc_idx] + within
        out[dest] = acc[pos]
    for d in np.flatnonzero(~long_docs & (lengths > 0)):  # short texts: one shingle of all words
        acc = np.array([len(toks[d])], dtype=np.uint64)  # arrays wrap silently, scalars warn
        for k in range(int(starts[d]), int(starts[d + 1])):
            acc = acc * np.uint64(0x9E3779B97F4A7C15) + wh[k:k + 1]
        out[offsets[d]] = _splitmix64(acc)[0]
    return out, offsets


def minhash_signatures(texts: Sequence[str], config: MinHashConfig | None = None) -> np.ndarray:
    """MinHash signatures ``(N, num_perm)`` uint32 of the texts' word shingles.

    Texts without any word get the all-``0xFFFFFFFF`` signature (they match nothing real).
    """
    cfg = config or MinHashConfig()
    shingles, offsets = shingle_hashes_batch(texts, cfg.ngram)
    a, b = _permutations(cfg.num_perm, cfg.seed)
    n = len(texts)
    sig = np.full((n, cfg.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    if shingles.size == 0:
        return sig
    seg = np.repeat(np.arange(n), np.diff(offsets))  # (S,) document of each shingle
    chunk = max(1, _CHUNK_ELEMENTS // cfg.num_perm)
    b_col = b[:, None]
    for lo in range(0, shingles.size, chunk):
        x = shingles[lo:lo + chunk]
        h = np.multiply.outer(a, x)  # (P, s): one row per hash function, contiguous shingles
        h += b_col
        h >>= np.uint64(32)
        h32 = h.astype(np.uint32)
        del h
        s = seg[lo:lo + chunk]
        bounds = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        mins = np.minimum.reduceat(h32, bounds, axis=1)  # (P, docs in chunk)
        docs = s[bounds]
        sig[docs] = np.minimum(sig[docs], mins.T)
    return sig


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """64-bit key of each band of each signature: ``(N, bands)`` uint64."""
    n = signatures.shape[0]
    sig = signatures[:, :bands * rows].astype(np.uint64).reshape(n, bands, rows)
    mults = _splitmix64(np.arange(1, rows + 1, dtype=np.uint64))  # (rows,)
    keys = (sig * mults[None, None, :]).sum(axis=2, dtype=np.uint64)  # wraps mod 2^64
    return _splitmix64(keys ^ (np.arange(bands, dtype=np.uint64)[None, :] << np.uint64(56)))


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Fraction of equal MinHash values: an unbiased estimate of the Jaccard similarity."""
    eq = np.asarray(a) == np.asarray(b)
    return eq.mean(axis=-1)


def jaccard(text_a: str, text_b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of two texts' word-``ngram`` shingle sets (the oracle for tests)."""
    def shingles(t: str) -> set[tuple[str, ...]]:
        w = ngram_tokens(t)
        if len(w) < ngram:
            return {tuple(w)} if w else set()
        return {tuple(w[i:i + ngram]) for i in range(len(w) - ngram + 1)}
    sa, sb = shingles(text_a), shingles(text_b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


# ------------------------------------------------------------------------------------------
# Streaming LSH index
# ------------------------------------------------------------------------------------------

class _SignatureStore:
    """Append-only ``(M, P)`` uint32 signatures, in memory or in a file under ``folder``."""

    def __init__(self, num_perm: int, folder: Path | None = None) -> None:
        self.num_perm = num_perm
        self.size = 0
        self._path = folder / "signatures.u32" if folder is not None else None
        self._mem = np.empty((0 if folder is not None else 1024, num_perm), dtype=np.uint32)
        self._map: np.ndarray | None = None

    def append(self, sig: np.ndarray) -> None:
        if sig.shape[0] == 0:
            return
        if self._path is not None:
            with self._path.open("ab") as f:
                f.write(np.ascontiguousarray(sig, dtype=np.uint32).tobytes())
            self.size += sig.shape[0]
            self._map = None
            return
        need = self.size + sig.shape[0]
        if need > self._mem.shape[0]:
            grown = np.empty((max(need, 2 * self._mem.shape[0]), self.num_perm), dtype=np.uint32)
            grown[:self.size] = self._mem[:self.size]
            self._mem = grown
        self._mem[self.size:need] = sig
        self.size = need

    def truncate(self, size: int) -> None:
        """Forget everything after the first ``size`` rows."""
        if self._path is not None:
            with self._path.open("ab") as f:
                f.truncate(size * self.num_perm * 4)
            self._map = None
        self.size = min(self.size, size) if self._path is None else size

    def take(self, idx: np.ndarray) -> np.ndarray:
        if self._path is None:
            return self._mem[idx]
        if self._map is None:
            self._map = np.memmap(self._path, dtype=np.uint32, mode="r", shape=(self.size, self.num_perm))
        return np.asarray(self._map[idx])


class _IdStore:
    """Append-only list of document ids, in memory or in a file (8 bytes of offset per id in memory)."""

    def __init__(self, folder: Path | None = None) -> None:
        self._ids: list[str] = []
        self._path = folder / "ids.jsonl" if folder is not None else None
        self._offsets = np.zeros(1, dtype=np.int64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def extend(self, ids: list[str]) -> None:
        if not ids:
            return
        self._size += len(ids)
        if self._path is None:
            self._ids.extend(ids)
            return
        lines = [(json.dumps(i) + "\n").encode("utf-8") for i in ids]
        with self._path.open("ab") as f:
            f.write(b"".join(lines))
        ends = self._offsets[-1] + np.cumsum([len(x) for x in lines])
        self._offsets = np.concatenate([self._offsets, ends])

    def truncate(self, size: int) -> None:
        """Keep the first ``size`` ids (re-reading the offsets from the file)."""
        if self._path is None:
            del self._ids[size:]
            self._size = len(self._ids)
            return
        ends = [0]
        if self._path.exists():
            with self._path.open("rb") as f:
                for _, line in zip(range(size), f):
                    ends.append(ends[-1] + len(line))
            with self._path.open("ab") as f:
                f.truncate(ends[-1])
        self._offsets = np.asarray(ends, dtype=np.int64)
        self._size = len(ends) - 1

    def __getitem__(self, i: int) -> str:
        if self._path is None:
            return self._ids[i]
        with self._path.open("rb") as f:
            f.seek(int(self._offsets[i]))
            return json.loads(f.read(int(self._offsets[i + 1] - self._offsets[i])))


class SortedRuns:
    """An append-only multimap from ``K`` parallel 64-bit keys to int64 values, as sorted runs.

    Each :meth:`add` becomes a run sorted per key column; runs merge like an LSM tree (a new run
    at least half the size of the previous one is merged into it), so there are O(log N) runs
    and each lookup is ``np.searchsorted`` per run. With ``folder`` the runs are ``.npy`` files
    opened memory-mapped and merged column by column, so memory holds no more than two columns.
    Equal keys keep insertion order (older values first).
    """

    def __init__(self, n_keys: int, folder: Path | None = None) -> None:
        self.n_keys = n_keys
        self.folder = folder
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # keys (K, M) sorted per row, vals (K, M)
        self._serial = 0

    def __len__(self) -> int:
        return sum(r[0].shape[1] for r in self._runs)

    @property
    def n_runs(self) -> int:
        return len(self._runs)

    def _store(self, keys: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.folder is None:
            return keys, vals
        self._serial += 1
        kp, vp = self.folder / f"run{self._serial}.keys.npy", self.folder / f"run{self._serial}.vals.npy"
        np.save(kp, keys)
        np.save(vp, vals)
        return np.load(kp, mmap_mode="r"), np.load(vp, mmap_mode="r")

    def _drop(self, run: tuple[np.ndarray, np.ndarray]) -> None:
        for arr in run:
            name = getattr(arr, "filename", None)
            del arr
            if name:
                Path(name).unlink(missing_ok=True)

    def add(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Add ``keys (M, K)`` with values ``vals (M,)``."""
        if keys.shape[0] == 0:
            return
        order = np.argsort(keys, axis=0, kind="stable")  # (M, K)
        run = self._store(np.take_along_axis(keys, order, axis=0).T.copy(), vals[order].T.copy())
        self._runs.append(run)
        while len(self._runs) >= 2 and self._runs[-1][0].shape[1] * 2 >= self._runs[-2][0].shape[1]:
            new, old = self._runs.pop(), self._runs.pop()
            self._runs.append(self._merge(old, new))

    def _merge(self, old: tuple[np.ndarray, np.ndarray],
               new: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        m = old[0].shape[1] + new[0].shape[1]
        if self.folder is None:
            keys, vals = np.empty((self.n_keys, m), np.uint64), np.empty((self.n_keys, m), np.int64)
        else:
            self._serial += 1
            kp, vp = self.folder / f"run{self._serial}.keys.npy", self.folder / f"run{self._serial}.vals.npy"
            keys = np.lib.format.open_memmap(kp, mode="w+", dtype=np.uint64, shape=(self.n_keys, m))
            vals = np.lib.format.open_memmap(vp, mode="w+", dtype=np.int64, shape=(self.n_keys, m))
        for j in range(self.n_keys):  # one key column at a time: bounded memory
            k = np.concatenate([old[0][j], new[0][j]])
            v = np.concatenate([old[1][j], new[1][j]])
            order = np.argsort(k, kind="stable")
            keys[j], vals[j] = k[order], v[order]
        self._drop(old)
        self._drop(new)
        if self.folder is not None:
            keys.flush()
            vals.flush()
            name_k, name_v = keys.filename, vals.filename
            del keys, vals
            return np.load(name_k, mmap_mode="r"), np.load(name_v, mmap_mode="r")
        return keys, vals

    def lookup(self, keys: np.ndarray, limit: int = 32) -> list[np.ndarray]:
        """For each query row of ``keys (B, K)``: the values stored under an equal key in any
        column (unique; per column the ``limit`` oldest, i.e. smallest, values over all runs).

        The answer does not depend on how the entries are split into runs, so an index rebuilt
        on resume answers exactly as the one it replaces. Within a run, equal keys keep their
        values in insertion order, so each run's first ``limit`` hold the overall oldest ones.
        """
        found: list[dict[int, list[np.ndarray]]] = [{} for _ in range(keys.shape[0])]
        for run_keys, run_vals in self._runs:
            for j in range(self.n_keys):
                col = run_keys[j]
                lo = np.searchsorted(col, keys[:, j], side="left")
                hi = np.searchsorted(col, keys[:, j], side="right")
                for q in np.flatnonzero(hi > lo):
                    found[q].setdefault(j, []).append(np.asarray(run_vals[j][lo[q]:min(hi[q], lo[q] + limit)]))
        out: list[np.ndarray] = []
        for per_column in found:
            if not per_column:
                out.append(np.empty(0, dtype=np.int64))
                continue
            parts = [np.sort(np.concatenate(arrs))[:limit] if len(arrs) > 1 else arrs[0]
                     for arrs in per_column.values()]
            out.append(np.unique(np.concatenate(parts)))
        return out

    def close(self) -> None:
        for run in self._runs:
            self._drop(run)
        self._runs = []


def _private_folder(workdir: str, prefix: str) -> Path | None:
    """A fresh folder under ``workdir`` for one index ("" = keep everything in memory)."""
    if not workdir:
        return None
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))


def _rebuild_runs(runs: SortedRuns, folder: Path | None, n_keys: int, size: int,
                  keys_of: Any, chunk: int = 1 << 18) -> SortedRuns:
    """A fresh :class:`SortedRuns` over the first ``size`` entries, whose keys ``keys_of(lo, hi)``
    recomputes from the append-only store (files of the old runs, and stray ones, are deleted)."""
    runs.close()
    if folder is not None:
        for stray in folder.glob("run*.npy"):
            stray.unlink(missing_ok=True)
    fresh = SortedRuns(n_keys, folder)
    for lo in range(0, size, chunk):
        hi = min(size, lo + chunk)
        fresh.add(np.asarray(keys_of(lo, hi)).reshape(hi - lo, n_keys), np.arange(lo, hi, dtype=np.int64))
    return fresh


class LSHIndex:
    """Streaming MinHash-LSH index of kept documents.

    ``query_insert(signatures)`` finds, for each new signature in order, an earlier kept
    document (from previous calls or earlier in the same call) sharing a band and, when
    ``verify``, with estimated Jaccard >= ``threshold``; unmatched signatures are inserted.
    Returns ``(match (B,) int64 index of the kept document or -1, similarity (B,) float)``.
    """

    def __init__(self, num_perm: int, bands: int, rows: int, threshold: float = 0.7, verify: bool = True,
                 workdir: str = "", max_candidates: int = 32, folder: Path | None = None) -> None:
        self.bands, self.rows, self.threshold, self.verify = bands, rows, threshold, verify
        self.max_candidates = max_candidates
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder if folder is not None else _private_folder(workdir, "lsh-")
        self.store = _SignatureStore(num_perm, self.folder)
        self.runs = SortedRuns(bands, self.folder)

    def __len__(self) -> int:
        return self.store.size

    def query_insert(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = signatures.shape[0]
        keys = band_keys(signatures, self.bands, self.rows)  # (B, bands)
        stored = self.runs.lookup(keys, self.max_candidates)
        # within the batch: earlier rows sharing a band key
        earlier: list[set[int]] = [set() for _ in range(n)]
        for j in range(self.bands):
            order = np.argsort(keys[:, j], kind="stable")
            k = keys[order, j]
            same = np.flatnonzero(k[1:] == k[:-1]) + 1
            for p in same:
                first = p
                while first > 0 and k[first - 1] == k[p] and p - first < self.max_candidates:
                    first -= 1
                for q in order[first:p]:
                    earlier[order[p]].add(int(q))
        match = np.full(n, -1, dtype=np.int64)
        sim = np.zeros(n, dtype=np.float64)
        new_index = np.full(n, -1, dtype=np.int64)  # store index given to kept rows of this batch
        kept_rows: list[int] = []
        base = self.store.size
        for q in range(n):
            cands = stored[q]
            best, best_sim = -1, -1.0
            if cands.size:
                sims = estimated_jaccard(self.store.take(cands), signatures[q][None, :])
                i = int(np.argmax(sims))
                best, best_sim = int(cands[i]), float(sims[i])
            for e in earlier[q]:
                if new_index[e] >= 0:
                    s = float(estimated_jaccard(signatures[e], signatures[q]))
                    if s > best_sim:
                        best, best_sim = int(new_index[e]), s
            if best >= 0 and (not self.verify or best_sim >= self.threshold):
                match[q], sim[q] = best, best_sim
            else:
                new_index[q] = base + len(kept_rows)
                kept_rows.append(q)
        if kept_rows:
            rows = np.asarray(kept_rows)
            self.store.append(signatures[rows])
            self.runs.add(keys[rows], new_index[rows])
        return match, sim

    def restore(self, size: int) -> None:
        """Keep the first ``size`` documents (from this index's files) and rebuild the band runs."""
        self.store.truncate(size)
        self.runs = _rebuild_runs(self.runs, self.folder, self.bands, size, lambda lo, hi: band_keys(
            self.store.take(np.arange(lo, hi)), self.bands, self.rows))

    def close(self) -> None:
        """Forget the index and delete its files."""
        self.runs.close()
        self.store = _SignatureStore(self.store.num_perm, None)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


class NearDedup(Step):
    """Drop documents that are near duplicates of an earlier kept document; rule ``near_duplicate``
    with the estimated Jaccard similarity as value and ``threshold`` as threshold."""

    name = "near_dedup"
    config_class = MinHashConfig

    def __init__(self, config: MinHashConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._index: LSHIndex | None = None
        self._ids = _IdStore()
        self._state_dir: Path | None = None

    def reset(self) -> None:
        if self._index is not None:
            self._index.close()
        self._index, self._ids = None, _IdStore()

    def set_state_dir(self, folder: str | Path) -> None:
        self.reset()
        self._state_dir = Path(folder)

    def checkpoint(self) -> dict[str, Any]:
        return {"size": len(self._index) if self._index is not None else 0}

    def restore(self, marker: dict[str, Any]) -> None:
        size = int(marker.get("size", 0))
        index = self._get_index()
        index.restore(size)
        self._ids.truncate(size)

    def _get_index(self) -> LSHIndex:
        if self._index is None:
            cfg: MinHashConfig = self.config  # type: ignore[assignment]
            bands, rows = cfg.band_rows()
            self._index = LSHIndex(cfg.num_perm, bands, rows, cfg.threshold, cfg.verify, cfg.workdir,
                                   cfg.max_candidates, folder=self._state_dir)
            self._ids = _IdStore(self._index.folder)
        return self._index

    def process(self, docs: list[Doc]) -> StepResult:
        if not docs:
            return StepResult([], [])
        cfg: MinHashConfig = self.config  # type: ignore[assignment]
        pre = [d.pop(SIGNATURE_KEY, None) for d in docs]
        if all(p is not None for p in pre):
            sig = np.stack(pre)  # type: ignore[arg-type]
        else:
            sig = minhash_signatures([d["text"] for d in docs], cfg)
        match, sim = self._get_index().query_insert(sig)
        kept = [doc for doc, m in zip(docs, match) if m < 0]
        self._ids.extend([str(doc["id"]) for doc in kept])  # store positions follow this order
        decisions: list[Decision] = []
        for doc, m, s in zip(docs, match, sim):
            if m >= 0:
                decisions.append(Decision(str(doc["id"]), self.name, "near_duplicate", DROP, value=round(float(s), 4),
                                          threshold=cfg.threshold if cfg.verify else None,
                                          detail={"duplicate_of": self._ids[int(m)]}))
        return StepResult(kept, decisions)


def near_duplicates(texts: Sequence[str], config: MinHashConfig | None = None,
                    batch_size: int = 2048) -> list[tuple[int, int, float]]:
    """``(duplicate index, kept index, estimated similarity)`` for every near duplicate in ``texts``
    (each compared with the earlier kept texts), processed in batches of ``batch_size``."""
    cfg = config or MinHashConfig()
    bands, rows = cfg.band_rows()
    index = LSHIndex(cfg.num_perm, bands, rows, cfg.threshold, cfg.verify, cfg.workdir, cfg.max_candidates)
    kept_pos: list[int] = []
    out: list[tuple[int, int, float]] = []
    try:
        for lo in range(0, len(texts), batch_size):
            sig = minhash_signatures(texts[lo:lo + batch_size], cfg)
            match, sim = index.query_insert(sig)
            for i, (m, s) in enumerate(zip(match, sim)):
                if m < 0:
                    kept_pos.append(lo + i)
                else:
                    out.append((lo + i, kept_pos[int(m)], float(s)))
    finally:
        index.close()
    return out


def spot_check(texts: Sequence[str], duplicates: Sequence[tuple[int, int, float]], *, sample: int = 50,
               threshold: float = 0.8, ngram: int = 5, seed: int = 0) -> dict[str, Any]:
    """Check a random sample of detected near-duplicate pairs with the exact Jaccard similarity.

    ``duplicates`` is the output of :func:`near_duplicates`. Returns how many sampled pairs fall
    below ``threshold`` (an estimate of the false-positive rate, with a 95 % Wilson interval) and
    the pairs themselves (indices, estimated and exact similarity) for a side-by-side view.
    """
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(duplicates), size=min(sample, len(duplicates)), replace=False) if duplicates else []
    pairs = []
    for p in picks:
        d, k, est = duplicates[int(p)]
        pairs.append({"duplicate": int(d), "kept": int(k), "estimated": round(float(est), 4),
                      "exact": round(jaccard(texts[d], texts[k], ngram), 4)})
    n = len(pairs)
    below = sum(p["exact"] < threshold for p in pairs)
    out: dict[str, Any] = {"checked": n, "below_threshold": below, "threshold": threshold, "pairs": pairs,
                           "false_positive_rate": below / n if n else 0.0}
    if n:
        z, phat = 1.96, below / n
        centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        out["interval_95"] = (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))
    return out
