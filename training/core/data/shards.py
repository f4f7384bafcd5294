"""Token shards: documents tokenized once into flat, memory-mapped token files.

``prepare_shards`` streams documents (never holding the corpus in memory), tokenizes them in
batches (the Rust tokenizer encodes a batch on all cores; ``num_workers > 1`` adds a process
pool), writes each document as ``[bos] tokens eos`` into ``train_*.bin`` or ``val_*.bin`` and
finishes with ``manifest.json``. Everything is written into a temporary sibling folder that is
renamed into place at the end, so a crash never leaves a half-written dataset.

The split is by document and deterministic: a document goes to validation when a hash of
``seed`` and its text falls under ``val_fraction`` (so duplicates always land on the same side).

>>> from training.core.tokenizer import train_tokenizer
>>> import tempfile, pathlib
>>> tok = train_tokenizer(["a tiny corpus of words"] * 8, vocab_size=300)
>>> out = pathlib.Path(tempfile.mkdtemp()) / "ds"
>>> m = prepare_shards([f"document {i}" for i in range(50)], tok, out, val_fraction=0.1)
>>> m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
50
>>> len(TokenShards(out, "train")) == m["splits"]["train"]["tokens"]
True
"""

from __future__ import annotations

import bisect
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from training.core.tokenizer import StudioTokenizer

MANIFEST = "manifest.json"
FORMAT = "studio-token-shards"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


class ShardError(ValueError):
    """A token-shard folder is missing, malformed or does not fit the request; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f" (hint: {hint})" if hint else ""))


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab < 65536), else uint32.

    >>> token_dtype(32000).name, token_dtype(70000).name
    ('uint16', 'uint32')
    """
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def is_validation(text: str, seed: int, val_fraction: float) -> bool:
    """Deterministic split: hash(seed, text) mapped to [0, 1) and compared with ``val_fraction``.

    >>> is_validation("some text", 0, 0.0), is_validation("some text", 0, 1.0)
    (False, True)
    """
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                             key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


# --------------------------------------------------------------------------------------------
# Encoding (in-process or in a pool of worker processes)
# --------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _encode_docs(tok: StudioTokenizer, texts: list[str], add_bos: bool, dtype: np.dtype, seed: int,
                 val_fraction: float) -> list[tuple[bool, np.ndarray, int]]:
    """(goes to validation, token ids, number of characters) for each text."""
    ids = tok.encode_batch(texts, add_bos=add_bos, add_eos=True, split_special_tokens=True)
    return [(is_validation(t, seed, val_fraction), np.asarray(x, dtype=dtype), len(t)) for t, x in zip(texts, ids)]


def _worker_init(tokenizer_json: str, special_tokens: dict[str, str | None], args: tuple[Any, ...]) -> None:
    from tokenizers import Tokenizer

    _WORKER["tok"] = StudioTokenizer(Tokenizer.from_str(tokenizer_json), special_tokens=special_tokens)
    _WORKER["args"] = args


def _worker_encode(texts: list[str]) -> list[tuple[bool, np.ndarray, int]]:
    return _encode_docs(_WORKER["tok"], texts, *_WORKER["args"])


