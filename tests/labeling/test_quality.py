"""Quality maths against references: the krippendorff package, simulated Bradley–Terry votes,
and hand-counted annotator statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labeling import quality
from labeling.quality import Vote


@pytest.mark.parametrize("level,values", [("nominal", 4), ("interval", 7), ("ordinal", 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_matches_krippendorff_package(level, values, seed):  # noqa: ANN001
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(seed)
    coders, units = 6, 40
    truth = rng.integers(1, values + 1, size=units)
    data = np.where(rng.random((coders, units)) < 0.7, truth, rng.integers(1, values + 1, size=(coders, units)))
    data = data.astype(float)
    data[rng.random((coders, units)) < 0.3] = np.nan  # missing values
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
    assert quality.krippendorff_alpha(data, level) == pytest.approx(expected, abs=1e-10)


def test_alpha_hand_computed_and_edge_cases():
    # Krippendorff's textbook example (nominal): 2 coders, 10 units -> alpha = 0.095
    a = [[0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]]
    assert quality.krippendorff_alpha(a, "nominal") == pytest.approx(0.0952, abs=1e-3)
    assert quality.krippendorff_alpha([[1, 2, 3], [1, 2, 3]], "interval") == pytest.approx(1.0)
    assert math.isnan(quality.krippendorff_alpha([[1, 1], [1, 1]], "nominal"))  # nothing to disagree on
    assert math.isnan(quality.krippendorff_alpha([[1, np.nan], [np.nan, 2]], "nominal"))  # nothing pairable
    with pytest.raises(ValueError):
        quality.krippendorff_alpha([[1, 2]], "ratio-ish")


def test_reliability_matrix_places_values():
    m = quality.reliability_matrix([("x", 1, 3.0), ("y", 1, 2.0), ("y", 2, 1.0)])
    assert m.shape == (2, 2)
    assert m[0, 0] == 3.0 and m[1, 0] == 2.0 and m[1, 1] == 1.0 and np.isnan(m[0, 1])


def _simulate(strengths: dict[str, float], n: int, seed: int, tie_rate: float = 0.0) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(seed)
    names = list(strengths)
    battles = []
    for _ in range(n):
        i, j = rng.choice(len(names), size=2, replace=False)
        a, b = names[i], names[j]
        if rng.random() < tie_rate:
            battles.append((a, b, "tie"))
            continue
        p = 1 / (1 + math.exp(strengths[b] - strengths[a]))
        battles.append((a, b, "a" if rng.random() < p else "b"))
    return battles


def test_bradley_terry_recovers_known_strengths():
    truth = {"m0": -1.0, "m1": -0.3, "m2": 0.2, "m3": 1.1}
    battles = _simulate(truth, 20000, seed=3)
    fit = quality.bradley_terry(battles, prior=0.0)
    mean = np.mean(list(truth.values()))
    for m, s in truth.items():
        assert fit[m] == pytest.approx(s - mean, abs=0.06), m
    assert sorted(fit, key=fit.get) == ["m0", "m1", "m2", "m3"]


def test_bradley_terry_matches_logistic_mle():
    """The MM fixed point is the maximum-likelihood estimate: the gradient vanishes there."""
    battles = _simulate({"a": 0.0, "b": 0.5, "c": 1.0}, 600, seed=5)
    fit = quality.bradley_terry(battles, prior=0.0, iterations=5000, tol=1e-13)
    grad = dict.fromkeys(fit, 0.0)
    for a, b, w in battles:
        p = 1 / (1 + math.exp(fit[b] - fit[a]))
        y = 1.0 if w == "a" else 0.0
        grad[a] += y - p
        grad[b] -= y - p
    assert max(abs(g) for g in grad.values()) < 1e-6


def test_leaderboard_intervals_cover_truth():
    truth = {"small": -0.8, "medium": 0.0, "large": 0.8}
    battles = _simulate(truth, 3000, seed=11, tie_rate=0.1)
    rows = quality.leaderboard(battles, rounds=100, seed=1)
    assert [r["model"] for r in rows] == ["large", "medium", "small"]
    mean = np.mean(list(truth.values()))
    for r in rows:
        true_rating = 1000 + quality.ELO_SCALE * (truth[r["model"]] - mean)
        assert r["ci_low"] <= r["rating"] <= r["ci_high"]
        assert r["ci_low"] - 15 <= true_rating <= r["ci_high"] + 15
        assert r["battles"] > 0


def test_undefeated_model_stays_finite_with_prior():
    fit = quality.bradley_terry([("x", "y", "a")] * 10)
    assert all(math.isfinite(v) for v in fit.values()) and fit["x"] > fit["y"]


def test_annotator_stats_counts():
    votes = []
    # three annotators on 30 items; "lefty" always picks A; the others follow the longer answer (B)
    for item in range(30):
        votes.append(Vote(item, "lefty", "a", len_a=10, len_b=50, time_ms=500))
        votes.append(Vote(item, "p", "b", len_a=10, len_b=50, time_ms=8000))
        votes.append(Vote(item, "q", "b", len_a=10, len_b=50, time_ms=9000))
    votes.append(Vote(100, "p", "a", is_gold=True, gold_correct=True, time_ms=8000))
    votes.append(Vote(101, "p", "b", is_gold=True, gold_correct=False, time_ms=8000))
    rows = {r["annotator"]: r for r in quality.annotator_stats(votes, gold_min=2, gold_warn=0.8, gold_block=0.6)}
    assert rows["lefty"]["agreement"] == 0.0 and rows["lefty"]["compared"] == 30
    # q's others (lefty: A, p: B) split evenly, so there is no majority to compare with
    assert rows["q"]["agreement"] is None and rows["q"]["compared"] == 0
    assert rows["lefty"]["left_pick_rate"] == 1.0
    assert "position_bias" in rows["lefty"]["flags"] and "too_fast" in rows["lefty"]["flags"]
    assert rows["p"]["longer_pick_rate"] == 1.0  # gold votes have equal lengths: not counted
    assert rows["p"]["gold_accuracy"] == 0.5 and rows["p"]["gold_status"] == "block"
    assert "length_bias" in rows["q"]["flags"]


def test_majority_and_adjudication_queue():
    assert quality.majority(["a", "a", "b"]) == "a"
    assert quality.majority(["a", "b"]) is None
    votes = [Vote(1, u, c) for u, c in [("x", "a"), ("y", "a"), ("z", "a")]] + \
            [Vote(2, u, c) for u, c in [("x", "a"), ("y", "b"), ("z", "tie")]]
    queue = quality.adjudication_queue(votes)
    assert [r["item"] for r in queue] == [2, 1]
    assert queue[0]["agreement"] == pytest.approx(1 / 3) and queue[1]["majority"] == "a"
