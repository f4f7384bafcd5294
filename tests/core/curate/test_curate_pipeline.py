"""Pipeline statistics and examples, previews, recipes, segmentation, length and balancing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.core.config import ConfigError
from training.core.curate import (Balance, BalanceConfig, ExactDedup, GopherQuality, LengthFilter, Pipeline, Segment,
                                  balance, build_step, chunk_text, copies, default_recipe, preview, sampling_factors)

REPO = Path(__file__).resolve().parents[3]


def _docs(texts: list[str], source: str = "austen") -> list[dict]:
    return [{"id": f"{source}/{i}", "text": t, "source": source} for i, t in enumerate(texts)]


def test_sampling_factors_by_hand() -> None:
    # sizes 900 / 100: natural shares 0.9 / 0.1
    f = sampling_factors({"a": 900.0, "b": 100.0}, temperature=2.0)
    # T = 2: q ~ sqrt(p): sqrt(.9) = .948683, sqrt(.1) = .316228 -> q_a = .75, q_b = .25
    assert f["a"]["target_share"] == pytest.approx(0.75, abs=1e-6)
    assert f["a"]["factor"] == pytest.approx(0.75 * 1000 / 900)
    assert f["b"]["factor"] == pytest.approx(2.5)
    w = sampling_factors({"a": 900.0, "b": 100.0}, weights={"a": 1.0, "b": 1.0}, total=400.0)
    assert w["a"]["factor"] == pytest.approx(200 / 900) and w["b"]["factor"] == pytest.approx(2.0)
    same = sampling_factors({"a": 900.0, "b": 100.0}, temperature=1.0)
    assert same["a"]["factor"] == pytest.approx(1.0) and same["b"]["factor"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="weights"):
        sampling_factors({"a": 1.0}, weights={"b": 1.0})
    with pytest.raises(ConfigError):
        sampling_factors({"a": 1.0}, weights={"a": 1.0}, temperature=2.0)


def test_copies_have_the_expected_value() -> None:
    n = 4000
    assert sum(copies(f"d{i}", 2.5, seed=1) for i in range(n)) / n == pytest.approx(2.5, abs=0.05)
    assert sum(copies(f"d{i}", 0.3, seed=1) for i in range(n)) / n == pytest.approx(0.3, abs=0.03)
    assert {copies(f"d{i}", 3.0) for i in range(50)} == {3}


def test_balance_reports_up_and_down_sampling(austen_sample: list[str]) -> None:
    docs = _docs(austen_sample[:20], "austen") + _docs([t[:800] for t in austen_sample[20:24]], "short")
    out, report = balance(docs, by="source", temperature=1e6, size="docs", seed=0)
    g = report["groups"]
    assert g["austen"]["factor"] == pytest.approx(12 / 20) and g["short"]["factor"] == pytest.approx(12 / 4)
    assert g["short"]["size_out"] == 12  # factor 3.0 exactly: every doc three times
    assert abs(g["austen"]["size_out"] - 12) <= 5
    r = Balance(BalanceConfig(by="source", factors={"short": 3.0, "austen": 0.0})).process(docs)
    assert len(r.kept) == 12 and {d["source"] for d in r.kept} == {"short"}
    assert {d.rule for d in r.decisions} == {"balance_downsampled", "balance_upsampled"}
    assert any(d["id"].endswith("@2") and d["repeat_of"] for d in r.kept)


def test_segmentation_and_length(austen_sample: list[str]) -> None:
    text = austen_sample[0]
    paras = chunk_text(text, 500, by="paragraph")
    assert all(len(p) <= 500 for p in paras)
    assert "".join(paras).replace(" ", "") == text.replace("\n", "").replace(" ", "")  # nothing lost
    chunks = chunk_text(text, 2000, by="chunk")
    assert all(len(c) <= 2000 for c in chunks) and len(chunks) < len(paras)
    r = Segment(by="chunk", max_chars=2000).process([{"id": "c", "text": text, "source": "austen"}])
    assert [d["id"] for d in r.kept][:2] == ["c#0", "c#1"] and r.kept[0]["parent_id"] == "c"
    assert r.kept[0]["source"] == "austen" and r.decisions[0].value == len(r.kept)
    lr = LengthFilter(min_words=5, max_chars=40).process([{"id": "a", "text": "too short"},
                                                         {"id": "b", "text": "one two three four five"},
                                                         {"id": "c", "text": "word " * 20}])
    assert [d["id"] for d in lr.kept] == ["b"]
    assert {d.doc_id: d.rule for d in lr.decisions} == {"a": "too_few_words", "c": "too_long_chars"}


def test_pipeline_stats_examples_and_callbacks(austen_sample: list[str]) -> None:
    docs = _docs(austen_sample[:12]) + [{"id": "dup", "text": austen_sample[0].upper()},
                                        {"id": "tiny", "text": "Too short."}]
    seen: list[tuple[str, int]] = []
    progress: list[dict] = []
    pipe = Pipeline([LengthFilter(min_words=20), ExactDedup(), GopherQuality()], max_examples=2,
                    on_decisions=lambda step, decs, _: seen.append((step, len(decs))), on_batch=progress.append)
    kept = list(pipe.run(docs, batch_size=5))
    assert len(kept) == 12
    rep = pipe.report()
    length, exact, gopher = rep["steps"]
    assert (length["docs_in"], length["docs_out"], length["by_rule"]) == (14, 13, {"too_few_words": 1})
    assert exact["by_rule"] == {"exact_duplicate": 1} and exact["examples"]["exact_duplicate"][0]["id"] == "dup"
    assert exact["examples"]["exact_duplicate"][0]["detail"] == {"duplicate_of": "austen/0"}
    assert exact["pct_docs_removed"] == pytest.approx(100 / 13, abs=1e-3)
    assert gopher["docs_out"] == 12 and len(gopher["examples"]["kept"]) == 2
    assert rep["chars_in"] == sum(len(d["text"]) for d in docs)
    assert rep["chars_out"] == sum(len(d["text"]) for d in kept)
    assert rep["words_in"] == sum(len(d["text"].split()) for d in docs)
    assert rep["words_out"] == gopher["words_out"] == sum(len(d["text"].split()) for d in kept)
    assert length["words_in"] - length["words_out"] == 2  # "Too short."
    comp = rep["composition"]
    assert comp["in"]["source"] == {"austen": {"docs": 12, "chars": sum(len(t) for t in austen_sample[:12])},
                                    "unknown": {"docs": 2, "chars": len(docs[12]["text"]) + 10}}
    assert comp["out"]["source"]["austen"]["docs"] == 12 and "unknown" not in comp["out"]["source"]
    assert comp["out"]["language"] == {"unknown": {"docs": 12, "chars": rep["chars_out"]}}
    assert ("length", 1) in seen and ("exact_dedup", 1) in seen
    assert len(progress) == 3 and progress[-1]["docs_in"] == 14 and progress[-1]["docs_out"] == 12


def test_recipes_round_trip_and_validate() -> None:
    recipe = default_recipe()
    pipe = Pipeline.from_recipe(recipe)
    assert [s.name for s in pipe.steps] == [r["step"] for r in recipe]
    again = Pipeline.from_recipe(pipe.to_recipe())
    assert again.to_recipe() == pipe.to_recipe()
    with pytest.raises(ConfigError, match="unknown step"):
        build_step({"step": "nope"})
    with pytest.raises(ConfigError, match="gopher_quality.max_hash_ratio"):
        build_step({"step": "gopher_quality", "config": {"max_hash_ratio": 3}})
    with pytest.raises(ConfigError, match="near_dedup.bogus"):
        build_step({"step": "near_dedup", "config": {"bogus": 1}})


def test_preview_shows_both_sides_of_the_threshold(austen_sample: list[str]) -> None:
    docs = _docs(austen_sample) + [{"id": "list", "text": "\n".join(f"- item {i}" for i in range(80))}]
    out = preview(GopherQuality(), docs, "bullet_lines_frac", bins=10, examples=2)
    assert out["threshold"] == 0.9 and out["n"] == len(docs) and sum(out["histogram"]["counts"]) == len(docs)
    cut = out["cuts"][0]
    assert cut["n_above"] == 1 and cut["above"][0]["id"] == "list"
    assert len(cut["below"]) == 2 and all(e["value"] < 0.9 for e in cut["below"])
    two = preview(GopherQuality(), docs, "n_words")
    assert [c["cut"] for c in two["cuts"]] == [50, 100_000]
    with pytest.raises(ConfigError):
        preview(GopherQuality(), docs, "nope")


@pytest.mark.slow
def test_parallel_run_equals_serial(austen_sample: list[str]) -> None:
    docs = _docs(austen_sample) + _docs(austen_sample[:4], "copy")
    serial = Pipeline.from_recipe(default_recipe())
    a = [d["id"] for d in serial.run(docs, batch_size=6)]
    parallel = Pipeline.from_recipe(default_recipe())
    kept = list(parallel.run(docs, batch_size=6, workers=2))  # near-dedup signatures come from the workers
    b = [d["id"] for d in kept]
    assert a == b and len(a) == len(austen_sample)
    assert all(set(d) == {"id", "text", "source", "language", "language_score"} for d in kept)
    strip = lambda rep: [{k: v for k, v in s.items() if k != "seconds"} for s in rep["steps"]]  # noqa: E731
    assert strip(serial.report()) == strip(parallel.report())


def test_curation_core_does_not_import_django() -> None:
    code = "import sys, training.core.curate, training.core.corpora; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("module", ["balance", "base", "datasheet", "decontam", "dedup", "extract", "filters",
                                    "pii", "pipeline", "quality", "runner", "segment", "sources", "text"])
def test_docstring_examples(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"training.core.curate.{module}"))
    assert result.failed == 0


def test_headless_cli_writes_a_dataset_version(austen_sample: list[str], tmp_path: Path) -> None:
    import json
    import zipfile

    from training.core.curate.__main__ import main
    from training.core.curate.base import CurationError
    from training.core.curate.runner import iter_decisions, iter_version_documents

    src = tmp_path / "mine.jsonl"
    lines = [json.dumps({"id": f"a{i}", "text": t}) for i, t in enumerate(austen_sample[:6])]
    lines.append(json.dumps({"text": austen_sample[0]}))  # duplicate without id
    src.write_text("\n".join(lines) + "\n")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as z:  # an upload-style input is imported first
        z.writestr("notes/b.txt", austen_sample[7])
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps([{"step": "length", "config": {"min_words": 20}}, {"step": "exact_dedup"}]))
    manifest = main(["--input", str(src), "--input", str(tmp_path / "more.zip"), "--recipe", str(recipe),
                     "--out", str(tmp_path / "out"), "--batch-size", "3", "--shard-docs", "4", "--no-progress"])
    kept = list(iter_version_documents(tmp_path / "out"))
    assert [d["id"] for d in kept] == [f"a{i}" for i in range(6)] + ["more/more.zip!notes/b.txt"]
    assert list(iter_decisions(tmp_path / "out")) == [
        {"doc_id": "mine/7", "step": "exact_dedup", "rule": "exact_duplicate", "action": "drop",
         "value": 1.0, "threshold": None, "detail": {"duplicate_of": "a0"}}]
    assert json.loads((tmp_path / "out/manifest.json").read_text())["counts"]["docs_out"] == 7
    assert manifest["counts"]["docs_in"] == 8 and len(manifest["files"]) == 2
    assert (tmp_path / "out/datasheet.md").exists() and (tmp_path / "out/report.json").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(CurationError, match="bad.jsonl:2"):
        main(["--input", str(bad), "--out", str(tmp_path / "out2"), "--no-progress"])
    assert not (tmp_path / "out2").exists()
