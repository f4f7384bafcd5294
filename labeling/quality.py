"""Quality control and analytics as pure functions over plain values (numpy only, no Django).

- :func:`krippendorff_alpha` — nominal, ordinal and interval α with missing values (the same
  coincidence-matrix definition as the ``krippendorff`` package).
- :func:`annotator_stats` — agreement with the majority of the others, gold accuracy with warn /
  block thresholds, left-pick rate (position bias), longer-pick rate (length bias), tie rate, speed.
- :func:`adjudication_queue` — items ordered by lowest agreement.
- :func:`bradley_terry` / :func:`leaderboard` — model strengths from pairwise battles (ties count
  half a win each) by the MM algorithm, on the Elo-like scale Chatbot Arena uses, with bootstrap CIs.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

LEVELS = ("nominal", "ordinal", "interval")


# ---- Krippendorff's alpha ---------------------------------------------------------------------

def _distance_matrix(values: np.ndarray, counts: np.ndarray, level: str) -> np.ndarray:
    """δ²(c, k) for every pair of observed values. values, counts: (V,)."""
    if level == "nominal":
        return 1.0 - np.eye(len(values))
    if level == "interval":
        return (values[:, None] - values[None, :]) ** 2
    if level == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(counts)])  # (V+1,)
        i = np.arange(len(values))
        lo, hi = np.minimum(i[:, None], i[None, :]), np.maximum(i[:, None], i[None, :])
        between = cum[hi + 1] - cum[lo]  # sum of counts from lo..hi inclusive
        return (between - (counts[lo] + counts[hi]) / 2.0) ** 2
    raise ValueError(f"unknown level {level!r}; use one of {LEVELS}")


def krippendorff_alpha(reliability_data: Sequence[Sequence[float]] | np.ndarray, level: str = "nominal") -> float:
    """Krippendorff's α for a (coders, units) matrix with ``nan`` for missing values.

    Units with fewer than two values are not pairable and are dropped. Returns ``nan`` when
    there is no disagreement to expect (a single observed value) or fewer than two pairable values.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; use one of {LEVELS}")
    data = np.asarray(reliability_data, dtype=float)  # (C, U)
    if data.ndim != 2:
        raise ValueError("reliability data must be a 2-D (coders, units) matrix")
    observed = ~np.isnan(data)
    pairable = observed.sum(axis=0) >= 2  # (U,)
    data, observed = data[:, pairable], observed[:, pairable]
    if data.size == 0 or not observed.any():
        return float("nan")
    values = np.unique(data[observed])  # (V,)
    if len(values) < 2:
        return float("nan")
    index = np.searchsorted(values, np.where(observed, data, values[0])).astype(int)  # (C, U)
    V, U = len(values), data.shape[1]
    unit_counts = np.zeros((U, V))  # n_uv: how often value v was given in unit u
    for c in range(data.shape[0]):
        np.add.at(unit_counts, (np.arange(U)[observed[c]], index[c][observed[c]]), 1.0)
    m_u = unit_counts.sum(axis=1)  # (U,)
    # coincidence matrix: o_ck = Σ_u (n_uc n_uk − [c=k] n_uc) / (m_u − 1)
    o = np.einsum("uc,uk,u->ck", unit_counts, unit_counts, 1.0 / (m_u - 1))
    o -= np.diag((unit_counts / (m_u - 1)[:, None]).sum(axis=0))
    n_v = o.sum(axis=0)  # (V,)
    n = n_v.sum()
    delta = _distance_matrix(values, n_v, level)
    expected = (np.outer(n_v, n_v) - np.diag(n_v)) / (n - 1)
    d_e = float((expected * delta).sum())
    if d_e == 0:
        return float("nan")
    return 1.0 - float((o * delta).sum()) / d_e


def reliability_matrix(judgements: Iterable[tuple[Any, Any, float]]) -> np.ndarray:
    """Build the (coders, units) matrix from ``(coder, unit, value)`` triples (nan where missing)."""
    triples = list(judgements)
    coders = sorted({c for c, _, _ in triples}, key=str)
    units = sorted({u for _, u, _ in triples}, key=str)
    ci = {c: i for i, c in enumerate(coders)}
    ui = {u: i for i, u in enumerate(units)}
    out = np.full((len(coders), len(units)), np.nan)
    for c, u, v in triples:
        out[ci[c], ui[u]] = v
    return out


