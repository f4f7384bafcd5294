"""Recipes: run curation steps over streamed batches, with per-step statistics and examples.

>>> from training.core.curate import Pipeline, LengthFilter
>>> pipe = Pipeline([LengthFilter(min_words=3)])
>>> [d["id"] for d in pipe.run([{"id": "a", "text": "one two three"}, {"id": "b", "text": "one"}])]
['a']
>>> pipe.report()["steps"][0]["by_rule"]
{'too_few_words': 1}
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.core.config import ConfigError
from training.core.curate.balance import Balance
from training.core.curate.base import DROP, Decision, Doc, Step, StepResult, batched
from training.core.curate.decontam import Decontaminate
from training.core.curate.dedup import SIGNATURE_KEY, ExactDedup, MinHashConfig, NearDedup, minhash_signatures
from training.core.curate.extract import ExtractHTML, Normalize
from training.core.curate.filters import LanguageFilter, ToxicityFilter
from training.core.curate.pii import ENTITIES as PII_ENTITIES
from training.core.curate.pii import RedactPII
from training.core.curate.quality import C4Filter, FineWebQuality, GopherQuality, GopherRepetition
from training.core.curate.segment import LengthFilter, Segment

STEP_TYPES: dict[str, type[Step]] = {cls.name: cls for cls in (
    ExtractHTML, Normalize, ExactDedup, NearDedup, LengthFilter, LanguageFilter, GopherRepetition,
    GopherQuality, C4Filter, FineWebQuality, ToxicityFilter, RedactPII, Decontaminate, Segment, Balance)}
STATEFUL = {"exact_dedup", "near_dedup"}  # steps whose result depends on earlier batches
COMPOSITION_FIELDS = ("source", "domain", "language")


@dataclass
class StepStats:
    """Counters of one step over a run."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    words_in: int = 0
    words_out: int = 0
    docs_dropped: int = 0
    docs_modified: int = 0
    seconds: float = 0.0
    by_rule: Counter = field(default_factory=Counter)
    chars_removed_by_rule: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out,
            "chars_in": self.chars_in, "chars_out": self.chars_out,
            "words_in": self.words_in, "words_out": self.words_out,
            "docs_dropped": self.docs_dropped, "docs_modified": self.docs_modified,
            "pct_docs_removed": round(100.0 * self.docs_dropped / self.docs_in, 3) if self.docs_in else 0.0,
            "pct_chars_removed": round(100.0 * (self.chars_in - self.chars_out) / self.chars_in, 3)
            if self.chars_in else 0.0,
            "seconds": round(self.seconds, 4),
            "by_rule": dict(self.by_rule.most_common()),
            "chars_removed_by_rule": dict(self.chars_removed_by_rule.most_common()),
            "examples": self.examples,
        }