def _pool_encode(pool: Any, batches: Iterator[list[str]], window: int) -> Iterator[list[tuple[bool, np.ndarray, int]]]:
    """Encode batches in the pool, in order, with at most ``window`` batches in flight.

    (``Pool.imap`` would read the whole input iterator ahead into its task queue, i.e. load the
    corpus into memory.)
    """
    pending: deque[Any] = deque()
    for batch in batches:
        pending.append(pool.apply_async(_worker_encode, (batch,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, size)):
        yield [t for t in batch if t]  # empty documents carry no tokens


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

class _SplitWriter:
    """Appends token arrays to ``<split>_000000.bin``, ``<split>_000001.bin``… of at most ``shard_tokens``."""

    def __init__(self, folder: Path, split: str, shard_tokens: int) -> None:
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self.tokens = 0
        self.chars = 0
        self.max_id = -1
        self._file: BinaryIO | None = None
        self._in_shard = 0

    def write(self, ids: np.ndarray, chars: int) -> None:
        self.documents += 1
        self.tokens += len(ids)
        self.chars += chars
        self.max_id = max(self.max_id, int(ids.max()))
        pos = 0
        while pos < len(ids):  # a document may straddle two shard files
            if self._file is None or self._in_shard >= self.shard_tokens:
                self._open_next()
            take = min(len(ids) - pos, self.shard_tokens - self._in_shard)
            assert self._file is not None
            self._file.write(ids[pos:pos + take].tobytes())
            self._in_shard += take
            self.shards[-1]["tokens"] = self._in_shard
            pos += take

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self._file = open(self.folder / name, "wb")
        self._in_shard = 0
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def summary(self) -> dict[str, Any]:
        return {"documents": self.documents, "tokens": self.tokens, "chars": self.chars, "shards": self.shards}


def prepare_shards(
    texts: Iterable[str],
    tokenizer: StudioTokenizer,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.01,
    seed: int = 0,
    num_workers: int | None = None,
    add_bos: bool = False,
    batch_size: int = 512,
    shard_tokens: int = 2**27,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Tokenize ``texts`` (any iterable, streamed) into token shards under ``out_dir``.

    Each document becomes ``[bos] + ids + [eos]`` (``bos`` only when ``add_bos``); special-token
    text inside documents is encoded as plain text. Documents are processed ``batch_size`` at a
    time; ``num_workers`` > 1 encodes batches in that many processes (``None`` or 1: the Rust
    tokenizer's own threads). If validation would be empty while ``val_fraction > 0``, the last
    training document moves to validation. Returns the manifest (also written to ``manifest.json``).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ShardError(f"val_fraction must be in [0, 1), got {val_fraction!r}", "0.01 keeps 1% for validation")
    if batch_size < 1 or shard_tokens < 1:
        raise ShardError("batch_size and shard_tokens must be positive")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ShardError(f"{out_dir} already exists", "pass overwrite=True or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    pool = None
    try:
        writers = {split: _SplitWriter(tmp, split, shard_tokens) for split in SPLITS}
        args = (add_bos, dtype, seed, val_fraction)
        if num_workers is not None and num_workers > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork of the tokenizer's Rust thread pool
            pool = ctx.Pool(num_workers, initializer=_worker_init,
                            initargs=(tokenizer.tokenizer.to_str(), tokenizer.special_tokens, args))
            encoded: Iterable[list[tuple[bool, np.ndarray, int]]] = _pool_encode(
                pool, _batches(texts, batch_size), window=2 * num_workers)
        else:
            encoded = (_encode_docs(tokenizer, b, *args) for b in _batches(texts, batch_size))
        held: tuple[np.ndarray, int] | None = None  # last train document, kept back in case val ends up empty
        for batch in encoded:
            for to_val, ids, chars in batch:
                if to_val:
                    writers["val"].write(ids, chars)
                else:
                    if held is not None:
                        writers["train"].write(*held)
                    held = (ids, chars)
        if held is not None:
            empty_val = val_fraction > 0 and writers["val"].documents == 0 and writers["train"].documents > 0
            writers["val" if empty_val else "train"].write(*held)
        for w in writers.values():
            w.close()
        if writers["train"].documents == 0:
            raise ShardError("no training documents", "pass non-empty texts, or lower val_fraction")
        max_id = max(w.max_id for w in writers.values())
        if max_id >= tokenizer.vocab_size:
            raise ShardError(f"token id {max_id} >= vocab size {tokenizer.vocab_size}", "the tokenizer is corrupt")
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "bos_id": tokenizer.bos_id if add_bos else None,
            "eos_id": tokenizer.eos_id,
            "add_bos": add_bos,
            "val_fraction": val_fraction,
            "seed": seed,
            "splits": {split: w.summary() for split, w in writers.items()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _swap_into_place(tmp, out_dir)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing ``out_dir`` is moved aside first, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a shard folder, checked for format and version."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(f"no {MANIFEST} in {folder}",
                         "prepare the dataset first: python -m training.core.cli prepare")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ShardError(f"{path} is not a version-{FORMAT_VERSION} {FORMAT} manifest", "prepare the dataset again")
    return manifest


class TokenShards:
    """Read-only view of one split as a single flat token array (memory-mapped shard files).

    ``len(shards)`` is the number of tokens; ``shards[a:b]`` returns a numpy array (contiguous
    slices only) and may span shard files.
    """

    def __init__(self, folder: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ShardError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
        self.root = Path(folder)
        self.split = split
        self.manifest = read_manifest(self.root)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.vocab_size: int = self.manifest["vocab_size"]
        self.eos_id: int = self.manifest["eos_id"]
        self.tokenizer_fingerprint: str = self.manifest["tokenizer_fingerprint"]
        info = self.manifest["splits"][split]
        self.documents: int = info["documents"]
        self._maps: list[np.memmap] = []
        self._starts: list[int] = []  # token offset of each shard in the flat view
        total = 0
        for shard in info["shards"]:
            if shard["tokens"] == 0:
                continue
            path = self.root / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * self.dtype.itemsize:
                raise ShardError(f"{path} is missing or has the wrong size", "prepare the dataset again")
            self._maps.append(np.memmap(path, dtype=self.dtype, mode="r"))
            self._starts.append(total)
            total += shard["tokens"]
        self._len = total

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"TokenShards({str(self.root)!r}, {self.split!r}, tokens={self._len}, documents={self.documents})"

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("TokenShards supports contiguous slices only, e.g. shards[a:b]")
        start, stop, _ = index.indices(self._len)
        return self.read(start, max(0, stop - start))

    def read(self, start: int, length: int) -> np.ndarray:
        """``length`` tokens from flat position ``start`` (a copy, in the shards' dtype)."""
        if start < 0 or start + length > self._len:
            raise IndexError(f"tokens [{start}, {start + length}) are outside [0, {self._len})")
        if length == 0:
            return np.empty(0, dtype=self.dtype)
        pieces = []
        i = bisect.bisect_right(self._starts, start) - 1
        while length > 0:
            offset = start - self._starts[i]
            take = min(length, len(self._maps[i]) - offset)
            pieces.append(self._maps[i][offset:offset + take])
            start, length, i = start + take, length - take, i + 1
        return np.concatenate(pieces) if len(pieces) != 1 else np.array(pieces[0])