# ---- per-annotator quality -------------------------------------------------------------------

@dataclass
class Vote:
    """One pairwise judgement, as the QC functions see it."""

    item: int
    annotator: Any
    choice: str  # "a" | "b" | "tie" | "both_bad"
    len_a: int = 0
    len_b: int = 0
    time_ms: int | None = None
    is_gold: bool = False
    gold_correct: bool | None = None


def majority(choices: Sequence[str]) -> str | None:
    """The most frequent choice, or None when two choices share the top count (or none given)."""
    if not choices:
        return None
    top = Counter(choices).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


def _z_from_half(k: int, n: int) -> float:
    """z-score of k successes in n trials against p = 0.5 (normal approximation)."""
    return 0.0 if n == 0 else (k - n / 2.0) / math.sqrt(n / 4.0)


def annotator_stats(votes: Sequence[Vote], *, gold_warn: float = 0.8, gold_block: float = 0.6,
                    gold_min: int = 5, fast_ms: int = 1500, fast_ratio: float = 0.3,
                    bias_min: int = 20, bias_z: float = 2.58) -> list[dict[str, Any]]:
    """Per-annotator quality: agreement with the majority of the *other* annotators on shared items,
    gold accuracy (``status`` ok / warn / block), left-pick and longer-pick rates with flags when
    they differ from ½ beyond ``bias_z`` (after ``bias_min`` decisive votes), tie rate, median time
    and a speed flag (median below ``fast_ms`` or below ``fast_ratio`` × the project median)."""
    by_item: dict[int, list[Vote]] = defaultdict(list)
    by_annotator: dict[Any, list[Vote]] = defaultdict(list)
    for v in votes:
        by_item[v.item].append(v)
        by_annotator[v.annotator].append(v)
    all_times = [v.time_ms for v in votes if v.time_ms is not None]
    project_median = float(np.median(all_times)) if all_times else None
    out = []
    for annotator, mine in sorted(by_annotator.items(), key=lambda kv: str(kv[0])):
        compared = agreed = 0
        for v in mine:
            others = [o.choice for o in by_item[v.item] if o.annotator != annotator]
            top = majority(others)
            if top is not None:
                compared += 1
                agreed += int(top == v.choice)
        gold = [v.gold_correct for v in mine if v.is_gold and v.gold_correct is not None]
        gold_acc = sum(gold) / len(gold) if gold else None
        status = "ok"
        if gold_acc is not None:
            if len(gold) >= gold_min and gold_acc < gold_block:
                status = "block"
            elif gold_acc < gold_warn:
                status = "warn"
        decisive = [v for v in mine if v.choice in ("a", "b")]
        lefts = sum(v.choice == "a" for v in decisive)
        by_length = [v for v in decisive if v.len_a != v.len_b]
        longer = sum((v.choice == "a") == (v.len_a > v.len_b) for v in by_length)
        times = [v.time_ms for v in mine if v.time_ms is not None]
        median_ms = float(np.median(times)) if times else None
        too_fast = median_ms is not None and (
            median_ms < fast_ms or (project_median is not None and median_ms < fast_ratio * project_median))
        flags = []
        if len(decisive) >= bias_min and abs(_z_from_half(lefts, len(decisive))) > bias_z:
            flags.append("position_bias")
        if len(by_length) >= bias_min and abs(_z_from_half(longer, len(by_length))) > bias_z:
            flags.append("length_bias")
        if too_fast:
            flags.append("too_fast")
        if status != "ok":
            flags.append(f"gold_{status}")
        out.append({
            "annotator": annotator,
            "judgements": len(mine),
            "agreement": agreed / compared if compared else None,
            "compared": compared,
            "gold_accuracy": gold_acc,
            "gold_judged": len(gold),
            "gold_status": status,
            "left_pick_rate": lefts / len(decisive) if decisive else None,
            "longer_pick_rate": longer / len(by_length) if by_length else None,
            "tie_rate": sum(v.choice in ("tie", "both_bad") for v in mine) / len(mine),
            "median_time_ms": median_ms,
            "flags": flags,
        })
    return out


