"""Exact and MinHash-LSH near dedup on real Austen paragraphs with planted near duplicates."""

from __future__ import annotations

import random

import numpy as np
import pytest

from training.core.config import ConfigError
from training.core.curate import (ExactDedup, MinHashConfig, NearDedup, estimated_jaccard, false_negative_area,
                                  false_positive_area, jaccard, lsh_probability, minhash_signatures,
                                  near_duplicates, optimal_params, s_curve)


def _paragraphs(texts: list[str], min_words: int = 60) -> list[str]:
    return [p for t in texts for p in t.split("\n\n") if len(p.split()) >= min_words]


def _edit(text: str, rate: float, rng: random.Random) -> str:
    """Delete, substitute or insert words at ``rate``."""
    words = text.split()
    out: list[str] = []
    for w in words:
        r = rng.random()
        if r < rate / 3:
            continue
        if r < 2 * rate / 3:
            out.append(rng.choice(words))
        elif r < rate:
            out += [w, rng.choice(words)]
        else:
            out.append(w)
    return " ".join(out)


def _planted(texts: list[str], n_base: int, n_planted: int, seed: int = 0):
    rng = random.Random(seed)
    base = _paragraphs(texts)[:n_base]
    planted: list[tuple[int, str, float]] = []
    while len(planted) < n_planted:
        src = rng.randrange(len(base))
        t = _edit(base[src], rng.uniform(0.005, 0.03), rng)
        j = jaccard(t, base[src], 5)
        if j >= 0.8:
            planted.append((src, t, j))
    return base, planted


@pytest.mark.slow
def test_planted_near_duplicates_found_with_high_recall_and_precision(austen_texts: list[str]) -> None:
    base, planted = _planted(austen_texts, n_base=1500, n_planted=200)
    docs = base + [t for _, t, _ in planted]
    dups = near_duplicates(docs, MinHashConfig(), batch_size=500)
    found = {d: k for d, k, _ in dups}
    planted_idx = set(range(len(base), len(docs)))
    true_pos = found.keys() & planted_idx
    recall = len(true_pos) / len(planted_idx)
    # a detection is correct when it points to a real near duplicate (J >= 0.5), e.g. its source
    correct = sum(jaccard(docs[d], docs[k], 5) >= 0.5 for d, k in found.items())
    precision = correct / max(len(found), 1)
    assert recall >= 0.95, recall
    assert precision >= 0.95, precision
    for d in true_pos:  # each planted copy is matched with its source
        assert found[d] == planted[d - len(base)][0] or jaccard(docs[d], docs[found[d]], 5) >= 0.8


def test_estimated_jaccard_matches_exact_jaccard(austen_sample: list[str]) -> None:
    rng = random.Random(1)
    base = _paragraphs(austen_sample)[:40]
    pairs = [(p, _edit(p, rng.uniform(0.0, 0.3), rng)) for p in base]
    cfg = MinHashConfig(num_perm=256, bands=32, rows=8)
    sig_a = minhash_signatures([a for a, _ in pairs], cfg)
    sig_b = minhash_signatures([b for _, b in pairs], cfg)
    est = estimated_jaccard(sig_a, sig_b)
    true = np.array([jaccard(a, b, 5) for a, b in pairs])
    err = est - true
    assert abs(err.mean()) < 0.02  # unbiased
    assert np.abs(err).max() < 0.12  # 256 permutations: std <= 1/(2*sqrt(256)) = 0.031
    assert np.all(minhash_signatures(["same text here"] * 2, cfg)[0] == minhash_signatures(["same text here"], cfg)[0])


def test_signatures_do_not_depend_on_batching(austen_sample: list[str]) -> None:
    texts = _paragraphs(austen_sample, 5)[:50] + ["", "two words"]
    cfg = MinHashConfig(num_perm=64, bands=8, rows=8)
    whole = minhash_signatures(texts, cfg)
    parts = np.concatenate([minhash_signatures(texts[i:i + 7], cfg) for i in range(0, len(texts), 7)])
    assert np.array_equal(whole, parts)
    assert np.all(whole[-2] == np.iinfo(np.uint32).max)  # empty text matches nothing


