"""Heuristic quality rules: Gopher quality, Gopher repetition, C4 and FineWeb.

Each rule set is a pure ``*_stats(text) -> dict`` (the measured values), a frozen config with the
thresholds, and a step that drops (or, for C4, edits) documents and records the rule, the value
and the threshold. The thresholds of the well-known implementations are presets, side by side:

>>> GopherQualityConfig.preset("dolma").word_length_stat
'median'
>>> [GopherRepetitionConfig.preset(p).dup_line_char_frac for p in ("datatrove", "dolma")]
[0.2, 0.3]

Sources: datatrove ``pipeline/filters/{gopher_quality,gopher_repetition,c4,fineweb_quality}_filter.py``;
Dolma v1.5 Gopher rules (tagger ``gopher_v1`` + mixer thresholds); NeMo Curator
``stages/text/filters/heuristic_filter.py`` defaults (NeMo expresses the repetition rules as
*unique* fractions, e.g. ``max_repeated_line_fraction=0.7`` keeps documents whose unique-line
fraction is >= 0.7, i.e. duplicate fraction <= 0.3; its character variants count the characters
of the distinct lines, which differs slightly from Gopher's "characters in duplicate lines").
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from training.core.config import ConfigError
from training.core.curate.base import (DROP, MODIFY, Decision, Doc, FilterStep, Step, StepConfig, StepResult,
                                       require, require_fraction)
from training.core.curate.text import lines as split_lines
from training.core.curate.text import paragraphs as split_paragraphs

PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»“”‘’…–—•·")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "-", "*", "‣", "◦", "▪")
ELLIPSES = ("...", "…")
TERMINAL_PUNCT = (".", "?", "!", '"', "'", "”", "’", "…", ":")
C4_TERMINAL = (".", "?", "!", '"', "'", "”", "’")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")
_CITATION = re.compile(r"\s*(?:\[\d+\]|\[citation needed\]|\[edit\])", re.I)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_WORD_RE = re.compile(r"\w+(?:['’]\w+)*")
_ALPHA_TOKEN = re.compile(r"\S*[^\W\d_]\S*")

PRESETS = ("datatrove", "dolma", "nemo")


class _Presets:
    _PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def preset(cls, name: str) -> Any:
        """The thresholds of a well-known implementation: one of ``datatrove``, ``dolma``, ``nemo``."""
        if name not in cls._PRESETS:
            raise ConfigError("preset", f"unknown preset {name!r}", f"choose one of {', '.join(cls._PRESETS)}")
        return cls(**cls._PRESETS[name])  # type: ignore[call-arg]


def _non_symbol(word: str) -> bool:
    return any(ch not in PUNCTUATION for ch in word)


# ------------------------------------------------------------------------------------------
# Gopher quality
# ------------------------------------------------------------------------------------------

def gopher_quality_stats(text: str) -> dict[str, float]:
    """Gopher quality measurements (Rae et al. 2021, appendix A): word counts and lengths,
    symbol ratios, bullet/ellipsis lines, alphabetic words, stop words.

    Words for counts and lengths are word tokens (punctuation split off, as datatrove's
    tokenizer does); ratios per word use whitespace tokens.
    """
    tokens = text.split()
    n_tokens = max(len(tokens), 1)
    real = _WORD_RE.findall(text)
    lengths = np.fromiter(map(len, real), dtype=np.int64, count=len(real))
    lines = split_lines(text) or [""]
    low_counts = Counter(_WORD_RE.findall(text.lower()))
    return {
        "n_words": float(len(real)),
        "mean_word_length": float(lengths.mean()) if lengths.size else 0.0,
        "median_word_length": float(np.median(lengths)) if lengths.size else 0.0,
        "hash_to_word_ratio": text.count("#") / n_tokens,
        "ellipsis_to_word_ratio": (text.count("...") + text.count("…")) / n_tokens,
        "bullet_lines_frac": sum(line.startswith(BULLETS) for line in lines) / len(lines),
        "ellipsis_lines_frac": sum(line.endswith(ELLIPSES) for line in lines) / len(lines),
        "alpha_words_frac": len(_ALPHA_TOKEN.findall(text)) / n_tokens,
        "stop_words": float(sum(low_counts[w] for w in STOP_WORDS)),
    }


@dataclass(frozen=True)
class GopherQualityConfig(StepConfig, _Presets):
    """Gopher quality thresholds (``None`` turns a rule off). Defaults: datatrove."""

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_word_length: float | None = 3.0
    max_word_length: float | None = 10.0
    word_length_stat: str = "mean"  # datatrove/NeMo: mean; Dolma: median
    max_hash_ratio: float | None = 0.1
    max_ellipsis_ratio: float | None = 0.1
    max_bullet_lines: float | None = 0.9
    max_ellipsis_lines: float | None = 0.3
    min_alpha_words: float | None = 0.8
    min_stop_words: int | None = 2

    _PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "datatrove": {},
        "dolma": {"word_length_stat": "median"},
        "nemo": {},
    }

    def __post_init__(self) -> None:
        require(self.word_length_stat in ("mean", "median"), "word_length_stat", "must be 'mean' or 'median'")
        for name in ("max_hash_ratio", "max_ellipsis_ratio", "max_bullet_lines", "max_ellipsis_lines",
                     "min_alpha_words"):
            require_fraction(getattr(self, name), name)
        if self.min_words is not None and self.max_words is not None:
            require(self.min_words <= self.max_words, "min_words", "must not exceed max_words")


def gopher_quality_violations(stats: dict[str, float], cfg: GopherQualityConfig) -> list[tuple[str, float, Any]]:
    """``(rule, value, threshold)`` for each Gopher quality rule the measurements break."""
    out: list[tuple[str, float, Any]] = []
    wl = stats["mean_word_length" if cfg.word_length_stat == "mean" else "median_word_length"]
    checks = [
        ("too_few_words", stats["n_words"], cfg.min_words, "<"),
        ("too_many_words", stats["n_words"], cfg.max_words, ">"),
        ("word_length_too_short", wl, cfg.min_word_length, "<"),
        ("word_length_too_long", wl, cfg.max_word_length, ">"),
        ("hash_ratio", stats["hash_to_word_ratio"], cfg.max_hash_ratio, ">"),
        ("ellipsis_ratio", stats["ellipsis_to_word_ratio"], cfg.max_ellipsis_ratio, ">"),
        ("bullet_lines", stats["bullet_lines_frac"], cfg.max_bullet_lines, ">"),
        ("ellipsis_lines", stats["ellipsis_lines_frac"], cfg.max_ellipsis_lines, ">"),
        ("alpha_words", stats["alpha_words_frac"], cfg.min_alpha_words, "<"),
        ("stop_words", stats["stop_words"], cfg.min_stop_words, "<"),
    ]
    for rule, value, threshold, op in checks:
        if threshold is not None and (value < threshold if op == "<" else value > threshold):
            out.append((f"gopher_{rule}", value, threshold))
    return out


class GopherQuality(FilterStep):
    """Drop documents that break a Gopher quality rule (reason codes ``gopher_*``)."""

    name = "gopher_quality"
    config_class = GopherQualityConfig

    def measure(self, doc: Doc) -> dict[str, float]:
        return gopher_quality_stats(doc["text"])

    def thresholds(self) -> dict[str, Any]:
        c: GopherQualityConfig = self.config  # type: ignore[assignment]
        wl = "mean_word_length" if c.word_length_stat == "mean" else "median_word_length"
        return {"n_words": (c.min_words, c.max_words), wl: (c.min_word_length, c.max_word_length),
                "hash_to_word_ratio": c.max_hash_ratio, "ellipsis_to_word_ratio": c.max_ellipsis_ratio,
                "bullet_lines_frac": c.max_bullet_lines, "ellipsis_lines_frac": c.max_ellipsis_lines,
                "alpha_words_frac": c.min_alpha_words, "stop_words": c.min_stop_words}

    def violations(self, doc: Doc) -> list[tuple[str, float, Any]]:
        return gopher_quality_violations(self.measure(doc), self.config)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Gopher repetition
# ------------------------------------------------------------------------------------------

def _dup_fractions(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier item, fraction of characters in those items)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_chars = 0
    for it in items:
        if it in seen:
            dup_n += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    total = sum(len(it) for it in items) or 1
    return dup_n / len(items), dup_chars / total


def _word_ids(words: list[str]) -> np.ndarray:
    """Integer id of each word (first-seen order), mixed into 64 bits."""
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.uint64, count=len(words))
    return ids * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)


def _ngram_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit keys of all word n-grams (``len(ids) - n + 1`` of them), vectorised."""
    m = ids.size - n + 1
    acc = np.zeros(m, dtype=np.uint64)
    for k in range(n):  # polynomial over the window; uint64 arithmetic wraps
        acc = acc * np.uint64(0xBF58476D1CE4E5B9) + ids[k:k + m]
    return acc