def _example(doc: Doc | None, decision: Decision | None, max_chars: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if doc is not None:
        out["id"] = str(doc["id"])
        out["text"] = doc["text"][:max_chars]
    if decision is not None:
        out.update({"id": decision.doc_id, "value": decision.value, "threshold": decision.threshold,
                    "action": decision.action})
        if decision.detail:
            out["detail"] = decision.detail
    return out


class Pipeline:
    """Run steps in order over batches of documents (memory bounded by the batch size and the
    dedup indexes), keeping :class:`StepStats` per step and up to ``max_examples`` removed or
    changed documents per rule (and as many kept ones per step, key ``"kept"``).

    ``on_decisions(step_name, decisions, batch_docs)`` receives every batch's decisions (the
    studio stores them as the audit trail); ``on_batch(report)`` is called after each batch with
    running totals (for live progress).
    """

    def __init__(self, steps: list[Step], *, max_examples: int = 5, example_chars: int = 600,
                 on_decisions: Callable[[str, list[Decision], list[Doc]], None] | None = None,
                 on_batch: Callable[[dict[str, Any]], None] | None = None) -> None:
        names = [s.name for s in steps]
        self.steps = steps
        self.max_examples = max_examples
        self.example_chars = example_chars
        self.on_decisions = on_decisions
        self.on_batch = on_batch
        keys = [f"{n}#{names[:i].count(n)}" if names.count(n) > 1 else n for i, n in enumerate(names)]
        self.stats = [StepStats(k) for k in keys]
        self.docs_in = 0
        self.docs_out = 0
        self.batches = 0
        self._t0: float | None = None
        self._word_cache: dict[int, int] = {}  # id(doc) -> words, for the documents of one batch
        # composition of the input and output: field -> value -> [documents, characters]
        self._composition: dict[str, dict[str, dict[str, list[int]]]] = {"in": {}, "out": {}}

    # -- recipes -------------------------------------------------------------------------------
    @classmethod
    def from_recipe(cls, recipe: list[dict[str, Any]], **kwargs: Any) -> "Pipeline":
        """Build from ``[{"step": name, "config": {...}}, ...]`` (see :data:`STEP_TYPES`)."""
        return cls([build_step(item) for item in recipe], **kwargs)

    def to_recipe(self) -> list[dict[str, Any]]:
        return [{"step": s.name, "config": s.config.to_dict()} for s in self.steps]

    # -- running -------------------------------------------------------------------------------
    def _words(self, doc: Doc) -> int:
        """Whitespace words of a document, counted once per document object in a batch."""
        n = self._word_cache.get(id(doc))
        if n is None:
            n = self._word_cache[id(doc)] = len(doc["text"].split())
        return n

    def _record(self, i: int, docs: list[Doc], result: StepResult, seconds: float) -> None:
        st = self.stats[i]
        st.seconds += seconds
        st.docs_in += len(docs)
        st.docs_out += len(result.kept)
        st.chars_in += sum(len(d["text"]) for d in docs)
        st.chars_out += sum(len(d["text"]) for d in result.kept)
        st.words_in += sum(map(self._words, docs))
        st.words_out += sum(map(self._words, result.kept))
        by_id = {str(d["id"]): d for d in docs} if result.decisions else {}
        for dec in result.decisions:
            st.by_rule[dec.rule] += 1
            doc = by_id.get(dec.doc_id)
            if dec.action == DROP:
                st.docs_dropped += 1
                st.chars_removed_by_rule[dec.rule] += len(doc["text"]) if doc else 0
            else:
                st.docs_modified += 1
            ex = st.examples.setdefault(dec.rule, [])
            if len(ex) < self.max_examples:
                ex.append(_example(doc, dec, self.example_chars))
        kept_ex = st.examples.setdefault("kept", [])
        for d in result.kept[: max(0, self.max_examples - len(kept_ex))]:
            kept_ex.append(_example(d, None, self.example_chars))
        if self.on_decisions is not None and result.decisions:
            self.on_decisions(st.name, result.decisions, docs)

    def _compose(self, side: str, docs: list[Doc]) -> None:
        for field_name in COMPOSITION_FIELDS:
            table = self._composition[side].setdefault(field_name, {})
            for d in docs:
                cell = table.setdefault(str(d.get(field_name, "unknown")), [0, 0])
                cell[0] += 1
                cell[1] += len(d["text"])

    def composition(self) -> dict[str, Any]:
        """Documents and characters by source, domain and language, before and after the run
        (the composition section of a datasheet)."""
        return {side: {f: {v: {"docs": c[0], "chars": c[1]} for v, c in sorted(table.items())}
                       for f, table in fields.items()}
                for side, fields in self._composition.items()}

    def process_batch(self, docs: list[Doc], start: int = 0) -> list[Doc]:
        """Run steps ``start..`` over one batch and return the kept documents."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        if start == 0:
            self.docs_in += len(docs)
            self._word_cache = {}
            self._compose("in", docs)
        for i in range(start, len(self.steps)):
            if not docs:
                break
            t = time.perf_counter()
            result = self.steps[i].process(docs)
            self._record(i, docs, result, time.perf_counter() - t)
            docs = result.kept
        self.docs_out += len(docs)
        self._compose("out", docs)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(self.progress())
        return docs

    def run(self, docs: Iterable[Doc], batch_size: int = 256, workers: int = 1) -> Iterator[Doc]:
        """Stream ``docs`` through the steps; yields kept documents in input order.

        With ``workers > 1`` the leading stateless steps (everything before the first dedup
        step) run in a pool of worker processes, the rest in this process.
        """
        for kept in self.run_batches(batched(docs, batch_size), workers):
            yield from kept

    def run_batches(self, batches: Iterable[list[Doc]], workers: int = 1) -> Iterator[list[Doc]]:
        """Like :meth:`run` over batches the caller forms: yields the kept documents of each
        input batch (one list per batch, possibly empty), in order. The caller's batch
        boundaries are kept, so a run cut into shards gives the same results as one piece."""
        split = next((i for i, s in enumerate(self.steps) if s.name in STATEFUL), len(self.steps))
        if workers <= 1 or split == 0:
            for batch in batches:
                yield self.process_batch(batch)
            return
        ctx = mp.get_context("fork")
        presign = self._presign_config(split)
        with ctx.Pool(workers, initializer=_init_worker, initargs=(self.steps[:split], presign)) as pool:
            pending: deque = deque()  # at most 2 batches per worker in flight: bounded memory
            for batch in batches:
                pending.append(pool.apply_async(_work, (batch,)))
                if len(pending) >= 2 * workers:
                    yield list(self._finish_parallel(*pending.popleft().get(), split))
            while pending:
                yield list(self._finish_parallel(*pending.popleft().get(), split))

    def _presign_config(self, split: int) -> MinHashConfig | None:
        """The near-dedup config when its MinHash signatures can be computed in the workers: the
        steps between the workers' part and ``near_dedup`` are exact dedup only (it does not
        change texts), so the signatures of the workers' output are those near dedup would compute."""
        for step in self.steps[split:]:
            if step.name == "near_dedup":
                return step.config  # type: ignore[return-value]
            if step.name != "exact_dedup":
                return None
        return None

    def _finish_parallel(self, batch: list[Doc], results: list[tuple[StepResult, float]],
                         signatures: tuple[np.ndarray, float] | None, split: int) -> Iterator[Doc]:
        """Record the worker's step results for one batch, then run the remaining steps here."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        self.docs_in += len(batch)
        self._word_cache = {}
        self._compose("in", batch)
        cur = batch
        for i, (result, seconds) in enumerate(results):
            self._record(i, cur, result, seconds)
            cur = result.kept
        if signatures is not None:
            for doc, row in zip(cur, signatures[0]):
                doc[SIGNATURE_KEY] = row  # taken (and removed) by NearDedup.process
            near = next(i for i in range(split, len(self.steps)) if self.steps[i].name == "near_dedup")
            self.stats[near].seconds += signatures[1]  # the signatures' time counts for near dedup
        if split < len(self.steps) and cur:
            yield from self.process_batch(cur, start=split)  # counts the batch and docs out
            return
        self.docs_out += len(cur)
        self._compose("out", cur)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(self.progress())
        yield from cur

    def run_all(self, docs: Iterable[Doc], batch_size: int = 256, workers: int = 1) -> tuple[list[Doc], dict[str, Any]]:
        """Run to completion: ``(kept documents, report)``."""
        kept = list(self.run(docs, batch_size, workers))
        return kept, self.report()

    def progress(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "batches": self.batches,
                "elapsed_s": round(elapsed, 3), "docs_per_s": round(self.docs_in / elapsed, 2) if elapsed else 0.0,
                "steps": {s.name: {"docs_in": s.docs_in, "docs_out": s.docs_out} for s in self.stats}}

    def report(self) -> dict[str, Any]:
        """Per-step statistics, examples per rule, and totals."""
        first, last = (self.stats[0], self.stats[-1]) if self.stats else (StepStats(""), StepStats(""))
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "chars_in": first.chars_in,
                "chars_out": last.chars_out, "words_in": first.words_in, "words_out": last.words_out,
                "recipe": self.to_recipe(), "steps": [s.to_dict() for s in self.stats],
                "composition": self.composition(),
                "skipped": {s.name: s.skipped for s in self.steps if getattr(s, "skipped", None)}}

    def state_dict(self) -> dict[str, Any]:
        """The running statistics as plain JSON data (to resume a run: :meth:`load_state_dict`)."""
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "batches": self.batches,
                "stats": [{**s.to_dict(), "by_rule": dict(s.by_rule),
                           "chars_removed_by_rule": dict(s.chars_removed_by_rule)} for s in self.stats],
                "composition": self._composition}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the statistics saved by :meth:`state_dict` (the steps' own state is separate)."""
        self.docs_in, self.docs_out, self.batches = state["docs_in"], state["docs_out"], state["batches"]
        for st, saved in zip(self.stats, state["stats"]):
            for key in ("docs_in", "docs_out", "chars_in", "chars_out", "words_in", "words_out",
                        "docs_dropped", "docs_modified", "seconds"):
                setattr(st, key, saved[key])
            st.by_rule = Counter(saved["by_rule"])
            st.chars_removed_by_rule = Counter(saved["chars_removed_by_rule"])
            st.examples = {k: list(v) for k, v in saved["examples"].items()}
        self._composition = state["composition"]

    def reset(self) -> None:
        for s in self.steps:
            s.reset()
        self.__init__(self.steps, max_examples=self.max_examples, example_chars=self.example_chars,  # type: ignore[misc]
                      on_decisions=self.on_decisions, on_batch=self.on_batch)


