"""Reading post-training records (JSONL or Parquet) and holding out an evaluation split.

The files are those ``labeling/export.py`` writes (TRL dataset formats): one record per line
in JSONL, or one per row in Parquet. Errors name the file and line and say what to fix.

>>> split_records([{"i": i} for i in range(10)], fraction=0.2, seed=0)[1]
[{'i': 7}, {'i': 8}]
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from training.core.config import ConfigError

__all__ = ["read_records", "split_records", "IndexSampler"]

Record = dict[str, Any]


def read_records(path: str | Path, field: str = "train_file") -> list[Record]:
    """Records of a ``.jsonl`` / ``.json`` (JSON lines) or ``.parquet`` file; ``field`` names the setting in errors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(field, f"{p} does not exist", "export the labeling snapshot to a JSONL or Parquet file")
    if p.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        except Exception as e:  # noqa: BLE001 - any pyarrow failure means an unreadable file
            raise ConfigError(field, f"cannot read {p} as Parquet ({e})", "re-export the snapshot") from None
    else:
        rows = []
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(field, f"{p}:{n} is not valid JSON ({e.msg})",
                                      "one JSON object per line (JSONL)") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ConfigError(field, f"record {bad + 1} of {p} is not a JSON object", "one JSON object per line")
    return rows


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """``(train, held_out)``: a seeded ``fraction`` of the records (at least one when fraction > 0
    and there are two or more records), in their original order."""
    if fraction <= 0 or len(records) < 2:
        return list(records), []
    n_eval = min(len(records) - 1, max(1, round(len(records) * fraction)))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


class IndexSampler:
    """Infinite, seeded, rank-aware and resumable micro-batches of example indices.

    Each epoch visits ``range(n)`` in a permutation drawn from ``(seed, epoch)``. One call of
    :meth:`next_batch` consumes a global batch of ``micro_batch_size * world_size`` indices; rank
    ``r`` gets rows ``[r * micro_batch_size, (r + 1) * micro_batch_size)`` of it. An epoch ends
    when fewer than a global batch is left (every batch is full). The state ``{"epoch",
    "position"}`` is the same on every rank.

    >>> s = IndexSampler(5, micro_batch_size=2, seed=0)
    >>> a = [s.next_batch() for _ in range(3)]; state = s.state_dict(); b = s.next_batch()
    >>> s2 = IndexSampler(5, micro_batch_size=2, seed=0); s2.load_state_dict(state); s2.next_batch() == b
    True
    """

    def __init__(self, n: int, micro_batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.global_batch = micro_batch_size * world_size
        if n < self.global_batch:
            raise ValueError(f"{n} examples are fewer than one global batch of {self.global_batch}; "
                             "lower micro_batch_size or add data")
        self.n, self.micro_batch_size, self.rank, self.seed = n, micro_batch_size, rank, seed
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None

    def _permutation(self) -> list[int]:
        if self._order is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(self.n, generator=g).tolist()
        return self._order

    def next_batch(self) -> list[int]:
        """This rank's indices for the next micro-batch."""
        if self.position + self.global_batch > self.n:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        order = self._permutation()
        start = self.position + self.rank * self.micro_batch_size
        self.position += self.global_batch
        return order[start:start + self.micro_batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("n", self.n)) != self.n:
            raise ValueError(f"the checkpoint's sampler covered {state.get('n')} examples, this data has {self.n}: "
                             "resume with the same train_file and settings")
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None