def top_ngram_char_frac(words: list[str], n: int, ids: np.ndarray | None = None) -> float:
    """Characters covered by the most frequent word n-gram (count x its characters) / all word characters."""
    total = sum(map(len, words))
    if len(words) < n or total == 0:
        return 0.0
    keys = _ngram_ids(_word_ids(words) if ids is None else ids, n)
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    best = int(np.argmax(counts))
    if counts[best] < 2:
        return 0.0
    start = int(first[best])
    return min(1.0, int(counts[best]) * sum(len(w) for w in words[start:start + n]) / total)


def dup_ngram_char_frac(words: list[str], n: int, ids: np.ndarray | None = None) -> float:
    """Characters of words covered by a repeated occurrence of a word n-gram / all word characters.

    Every occurrence of an n-gram after its first marks its ``n`` words (windows may overlap);
    datatrove skips ahead ``n`` words after a repeat, which can count slightly fewer words.
    """
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    total = int(lengths.sum())
    if len(words) < n or total == 0:
        return 0.0
    keys = _ngram_ids(_word_ids(words) if ids is None else ids, n)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    repeat = np.flatnonzero(first[inverse] < np.arange(keys.size))
    if repeat.size == 0:
        return 0.0
    diff = np.zeros(len(words) + 1, dtype=np.int64)
    np.add.at(diff, repeat, 1)
    np.add.at(diff, repeat + n, -1)
    covered = np.cumsum(diff[:-1]) > 0
    return float(lengths[covered].sum()) / total