_WORKER_STEPS: list[Step] = []
_WORKER_PRESIGN: MinHashConfig | None = None


def _init_worker(steps: list[Step], presign: MinHashConfig | None = None) -> None:
    global _WORKER_STEPS, _WORKER_PRESIGN
    _WORKER_STEPS, _WORKER_PRESIGN = steps, presign


def _work(batch: list[Doc]) -> tuple[list[Doc], list[tuple[StepResult, float]], tuple[np.ndarray, float] | None]:
    """The workers' steps over one batch, and the MinHash signatures of what they kept (with the
    seconds they took) when near dedup can use them."""
    out = []
    cur = batch
    for step in _WORKER_STEPS:
        t = time.perf_counter()
        res = step.process(cur) if cur else StepResult([], [])
        out.append((res, time.perf_counter() - t))
        cur = res.kept
    signatures = None
    if _WORKER_PRESIGN is not None and cur:
        t = time.perf_counter()
        signatures = (minhash_signatures([d["text"] for d in cur], _WORKER_PRESIGN), time.perf_counter() - t)
    return batch, out, signatures


def build_step(item: dict[str, Any]) -> Step:
    """One step from ``{"step": name, "config": {...}}``."""
    name = item.get("step")
    if name not in STEP_TYPES:
        raise ConfigError("step", f"unknown step {name!r}", f"choose one of {', '.join(sorted(STEP_TYPES))}")
    cls = STEP_TYPES[name]
    cfg = item.get("config") or {}
    try:
        return cls(cls.config_class.from_dict(cfg))
    except ConfigError as e:
        raise ConfigError(f"{name}.{e.field}", e.message, e.hint) from None