def test_streaming_step_equals_one_batch_and_disk_store(austen_sample: list[str], tmp_path) -> None:
    base, planted = _planted(austen_sample, n_base=60, n_planted=15, seed=3)
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(base + [t for _, t, _ in planted])]
    one = NearDedup().process(docs)
    step = NearDedup(workdir=str(tmp_path))
    kept, decisions = [], []
    for i in range(0, len(docs), 16):
        r = step.process(docs[i:i + 16])
        kept += r.kept
        decisions += r.decisions
    assert [d["id"] for d in kept] == [d["id"] for d in one.kept]
    assert [(d.doc_id, d.detail["duplicate_of"]) for d in decisions] == \
        [(d.doc_id, d.detail["duplicate_of"]) for d in one.decisions]
    assert len(decisions) >= 14
    dec = decisions[0]
    assert dec.step == "near_dedup" and dec.rule == "near_duplicate" and dec.action == "drop"
    assert dec.value >= dec.threshold == 0.7
    step.reset()


def test_exact_dedup_ignores_case_and_spacing() -> None:
    docs = [{"id": "a", "text": "Hello, World!"}, {"id": "b", "text": "hello   world"},
            {"id": "c", "text": "Hello there"}]
    r = ExactDedup().process(docs)
    assert [d["id"] for d in r.kept] == ["a", "c"]
    assert r.decisions[0].rule == "exact_duplicate" and r.decisions[0].detail == {"duplicate_of": "a"}
    assert [d["id"] for d in ExactDedup(normalize=False).process(docs).kept] == ["a", "b", "c"]


def test_lsh_s_curve_by_hand() -> None:
    # datatrove's comment: 14 x 8, s = 0.8 -> 1 - (1 - 0.8^8)^14 = 0.924
    assert lsh_probability(0.8, 14, 8) == pytest.approx(1 - (1 - 0.8**8) ** 14, abs=1e-12)
    assert lsh_probability(0.0, 14, 8) == 0.0 and lsh_probability(1.0, 14, 8) == 1.0
    s = np.linspace(0, 1, 11)
    assert np.all(np.diff(lsh_probability(s, 20, 5)) >= 0)  # monotone
    # areas by hand for b = r = 1: P(s) = s -> FP = t^2/2, FN = (1-t)^2/2
    assert false_positive_area(0.6, 1, 1) == pytest.approx(0.18, abs=1e-6)
    assert false_negative_area(0.6, 1, 1) == pytest.approx(0.08, abs=1e-6)
    curve = s_curve(14, 8, threshold=0.8)
    assert curve["knee"] == pytest.approx((1 / 14) ** (1 / 8), abs=1e-4)
    assert curve["p_candidate_at_threshold"] == pytest.approx(0.924, abs=1e-3)


def test_optimal_params_minimizes_the_weighted_error() -> None:
    b, r = optimal_params(0.8, 128)
    assert b * r <= 128
    err = false_positive_area(0.8, b, r, 51) + false_negative_area(0.8, b, r, 51)
    for bb in range(1, 129):  # brute-force oracle on a coarser subset
        for rr in (1, 2, 4, 8, 16):
            if bb * rr <= 128:
                assert err <= false_positive_area(0.8, bb, rr, 51) + false_negative_area(0.8, bb, rr, 51) + 1e-9
    datasketch = pytest.importorskip("datasketch.lsh")
    assert (b, r) == datasketch._optimal_param(0.8, 128, 0.5, 0.5)