def gopher_repetition_stats(text: str, top_ns: tuple[int, ...] = (2, 3, 4),
                            dup_ns: tuple[int, ...] = (5, 6, 7, 8, 9, 10)) -> dict[str, float]:
    """Gopher repetition measurements (Rae et al. 2021, table A1)."""
    line_frac, line_char = _dup_fractions(split_lines(text))
    para_frac, para_char = _dup_fractions(split_paragraphs(text))
    words = text.split()
    ids = _word_ids(words)
    out = {"dup_line_frac": line_frac, "dup_line_char_frac": line_char,
           "dup_para_frac": para_frac, "dup_para_char_frac": para_char}
    for n in top_ns:
        out[f"top_{n}gram_char_frac"] = top_ngram_char_frac(words, n, ids)
    for n in dup_ns:
        out[f"dup_{n}gram_char_frac"] = dup_ngram_char_frac(words, n, ids)
    return out


@dataclass(frozen=True)
class GopherRepetitionConfig(StepConfig, _Presets):
    """Gopher repetition thresholds (maximum fractions; ``None`` turns a rule off). Defaults: datatrove."""

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_ngram_char_frac: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_ngram_char_frac: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12),
                                                          (9, 0.11), (10, 0.10))

    _PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "datatrove": {},
        "dolma": {"dup_line_char_frac": 0.3, "dup_para_frac": None, "dup_para_char_frac": None},
        "nemo": {"dup_line_frac": 0.3, "dup_para_frac": 0.3, "dup_line_char_frac": 0.2, "dup_para_char_frac": 0.2},
    }

    def __post_init__(self) -> None:
        for name in ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac"):
            require_fraction(getattr(self, name), name)
        for name in ("top_ngram_char_frac", "dup_ngram_char_frac"):
            pairs = tuple(tuple(p) for p in getattr(self, name))
            object.__setattr__(self, name, pairs)
            for pair in pairs:
                require(len(pair) == 2 and int(pair[0]) >= 1, name, f"entries are (n, max fraction), got {pair!r}")
                require_fraction(pair[1], name)


