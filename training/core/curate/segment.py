"""Length filters and segmentation of documents into paragraphs or chunks.

>>> [len(c) <= 40 for c in chunk_text("One two three. " * 10, max_chars=40)]
[True, True, True, True, True]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from training.core.curate.base import MODIFY, Decision, Doc, FilterStep, Step, StepConfig, StepResult, require
from training.core.curate.text import paragraphs as split_paragraphs

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class LengthConfig(StepConfig):
    """Keep documents with ``min_chars <= chars <= max_chars`` and ``min_words <= words <= max_words``
    (``None`` switches a bound off)."""

    min_chars: int | None = 1
    max_chars: int | None = None
    min_words: int | None = None
    max_words: int | None = None

    def __post_init__(self) -> None:
        for lo, hi in (("min_chars", "max_chars"), ("min_words", "max_words")):
            a, b = getattr(self, lo), getattr(self, hi)
            require(a is None or a >= 0, lo, "must be >= 0 or null")
            require(a is None or b is None or a <= b, lo, f"must not exceed {hi}")


class LengthFilter(FilterStep):
    """Drop documents outside the length bounds (rules ``too_short_chars``, ``too_long_chars``,
    ``too_few_words``, ``too_many_words``)."""

    name = "length"
    config_class = LengthConfig

    def measure(self, doc: Doc) -> dict[str, float]:
        return {"chars": float(len(doc["text"])), "words": float(len(doc["text"].split()))}

    def thresholds(self) -> dict[str, Any]:
        c: LengthConfig = self.config  # type: ignore[assignment]
        return {"chars": (c.min_chars, c.max_chars), "words": (c.min_words, c.max_words)}

    def violations(self, doc: Doc) -> list[tuple[str, float, Any]]:
        c: LengthConfig = self.config  # type: ignore[assignment]
        m = self.measure(doc)
        out = []
        if c.min_chars is not None and m["chars"] < c.min_chars:
            out.append(("too_short_chars", m["chars"], c.min_chars))
        if c.max_chars is not None and m["chars"] > c.max_chars:
            out.append(("too_long_chars", m["chars"], c.max_chars))
        if c.min_words is not None and m["words"] < c.min_words:
            out.append(("too_few_words", m["words"], c.min_words))
        if c.max_words is not None and m["words"] > c.max_words:
            out.append(("too_many_words", m["words"], c.max_words))
        return out


def _split_long(piece: str, max_chars: int) -> list[str]:
    """Split a piece longer than ``max_chars`` at sentence, then word, then character boundaries."""
    if len(piece) <= max_chars:
        return [piece]
    units = _SENTENCE.split(piece)
    if len(units) == 1:
        units = piece.split(" ")
        if len(units) == 1:
            return [piece[i:i + max_chars] for i in range(0, len(piece), max_chars)]
    out: list[str] = []
    cur = ""
    for u in units:
        for part in _split_long(u, max_chars) if len(u) > max_chars else [u]:
            if cur and len(cur) + 1 + len(part) > max_chars:
                out.append(cur)
                cur = part
            else:
                cur = f"{cur} {part}" if cur else part
    if cur:
        out.append(cur)
    return out


def chunk_text(text: str, max_chars: int = 2000, *, by: str = "paragraph", overlap_chars: int = 0) -> list[str]:
    """Cut a text into segments of at most ``max_chars``.

    ``by="paragraph"``: one segment per paragraph, long paragraphs split at sentence boundaries;
    ``by="chunk"``: consecutive paragraphs packed together up to ``max_chars`` (joined by a blank
    line), with the last ``overlap_chars`` characters of a chunk repeated at the start of the next.
    """
    pieces = [p for para in split_paragraphs(text) for p in _split_long(para, max_chars)]
    if by == "paragraph":
        return pieces
    chunks: list[str] = []
    cur = ""
    for p in pieces:
        if cur and len(cur) + 2 + len(p) > max_chars:
            chunks.append(cur)
            tail = cur[-overlap_chars:] if overlap_chars else ""
            cur = (tail + " " + p).strip() if tail and len(tail) + 1 + len(p) <= max_chars else p
        else:
            cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        chunks.append(cur)
    return chunks


@dataclass(frozen=True)
class SegmentConfig(StepConfig):
    """Segmentation: ``by`` ``"paragraph"`` or ``"chunk"``, at most ``max_chars`` per segment,
    ``overlap_chars`` repeated between chunks, segments shorter than ``min_chars`` dropped."""

    by: str = "chunk"
    max_chars: int = 4000
    overlap_chars: int = 0
    min_chars: int = 1

    def __post_init__(self) -> None:
        require(self.by in ("paragraph", "chunk"), "by", "must be 'paragraph' or 'chunk'")
        require(self.max_chars >= 16, "max_chars", "must be >= 16")
        require(0 <= self.overlap_chars < self.max_chars, "overlap_chars", "must be in [0, max_chars)")
        require(self.min_chars >= 0, "min_chars", "must be >= 0")


class Segment(Step):
    """Replace each document by its segments (ids ``<id>#<k>``, ``parent_id`` kept); a split is
    recorded as rule ``segmented`` with the number of segments."""

    name = "segment"
    config_class = SegmentConfig

    def process(self, docs: list[Doc]) -> StepResult:
        cfg: SegmentConfig = self.config  # type: ignore[assignment]
        kept: list[Doc] = []
        decisions: list[Decision] = []
        for doc in docs:
            segs = [s for s in chunk_text(doc["text"], cfg.max_chars, by=cfg.by, overlap_chars=cfg.overlap_chars)
                    if len(s) >= cfg.min_chars]
            if len(segs) == 1 and segs[0] == doc["text"]:
                kept.append(doc)
                continue
            decisions.append(Decision(str(doc["id"]), self.name, "segmented", MODIFY, value=len(segs),
                                      threshold=cfg.max_chars))
            for k, s in enumerate(segs):
                kept.append({**doc, "id": f"{doc['id']}#{k}", "parent_id": doc["id"], "text": s})
        return StepResult(kept, decisions)