def test_minhash_config_validation() -> None:
    with pytest.raises(ConfigError, match="bands"):
        MinHashConfig(num_perm=64, bands=14, rows=8)
    with pytest.raises(ConfigError, match="threshold"):
        MinHashConfig(threshold=1.5)
    assert MinHashConfig(bands=0, rows=0, num_perm=128, threshold=0.8).band_rows() == optimal_params(0.8, 128)


@pytest.mark.parametrize("on_disk", [False, True])
def test_sorted_runs_match_a_dict_oracle(on_disk: bool, tmp_path) -> None:
    from training.core.curate.dedup import SortedRuns

    rng = np.random.default_rng(0)
    runs = SortedRuns(2, tmp_path if on_disk else None)
    oracle: list[dict[int, list[int]]] = [{}, {}]
    value = 0
    for size in [5, 40, 3, 17, 64, 1, 90, 2]:  # uneven batches exercise the LSM merges
        keys = rng.integers(0, 50, size=(size, 2)).astype(np.uint64)  # many repeats
        vals = np.arange(value, value + size)
        value += size
        runs.add(keys, vals)
        for row, v in zip(keys, vals):
            for j in range(2):
                oracle[j].setdefault(int(row[j]), []).append(int(v))
    assert len(runs) == value and runs.n_runs <= 4
    queries = np.arange(0, 60, dtype=np.uint64)[:, None].repeat(2, axis=1)
    got = runs.lookup(queries, limit=10_000)
    for q, found in zip(range(60), got):
        expected = sorted(set(oracle[0].get(q, []) + oracle[1].get(q, [])))
        assert found.tolist() == expected
    limited = runs.lookup(queries, limit=1)  # the oldest value per column and run comes first
    for q, found in zip(range(60), limited):
        if q in oracle[0]:
            assert min(oracle[0][q]) in found.tolist()
    if on_disk:
        assert list(tmp_path.glob("*.npy"))
    runs.close()
    assert not list(tmp_path.glob("*.npy"))


def test_exact_and_near_dedup_on_disk_equal_in_memory(austen_sample: list[str], tmp_path) -> None:
    texts = _paragraphs(austen_sample, 10)[:80]
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts + texts[:10] + [t.upper() for t in texts[5:15]])]
    for make in (lambda **kw: ExactDedup(**kw), lambda **kw: NearDedup(**kw)):
        mem, disk = make(), make(workdir=str(tmp_path / "w"))
        a = [mem.process(docs[i:i + 9]) for i in range(0, len(docs), 9)]
        b = [disk.process(docs[i:i + 9]) for i in range(0, len(docs), 9)]
        assert [d["id"] for r in a for d in r.kept] == [d["id"] for r in b for d in r.kept]
        assert [(d.doc_id, d.detail["duplicate_of"]) for r in a for d in r.decisions] == \
            [(d.doc_id, d.detail["duplicate_of"]) for r in b for d in r.decisions]
        assert sum(len(r.decisions) for r in a) >= 20
        assert any((tmp_path / "w").iterdir())
        disk.reset()
        assert not any((tmp_path / "w").iterdir())  # the index files are removed


def test_spot_check_measures_false_positives_with_exact_jaccard(austen_sample: list[str]) -> None:
    from training.core.curate import spot_check

    base, planted = _planted(austen_sample, n_base=40, n_planted=10, seed=5)
    texts = base + [t for _, t, _ in planted]
    dups = near_duplicates(texts)
    good = spot_check(texts, dups, sample=100, threshold=0.8)
    assert good["checked"] == len(dups) >= 9 and good["below_threshold"] == 0
    assert good["interval_95"][0] == 0.0 and good["interval_95"][1] < 0.35
    assert all(abs(p["estimated"] - p["exact"]) < 0.2 for p in good["pairs"])
    wrong = [(len(base), 0, 0.9)]  # a pair of unrelated paragraphs claimed as duplicates
    assert spot_check([*texts[:len(base)], texts[1]], wrong, threshold=0.8)["false_positive_rate"] == 1.0