class GopherRepetition(FilterStep):
    """Drop documents with too much repeated content (reason codes ``gopher_rep_*``)."""

    name = "gopher_repetition"
    config_class = GopherRepetitionConfig

    def measure(self, doc: Doc) -> dict[str, float]:
        c: GopherRepetitionConfig = self.config  # type: ignore[assignment]
        return gopher_repetition_stats(doc["text"], tuple(n for n, _ in c.top_ngram_char_frac),
                                       tuple(n for n, _ in c.dup_ngram_char_frac))

    def thresholds(self) -> dict[str, Any]:
        c: GopherRepetitionConfig = self.config  # type: ignore[assignment]
        out: dict[str, Any] = {k: getattr(c, k) for k in ("dup_line_frac", "dup_para_frac", "dup_line_char_frac",
                                                           "dup_para_char_frac")}
        out.update({f"top_{n}gram_char_frac": t for n, t in c.top_ngram_char_frac})
        out.update({f"dup_{n}gram_char_frac": t for n, t in c.dup_ngram_char_frac})
        return out

    def violations(self, doc: Doc) -> list[tuple[str, float, Any]]:
        stats = self.measure(doc)
        return [(f"gopher_rep_{k}", stats[k], t) for k, t in self.thresholds().items()
                if t is not None and stats[k] > t]


# ------------------------------------------------------------------------------------------
# C4
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class C4Config(StepConfig):
    """C4 rules (Raffel et al. 2020; datatrove ``C4QualityFilter`` defaults).

    Line rules remove lines; document rules drop the document. ``filter_no_terminal_punct``
    (True in C4, False in FineWeb) removes lines that do not end in terminal punctuation.
    """

    split_paragraph: bool = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int | None = 5
    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    def __post_init__(self) -> None:
        for name in ("min_num_sentences", "min_words_per_line", "max_word_length"):
            v = getattr(self, name)
            require(v is None or v >= 0, name, "must be >= 0 or null")


def c4_filter_text(text: str, cfg: C4Config | None = None) -> tuple[str | None, tuple[str, float, Any] | None, Counter]:
    """Apply the C4 rules to one text: ``(new text or None if dropped, drop reason, removed lines by rule)``."""
    cfg = cfg or C4Config()
    removed: Counter = Counter()
    low = text.lower()
    if cfg.filter_lorem_ipsum and "lorem ipsum" in low:
        return None, ("c4_lorem_ipsum", 1.0, None), removed
    if cfg.filter_curly_bracket and "{" in text:
        return None, ("c4_curly_bracket", float(text.count("{")), 0), removed
    raw_lines = text.split("\n") if cfg.split_paragraph else [text]
    kept: list[str] = []
    for line in raw_lines:
        line = line.strip()
        if not line:
            if kept and kept[-1] != "":
                kept.append("")  # keep paragraph breaks
            continue
        if cfg.remove_citations:
            line = _CITATION.sub("", line)
        words = line.split()
        line_low = line.lower()
        if cfg.max_word_length is not None and any(len(w) > cfg.max_word_length for w in words):
            removed["c4_long_word_line"] += 1
        elif cfg.filter_no_terminal_punct and not line.endswith(C4_TERMINAL):
            removed["c4_no_terminal_punct_line"] += 1
        elif cfg.min_words_per_line is not None and len(words) < cfg.min_words_per_line:
            removed["c4_short_line"] += 1
        elif cfg.filter_javascript and "javascript" in line_low:
            removed["c4_javascript_line"] += 1
        elif cfg.filter_policy and any(p in line_low for p in POLICY_SUBSTRINGS):
            removed["c4_policy_line"] += 1
        else:
            kept.append(line)
    while kept and kept[-1] == "":
        kept.pop()
    out = "\n".join(kept)
    if cfg.min_num_sentences is not None:
        n_sent = len(_SENTENCE_END.findall(out))
        if n_sent < cfg.min_num_sentences:
            return None, ("c4_too_few_sentences", float(n_sent), cfg.min_num_sentences), removed
    return out, None, removed