def default_recipe() -> list[dict[str, Any]]:
    """The FineWeb-like default: extract HTML, normalize, length, English only, Gopher repetition
    and quality (datatrove thresholds), profanity, PII redaction (every type but person names,
    which need the much slower NER model: add ``"PERSON"`` to ``entities`` to redact them too),
    then exact and near dedup.

    Filters come before dedup (as in FineWeb): they are stateless, so a parallel run spreads them
    over worker processes, and dedup then only indexes documents that survived.
    """
    return [
        {"step": "extract", "config": {}},
        {"step": "normalize", "config": {}},
        {"step": "length", "config": {"min_chars": 200}},
        {"step": "language", "config": {"allowed": ["en"], "threshold": 0.65}},
        {"step": "gopher_repetition", "config": {}},
        {"step": "gopher_quality", "config": {}},
        {"step": "toxicity", "config": {}},
        # person names (spaCy NER) are opt-in: NER is about 100x slower than every other step
        {"step": "pii", "config": {"entities": [e for e in PII_ENTITIES if e != "PERSON"]}},
        {"step": "exact_dedup", "config": {}},
        {"step": "near_dedup", "config": {}},
    ]


def preview(step: Step, docs: list[Doc], value_field: str, *, bins: int = 20, examples: int = 3,
            example_chars: int = 300) -> dict[str, Any]:
    """Histogram of a step's measured ``value_field`` on a sample, with the threshold and the
    documents nearest the cut on each side (so a user sees what a threshold keeps and removes)."""
    thresholds = step.thresholds()
    if value_field not in thresholds:
        raise ConfigError("value_field", f"{step.name} measures no {value_field!r}",
                          f"choose one of {', '.join(thresholds)}")
    threshold = thresholds[value_field]
    values = np.array([step.measure(d)[value_field] for d in docs], dtype=np.float64)
    counts, edges = np.histogram(values, bins=bins) if values.size else (np.zeros(0), np.zeros(0))
    out: dict[str, Any] = {"step": step.name, "value_field": value_field, "threshold": threshold,
                           "n": int(values.size), "histogram": {"counts": counts.astype(int).tolist(),
                                                                "edges": np.round(edges, 6).tolist()},
                           "mean": float(values.mean()) if values.size else None}
    cuts = [t for t in (threshold if isinstance(threshold, (tuple, list)) else [threshold]) if t is not None]
    sides = []
    for cut in cuts:
        below = np.flatnonzero(values < cut)
        above = np.flatnonzero(values >= cut)
        below = below[np.argsort(cut - values[below])][:examples]
        above = above[np.argsort(values[above] - cut)][:examples]
        sides.append({"cut": cut, "n_below": int((values < cut).sum()), "n_above": int((values >= cut).sum()),
                      "below": [{"id": str(docs[i]["id"]), "value": float(values[i]),
                                 "text": docs[i]["text"][:example_chars]} for i in below],
                      "above": [{"id": str(docs[i]["id"]), "value": float(values[i]),
                                 "text": docs[i]["text"][:example_chars]} for i in above]})
    out["cuts"] = sides
    return out
