"""Packed, deterministic, rank-aware and resumable batches over token shards.

The split's tokens form one stream (documents separated by eos), cut into non-overlapping
chunks of ``seq_len + 1`` tokens that start every ``seq_len`` tokens: chunk ``c`` holds tokens
``[c * seq_len, (c + 1) * seq_len]``, giving ``inputs = chunk[:-1]`` and ``targets = chunk[1:]``.
Sequences therefore pack across document boundaries and waste no padding.

Each epoch visits the chunks in a permutation drawn from ``(seed, epoch)``. One step consumes a
global batch of ``micro_batch_size * world_size`` chunks; rank ``r`` takes rows
``[r * micro_batch_size, (r + 1) * micro_batch_size)`` of it, so ranks stacked in order see
exactly what a single rank with ``micro_batch_size * world_size`` would see. An epoch ends when
fewer than a global batch of chunks is left (the remainder is dropped, every batch is full).

The state is ``{"epoch", "position", "seed"}`` (position counts chunks into the epoch's
permutation, the same on every rank), so resuming reproduces the batches exactly, also with a
different world size as long as the global position is a multiple of the new global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.core.data.shards import ShardError, TokenShards


class PackedSampler:
    """Infinite iterator of ``(inputs, targets)`` LongTensors shaped (micro_batch_size, seq_len).

    >>> sampler = PackedSampler(shards, seq_len=128, micro_batch_size=4)  # doctest: +SKIP
    >>> inputs, targets = next(sampler)                                    # doctest: +SKIP
    """

    def __init__(
        self,
        shards: TokenShards,
        seq_len: int,
        micro_batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        val_shards: TokenShards | None = None,
    ) -> None:
        if seq_len < 1 or micro_batch_size < 1:
            raise ValueError("seq_len and micro_batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        self.shards = shards
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.global_batch = micro_batch_size * world_size
        self.num_chunks = max(0, (len(shards) - 1) // seq_len)
        if self.num_chunks < self.global_batch:
            raise ShardError(
                f"the {shards.split} split has {len(shards)} tokens: {self.num_chunks} sequences of {seq_len} tokens, "
                f"fewer than one global batch of {self.global_batch}",
                "add data, or lower seq_len, micro_batch_size or the number of ranks")
        self._val_shards = val_shards
        self.epoch = 0
        self.position = 0  # chunks of the current epoch's permutation already consumed (all ranks)
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    @classmethod
    def from_config(cls, cfg: Any, *, rank: int = 0, world_size: int = 1) -> "PackedSampler":
        """Build from a :class:`~training.core.config.DataConfig` (``dataset_dir``, ``seq_len``,
        ``micro_batch_size``, ``seed``)."""
        return cls(TokenShards(cfg.dataset_dir, "train"), cfg.seq_len, cfg.micro_batch_size,
                   rank=rank, world_size=world_size, seed=cfg.seed)

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch (the remainder of each epoch is dropped)."""
        return self.num_chunks // self.global_batch

    @property
    def tokens_per_step(self) -> int:
        """Tokens per global batch (all ranks together)."""
        return self.global_batch * self.seq_len

    # ---- iteration -------------------------------------------------------------------------

    def permutation(self, epoch: int) -> np.ndarray:
        """Order of the chunks in ``epoch`` (a pure function of seed, epoch and the chunk count)."""
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_chunks)
            self._perm_epoch = epoch
        return self._perm

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.global_batch > self.steps_per_epoch * self.global_batch:
            self.epoch += 1
            self.position = 0
        perm = self.permutation(self.epoch)
        start = self.position + self.rank * self.micro_batch_size
        chunks = perm[start:start + self.micro_batch_size]  # (micro_batch_size,)
        self.position += self.global_batch
        return self._batch(self.shards, chunks)

    def _batch(self, shards: TokenShards, chunks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.seq_len
        rows = np.stack([shards.read(int(c) * L, L + 1) for c in chunks]).astype(np.int64)  # (B, L + 1)
        data = torch.from_numpy(rows)
        return data[:, :-1], data[:, 1:]  # (B, L), (B, L)

    # ---- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "seed"}``: everything needed to continue with the same batches."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`, possibly saved by another rank)."""
        missing = {"epoch", "position", "seed"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; pass the dict from PackedSampler.state_dict()")
        if state["position"] % self.global_batch:
            raise ValueError(
                f"sampler position {state['position']} is not a multiple of the global batch {self.global_batch}",
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.seed = int(state["seed"])
        self._perm_epoch = -1

    # ---- validation ------------------------------------------------------------------------

    @property
    def val_shards(self) -> TokenShards:
        """The validation split next to the training shards (opened on first use)."""
        if self._val_shards is None:
            self._val_shards = TokenShards(Path(self.shards.root), "val")
        return self._val_shards

    def val_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` validation micro-batches of this rank, always the same ones.

        Validation chunks are taken in order (no shuffle); global batch ``i`` covers chunks
        ``[i * G, (i + 1) * G)`` with ``G = micro_batch_size * world_size``, and this rank takes its
        rows as in training. Fewer than ``n`` batches come back when the split is smaller.
        """
        val = self.val_shards
        available = max(0, (len(val) - 1) // self.seq_len) // self.global_batch
        if available == 0:
            raise ShardError(
                f"the validation split has {len(val)} tokens, less than one global batch of "
                f"{self.global_batch} x {self.seq_len + 1}",
                "prepare the dataset with a larger val_fraction, or lower seq_len / micro_batch_size")
        out = []
        for i in range(min(n, available)):
            start = i * self.global_batch + self.rank * self.micro_batch_size
            out.append(self._batch(val, np.arange(start, start + self.micro_batch_size)))
        return out