class C4Filter(Step):
    """C4 line and document rules; removed lines are a ``modify`` decision with counts per rule."""

    name = "c4"
    config_class = C4Config

    def measure(self, doc: Doc) -> dict[str, float]:
        out, _, removed = c4_filter_text(doc["text"], self.config)  # type: ignore[arg-type]
        return {"sentences_after": float(len(_SENTENCE_END.findall(out or ""))),
                "lines_removed": float(sum(removed.values()))}

    def thresholds(self) -> dict[str, Any]:
        return {"sentences_after": self.config.min_num_sentences}  # type: ignore[attr-defined]

    def process(self, docs: list[Doc]) -> StepResult:
        kept: list[Doc] = []
        decisions: list[Decision] = []
        for doc in docs:
            out, reason, removed = c4_filter_text(doc["text"], self.config)  # type: ignore[arg-type]
            if reason is not None:
                rule, value, threshold = reason
                decisions.append(Decision(str(doc["id"]), self.name, rule, DROP, value=value, threshold=threshold,
                                          detail={"lines_removed": dict(removed)} if removed else {}))
                continue
            if out != doc["text"]:
                rule = removed.most_common(1)[0][0] if removed else "c4_citations_removed"
                decisions.append(Decision(str(doc["id"]), self.name, rule, MODIFY,
                                          value=float(sum(removed.values())),
                                          detail={"lines_removed": dict(removed),
                                                  "chars_before": len(doc["text"]), "chars_after": len(out or "")}))
                doc = {**doc, "text": out}
            kept.append(doc)
        return StepResult(kept, decisions)


# ------------------------------------------------------------------------------------------
# FineWeb
# ------------------------------------------------------------------------------------------

def fineweb_stats(text: str) -> dict[str, float]:
    """FineWeb quality measurements (datatrove ``FineWebQualityFilter``)."""
    lines = split_lines(text)
    n_lines = max(len(lines), 1)
    words = text.split()
    _, dup_char = _dup_fractions(lines)
    return {
        "line_punct_ratio": sum(line.endswith(TERMINAL_PUNCT) for line in lines) / n_lines,
        "short_line_ratio": sum(len(line) <= 30 for line in lines) / n_lines,
        "char_dup_ratio": dup_char,
        "new_line_ratio": text.count("\n") / max(len(words), 1),
    }


@dataclass(frozen=True)
class FineWebConfig(StepConfig):
    """FineWeb thresholds (datatrove defaults)."""

    min_line_punct_ratio: float | None = 0.12
    max_short_line_ratio: float | None = 0.67
    max_char_dup_ratio: float | None = 0.01
    max_new_line_ratio: float | None = 0.3

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "max_new_line_ratio":
                require_fraction(getattr(self, f.name), f.name)


class FineWebQuality(FilterStep):
    """Drop documents that break a FineWeb rule (reason codes ``fineweb_*``)."""

    name = "fineweb"
    config_class = FineWebConfig

    def measure(self, doc: Doc) -> dict[str, float]:
        return fineweb_stats(doc["text"])

    def thresholds(self) -> dict[str, Any]:
        c: FineWebConfig = self.config  # type: ignore[assignment]
        return {"line_punct_ratio": c.min_line_punct_ratio, "short_line_ratio": c.max_short_line_ratio,
                "char_dup_ratio": c.max_char_dup_ratio, "new_line_ratio": c.max_new_line_ratio}

    def violations(self, doc: Doc) -> list[tuple[str, float, Any]]:
        s = self.measure(doc)
        c: FineWebConfig = self.config  # type: ignore[assignment]
        out = []
        if c.min_line_punct_ratio is not None and s["line_punct_ratio"] < c.min_line_punct_ratio:
            out.append(("fineweb_line_punct_ratio", s["line_punct_ratio"], c.min_line_punct_ratio))
        if c.max_short_line_ratio is not None and s["short_line_ratio"] > c.max_short_line_ratio:
            out.append(("fineweb_short_line_ratio", s["short_line_ratio"], c.max_short_line_ratio))
        if c.max_char_dup_ratio is not None and s["char_dup_ratio"] > c.max_char_dup_ratio:
            out.append(("fineweb_char_dup_ratio", s["char_dup_ratio"], c.max_char_dup_ratio))
        if c.max_new_line_ratio is not None and s["new_line_ratio"] > c.max_new_line_ratio:
            out.append(("fineweb_new_line_ratio", s["new_line_ratio"], c.max_new_line_ratio))
        return out


def presets_table() -> list[dict[str, Any]]:
    """The Gopher thresholds of datatrove, Dolma and NeMo side by side: one row per setting."""
    rows: list[dict[str, Any]] = []
    for cls in (GopherQualityConfig, GopherRepetitionConfig):
        presets = {p: cls.preset(p) for p in PRESETS}
        for f in fields(cls):
            values = {p: getattr(presets[p], f.name) for p in PRESETS}
            rows.append({"rule_set": cls.__name__.replace("Config", ""), "setting": f.name, **values,
                         "differs": len({repr(v) for v in values.values()}) > 1})
    return rows