def adjudication_queue(votes: Sequence[Vote], min_votes: int = 2) -> list[dict[str, Any]]:
    """Items with at least ``min_votes`` judgements, lowest agreement (share of the top choice) first."""
    by_item: dict[int, list[str]] = defaultdict(list)
    for v in votes:
        by_item[v.item].append(v.choice)
    rows = []
    for item, choices in by_item.items():
        if len(choices) < min_votes:
            continue
        counts = Counter(choices)
        rows.append({"item": item, "votes": dict(counts), "n": len(choices),
                     "agreement": counts.most_common(1)[0][1] / len(choices), "majority": majority(choices)})
    rows.sort(key=lambda r: (r["agreement"], -r["n"], r["item"]))
    return rows


# ---- Bradley–Terry ----------------------------------------------------------------------------

def bradley_terry(battles: Sequence[tuple[str, str, str]], *, iterations: int = 500, tol: float = 1e-9,
                  prior: float = 0.1) -> dict[str, float]:
    """Strengths ``log p_i`` (mean 0) from ``(model_a, model_b, winner)`` with winner in a/b/tie.

    P(i beats j) = p_i / (p_i + p_j). Ties count as half a win for each side; ``prior`` adds that
    many virtual ties between every pair that met, which keeps undefeated models finite.
    Fitted by Hunter's MM updates: p_i ← W_i / Σ_j n_ij / (p_i + p_j).
    """
    models = sorted({m for a, b, _ in battles for m in (a, b)})
    if not models:
        return {}
    idx = {m: i for i, m in enumerate(models)}
    K = len(models)
    wins = np.zeros((K, K))  # wins[i, j]: (half-)wins of i over j
    for a, b, w in battles:
        i, j = idx[a], idx[b]
        if i == j:
            continue
        if w == "a":
            wins[i, j] += 1
        elif w == "b":
            wins[j, i] += 1
        else:
            wins[i, j] += 0.5
            wins[j, i] += 0.5
    games = wins + wins.T  # (K, K)
    met = games > 0
    wins = wins + prior / 2 * met
    games = wins + wins.T
    w_total = wins.sum(axis=1)  # (K,)
    p = np.ones(K)
    for _ in range(iterations):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = np.where(denom > 0, w_total / np.where(denom > 0, denom, 1), p)
        new = new / np.exp(np.mean(np.log(new)))
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    logp = np.log(p)
    return {m: float(logp[idx[m]]) for m in models}


ELO_SCALE = 400.0 / math.log(10.0)


def leaderboard(battles: Sequence[tuple[str, str, str]], *, rounds: int = 200, seed: int = 0,
                base: float = 1000.0, level: float = 0.95) -> list[dict[str, Any]]:
    """Bradley–Terry ratings on the Elo scale (``base + 400·log10 p``) with bootstrap CIs.

    Battles are resampled with replacement ``rounds`` times; the interval is the central ``level``
    share of the bootstrap ratings. Sorted by rating, best first.
    """
    point = bradley_terry(battles)
    if not point:
        return []
    rng = np.random.default_rng(seed)
    data = list(battles)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        picks = rng.integers(0, len(data), size=len(data))
        fit = bradley_terry([data[k] for k in picks])
        for m in point:
            if m in fit:
                samples[m].append(fit[m])
    games = Counter(m for a, b, _ in data for m in (a, b))
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    rows = []
    for m, s in point.items():
        boot = np.array(samples[m]) if samples[m] else np.array([s])
        rows.append({"model": m, "rating": base + ELO_SCALE * s,
                     "ci_low": base + ELO_SCALE * float(np.percentile(boot, lo_q)),
                     "ci_high": base + ELO_SCALE * float(np.percentile(boot, hi_q)),
                     "battles": games[m]})
    rows.sort(key=lambda r: -r["rating"])
    return rows
