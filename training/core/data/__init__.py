"""Data for training: token shards on disk and the packed, resumable sampler over them.

- :func:`prepare_shards` / :class:`TokenShards` (``shards.py``): documents -> memory-mapped tokens.
- :class:`PackedSampler` (``sampler.py``): deterministic, rank-aware, resumable packed batches.
"""

from training.core.data.sampler import PackedSampler
from training.core.data.shards import ShardError, TokenShards, prepare_shards, read_manifest

__all__ = ["PackedSampler", "ShardError", "TokenShards", "prepare_shards", "read_manifest"]
