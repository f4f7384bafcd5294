"""Balancing a mixture across sources, domains or languages: target weights or temperature sampling.

For groups of sizes ``n_g`` (characters or tokens) with natural shares ``p_g = n_g / N``:

* target weights ``w_g``: target share ``q_g = w_g / sum(w)``;
* temperature ``T``: ``q_g = p_g**(1/T) / sum_h p_h**(1/T)`` (T = 1 keeps the natural mix, larger T
  flattens it towards uniform, as in multilingual pretraining);

and the sampling factor of group ``g`` is ``f_g = q_g * total / n_g`` (``total`` defaults to ``N``,
keeping the corpus size): ``f > 1`` up-samples (repeats), ``f < 1`` down-samples.

>>> f = sampling_factors({"books": 300.0, "code": 100.0}, temperature=1e9)
>>> round(f["books"]["factor"], 4), round(f["code"]["factor"], 4)
(0.6667, 2.0)
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from training.core.config import ConfigError
from training.core.curate.base import DROP, MODIFY, Decision, Doc, Step, StepConfig, StepResult, require


def sampling_factors(sizes: dict[str, float], *, weights: dict[str, float] | None = None,
                     temperature: float | None = None, total: float | None = None) -> dict[str, dict[str, float]]:
    """Per group: ``size``, ``share``, ``target_share``, ``factor`` and ``target_size``."""
    require(bool(sizes), "sizes", "no groups to balance")
    require(all(v > 0 for v in sizes.values()), "sizes", "every group needs a positive size")
    require((weights is None) != (temperature is None), "weights",
            "give either target weights or a temperature", "e.g. temperature=2.0")
    n_total = float(sum(sizes.values()))
    share = {g: v / n_total for g, v in sizes.items()}
    if weights is not None:
        missing = sorted(set(sizes) - set(weights))
        require(not missing, "weights", f"no weight for groups {missing}", "give every group a weight (0 drops it)")
        require(all(w >= 0 for w in weights.values()) and sum(weights[g] for g in sizes) > 0, "weights",
                "weights must be >= 0 and not all 0")
        z = sum(weights[g] for g in sizes)
        target = {g: weights[g] / z for g in sizes}
    else:
        require(temperature is not None and temperature > 0, "temperature", "must be > 0")
        powered = {g: share[g] ** (1.0 / float(temperature)) for g in sizes}  # type: ignore[operator]
        z = sum(powered.values())
        target = {g: powered[g] / z for g in sizes}
    out_total = n_total if total is None else float(total)
    return {g: {"size": sizes[g], "share": share[g], "target_share": target[g],
                "factor": target[g] * out_total / sizes[g], "target_size": target[g] * out_total}
            for g in sizes}


def _uniform(key: str, seed: int) -> float:
    """A deterministic uniform number in [0, 1) from a document id and a seed."""
    h = hashlib.blake2b(f"{seed}:{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def copies(doc_id: str, factor: float, seed: int = 0) -> int:
    """How many copies of a document a sampling factor gives: ``floor(f)`` plus one more with
    probability ``frac(f)`` (deterministic per id and seed; expected value exactly ``f``)."""
    base = math.floor(factor)
    return base + (1 if _uniform(doc_id, seed) < factor - base else 0)


@dataclass(frozen=True)
class BalanceConfig(StepConfig):
    """Resample documents by group (the metadata field ``by``) with precomputed ``factors``
    (from :func:`sampling_factors`, e.g. over a first pass's per-source sizes). Groups missing from
    ``factors`` keep factor ``default_factor``."""

    by: str = "source"
    factors: tuple[tuple[str, float], ...] = ()
    default_factor: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        pairs = self.factors.items() if isinstance(self.factors, dict) else self.factors
        object.__setattr__(self, "factors", tuple((str(g), float(f)) for g, f in pairs))
        require(all(f >= 0 for _, f in self.factors), "factors", "factors must be >= 0")
        require(self.default_factor >= 0, "default_factor", "must be >= 0")


class Balance(Step):
    """Down-sample (rule ``balance_downsampled``, a drop) or repeat (rule ``balance_upsampled``,
    copies get ids ``<id>@<k>``) documents by their group's factor."""

    name = "balance"
    config_class = BalanceConfig

    def process(self, docs: list[Doc]) -> StepResult:
        cfg: BalanceConfig = self.config  # type: ignore[assignment]
        factors = dict(cfg.factors)
        kept: list[Doc] = []
        decisions: list[Decision] = []
        for doc in docs:
            group = str(doc.get(cfg.by, ""))
            f = factors.get(group, cfg.default_factor)
            k = copies(str(doc["id"]), f, cfg.seed)
            if k == 0:
                decisions.append(Decision(str(doc["id"]), self.name, "balance_downsampled", DROP, value=round(f, 6),
                                          threshold=None, detail={"group": group}))
                continue
            kept.append(doc)
            for r in range(1, k):
                kept.append({**doc, "id": f"{doc['id']}@{r}", "repeat_of": doc["id"]})
            if k > 1:
                decisions.append(Decision(str(doc["id"]), self.name, "balance_upsampled", MODIFY, value=k,
                                          threshold=None, detail={"group": group, "factor": round(f, 6)}))
        return StepResult(kept, decisions)


def balance(docs: list[Doc], *, by: str = "source", weights: dict[str, float] | None = None,
            temperature: float | None = None, seed: int = 0, size: str = "chars") -> tuple[list[Doc], dict[str, Any]]:
    """Balance a list of documents by group: returns the resampled documents and the report
    (per group: size, share, target share, factor, and the documents/characters actually out)."""
    if size not in ("chars", "docs"):
        raise ConfigError("size", "must be 'chars' or 'docs'")
    sizes: Counter = Counter()
    for d in docs:
        sizes[str(d.get(by, ""))] += len(d["text"]) if size == "chars" else 1
    plan = sampling_factors(dict(sizes), weights=weights, temperature=temperature)
    step = Balance(BalanceConfig(by=by, factors=tuple((g, p["factor"]) for g, p in plan.items()), seed=seed))
    out = step.process(docs).kept
    got: Counter = Counter()
    for d in out:
        got[str(d.get(by, ""))] += len(d["text"]) if size == "chars" else 1
    for g in plan:
        plan[g]["size_out"] = float(got[g])
    return out, {"by": by, "size": size, "groups": plan}
