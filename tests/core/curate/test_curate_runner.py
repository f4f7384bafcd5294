"""The recipe runner: dataset versions, audit trail, datasheet, cancel and resume, atomicity."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import pytest

from training.core.config import ConfigError
from training.core.curate import default_recipe
from training.core.curate.base import CurationError
from training.core.curate.runner import iter_decisions, iter_version_documents, run_recipe, work_dir_for

FRENCH = ("Il était une fois, dans un petit village au bord de la mer, une vieille femme qui vivait seule "
          "avec son chat. Chaque matin, elle allait au marché pour acheter du pain et des légumes frais, puis "
          "elle rentrait chez elle pour préparer le déjeuner et lire le journal du jour.")
TOXIC = ("You are a fucking idiot and a stupid piece of shit, shut the fuck up and go away now.\n\n"
         "Nobody here wants to read your shitty comments, you worthless bastard, so fuck off for good.\n\n"
         "What a dumb asshole you are, every single word you write is complete bullshit and crap.\n\n"
         "Get lost, you pathetic moron, and take your fucking stupid opinions with you to the dump.")
EVAL_PASSAGE = ("the quick brown fox jumps over the lazy dog while the farmer watches from the old wooden "
                "fence near the river bank at dawn")


def perturb(text: str, rng: random.Random, rate: float = 0.02) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, int(rate * len(words)))):
        words[i] = "zzz"
    return " ".join(words)


@pytest.fixture(scope="module")
def planted(austen_texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two input files: Austen chapters plus planted near duplicates, exact duplicates, French,
    toxic, PII and evaluation-passage documents, with their expected reason codes."""
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("planted")
    base = austen_texts[:40]
    docs = [{"id": f"a{i}", "text": t, "source": "austen", "domain": "books"} for i, t in enumerate(base)]
    expect = {}
    extra = []
    for k in range(6):
        extra.append({"id": f"near{k}", "text": perturb(base[k], rng), "source": "web", "domain": "web"})
        expect[f"near{k}"] = "near_duplicate"
    for k in range(3):
        extra.append({"id": f"exact{k}", "text": base[10 + k].upper(), "source": "web", "domain": "web"})
        expect[f"exact{k}"] = "exact_duplicate"
    extra.append({"id": "fr", "text": FRENCH, "source": "web", "domain": "web"})
    expect["fr"] = "language_not_allowed"
    extra.append({"id": "toxic", "text": TOXIC, "source": "web", "domain": "web"})
    expect["toxic"] = "toxic"
    extra.append({"id": "eval", "text": base[20][:1500] + " " + EVAL_PASSAGE + " " + base[21][:1500],
                  "source": "web", "domain": "web"})
    expect["eval"] = "eval_overlap"
    pii = base[30][:2000] + " Contact me at jane.doe@example.org or 020 7946 0958."
    extra.append({"id": "pii", "text": pii, "source": "web", "domain": "web"})
    rng.shuffle(extra)
    f1, f2 = folder / "austen.jsonl", folder / "web.jsonl"
    f1.write_text("".join(json.dumps(d) + "\n" for d in docs))
    f2.write_text("".join(json.dumps(d) + "\n" for d in extra))
    recipe = default_recipe()
    recipe.insert(-2, {"step": "decontaminate", "config": {"eval_texts": [EVAL_PASSAGE]}})
    return {"inputs": [str(f1), str(f2)], "expect": expect, "recipe": recipe, "n": len(docs) + len(extra)}


def version_content(folder: Path) -> tuple[list[dict], list[dict], dict]:
    docs = list(iter_version_documents(folder))
    decisions = list(iter_decisions(folder))
    report = json.loads((folder / "report.json").read_text())
    by_rule = [(s["name"], s["docs_in"], s["docs_out"], s["by_rule"]) for s in report["steps"]]
    return docs, decisions, {"by_rule": by_rule, "composition": report["composition"]}


@pytest.fixture(scope="module")
def reference(planted: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run (two worker processes) of the planted corpus."""
    out = tmp_path_factory.mktemp("ref") / "v1"
    progress: list[dict] = []
    manifest = run_recipe(planted["inputs"], planted["recipe"], out, workers=2, shard_docs=16, batch_size=8,
                          on_progress=progress.append, sources=[{"name": "austen", "kind": "corpus",
                                                                 "licence": "public domain", "documents": 40}])
    assert manifest["status"] == "complete"
    assert progress[-1]["docs_done"] == progress[-1]["docs_total"] == planted["n"]
    assert progress[-1]["shards_done"] == progress[-1]["shards_total"] == 4
    assert all(p["docs_per_s"] > 0 and "near_dedup" in p["steps"] for p in progress)
    assert [p["docs_done"] for p in progress] == sorted(p["docs_done"] for p in progress)
    return out


def test_version_has_every_planted_document_removed_with_its_reason(planted: dict, reference: Path) -> None:
    docs, decisions, _ = version_content(reference)
    drops = {d["doc_id"]: d["rule"] for d in decisions if d["action"] == "drop"}
    for doc_id, rule in planted["expect"].items():
        assert drops.get(doc_id) == rule, (doc_id, drops.get(doc_id))
    kept = {d["id"]: d for d in docs}
    assert set(kept) == {f"a{i}" for i in range(40)} | {"pii"}
    assert "jane.doe" not in kept["pii"]["text"] and "<EMAIL>" in kept["pii"]["text"]
    assert "<PHONE>" in kept["pii"]["text"]
    near = [d for d in decisions if d["rule"] == "near_duplicate"]
    assert all(d["value"] >= d["threshold"] for d in near)
    assert {d["detail"]["duplicate_of"] for d in near} == {f"a{k}" for k in range(6)}


def test_manifest_report_and_datasheet(planted: dict, reference: Path) -> None:
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["counts"]["docs_in"] == planted["n"] and manifest["counts"]["docs_out"] == 41
    assert sum(f["documents"] for f in manifest["files"]) == 41
    for f in manifest["files"]:
        data = (reference / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
    assert manifest["recipe"] == planted["recipe"]
    assert manifest["composition"]["out"]["source"] == {"austen": {"docs": 40, "chars": manifest["composition"]["out"]
                                                                   ["source"]["austen"]["chars"]},
                                                        "web": manifest["composition"]["out"]["source"]["web"]}
    report = json.loads((reference / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["language"]["by_rule"] == {"language_not_allowed": 1}
    assert steps["near_dedup"]["by_rule"] == {"near_duplicate": 6}
    assert steps["near_dedup"]["examples"]["near_duplicate"][0]["detail"]["duplicate_of"].startswith("a")
    assert steps["near_dedup"]["examples"]["kept"]
    sheet = (reference / "datasheet.md").read_text()
    for section in ("## Motivation", "## Composition", "## Collection process", "## Preprocessing",
                    "## Licences", "## Uses", "## Maintenance"):
        assert section in sheet
    assert "| near_dedup | near_duplicate | 6 |" in sheet and "threshold=0.7" in sheet
    assert "public domain: austen" in sheet
    # immutable: read-only files, and a second run into the same folder with another recipe is refused
    assert all(not (p.stat().st_mode & 0o222) for p in reference.rglob("*") if p.is_file())
    with pytest.raises(CurationError) as e:
        run_recipe(planted["inputs"], [{"step": "exact_dedup"}], reference)
    assert e.value.code == "version_exists"
    assert run_recipe(planted["inputs"], planted["recipe"], reference)["created_at"] == manifest["created_at"]


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_after_a_crash_equals_the_uninterrupted_run(planted: dict, reference: Path, tmp_path: Path,
                                                           workers: int) -> None:
    out = tmp_path / "v1"
    calls = {"n": 0}

    def crash_mid_shard(progress: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 5:  # batch 5 = first batch of the third shard: two shards committed
            raise Crash("simulated crash")

    with pytest.raises(Crash):
        run_recipe(planted["inputs"], planted["recipe"], out, workers=workers, shard_docs=16, batch_size=8,
                   on_progress=crash_mid_shard)
    assert not out.exists()  # a crash never leaves a (half-written) version
    state = json.loads((work_dir_for(out) / "state.json").read_text())
    assert state["shards_done"] == 2
    resumed: list[dict] = []
    manifest = run_recipe(planted["inputs"], planted["recipe"], out, workers=workers, shard_docs=16, batch_size=8,
                          on_progress=resumed.append)
    assert resumed[0]["docs_done"] == 16 * 2 + 8  # started at the first unfinished shard
    assert not work_dir_for(out).exists() and manifest["counts"]["docs_in"] == planted["n"]
    assert version_content(out) == version_content(reference)


def test_cancel_keeps_finished_shards_and_resumes(planted: dict, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "v1"
    seen: list[dict] = []
    result = run_recipe(planted["inputs"], planted["recipe"], out, shard_docs=16, batch_size=8,
                        on_progress=seen.append, should_stop=lambda: len(seen) >= 3)
    assert result["status"] == "cancelled" and result["shards_done"] == 1 and not out.exists()
    dedup = work_dir_for(out) / "dedup"  # the dedup indexes live in files, not in memory
    assert (next(dedup.glob("*-near_dedup")) / "signatures.u32").stat().st_size > 0
    assert (next(dedup.glob("*-exact_dedup")) / "ids.jsonl").stat().st_size > 0
    with pytest.raises(CurationError) as e:  # other settings cannot resume this work folder
        run_recipe(planted["inputs"], planted["recipe"], out, shard_docs=32, batch_size=8)
    assert e.value.code == "resume_mismatch"
    run_recipe(planted["inputs"], planted["recipe"], out, shard_docs=16, batch_size=8)
    assert version_content(out) == version_content(reference)


def test_parquet_output_holds_the_same_documents(planted: dict, reference: Path, tmp_path: Path) -> None:
    manifest = run_recipe(planted["inputs"], planted["recipe"], tmp_path / "pq", shard_docs=16, batch_size=8,
                          output_format="parquet")
    assert all(f["path"].endswith(".parquet") for f in manifest["files"])
    assert list(iter_version_documents(tmp_path / "pq")) == list(iter_version_documents(reference))


def test_bad_inputs_and_settings_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    good = tmp_path / "in.jsonl"
    good.write_text('{"id": "1", "text": "one two three"}\n{"id": "2", "text": 5}\n')
    with pytest.raises(CurationError) as e:
        run_recipe([str(good)], [{"step": "length"}], tmp_path / "v")
    assert e.value.code == "malformed_input" and "in.jsonl:2" in e.value.detail
    assert not (tmp_path / "v").exists()
    with pytest.raises(CurationError) as e:
        run_recipe([str(tmp_path / "missing.jsonl")], [{"step": "length"}], tmp_path / "v")
    assert e.value.code == "input_missing"
    with pytest.raises(ConfigError):
        run_recipe([str(good)], [{"step": "no_such_step"}], tmp_path / "v")
    with pytest.raises(ConfigError):
        run_recipe([str(good)], [{"step": "length"}], tmp_path / "v", output_format="csv")


def test_decisions_are_the_audit_trail(reference: Path) -> None:
    files = sorted((reference / "decisions").glob("*.jsonl.gz"))
    assert files and all(gzip.open(f, "rt").read() is not None for f in files)
    toxic = list(iter_decisions(reference, rule="toxic"))
    assert [d["doc_id"] for d in toxic] == ["toxic"] and toxic[0]["value"] > toxic[0]["threshold"]
    assert {d["step"] for d in iter_decisions(reference, step="pii")} == {"pii"}


def test_tokenizer_and_pretraining_inputs_read_the_version(reference: Path) -> None:
    from training.core.cli import iter_texts

    texts = list(iter_texts([str(reference / "data")]))
    assert texts == [d["text"] for d in iter_version_documents(reference)] and len(texts) == 41


def test_empty_inputs_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CurationError) as e:
        run_recipe([str(empty)], [{"step": "length"}], tmp_path / "v")
    assert e.value.code == "no_documents" and not work_dir_for(tmp_path / "v").exists()


def test_sample_documents_for_previews(planted: dict) -> None:
    from training.core.curate.runner import sample_documents

    sample = sample_documents(planted["inputs"], n=10, seed=1)
    ids = [d["id"] for d in sample]
    assert len(ids) == len(set(ids)) == 10 and sample == sample_documents(planted["inputs"], n=10, seed=1)
    assert len(sample_documents(planted["inputs"], n=1000)) == planted["n"]


def test_resume_equals_the_uninterrupted_run_when_candidates_overflow(tmp_path: Path) -> None:
    """Many documents share LSH bands, so lookups hit the max_candidates cap: the index rebuilt
    on resume must still answer exactly as the uninterrupted one (same kept documents)."""
    lines = []
    for i in range(400):
        k = i - 1 if i % 7 == 0 and i > 0 else i
        lines.append(json.dumps({"id": f"d{i}", "text": f"Document number {k} tells a short story about the river, "
                                 f"the mill and the people who lived beside them in year {1800 + k}."}))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    recipe = [{"step": "near_dedup", "config": {"max_candidates": 8}}]
    run_recipe([str(src)], recipe, tmp_path / "ref", shard_docs=20)
    for stop_at in (3, 9):
        calls = {"n": 0}

        def stop() -> bool:
            calls["n"] += 1
            return calls["n"] >= stop_at

        out = tmp_path / f"cut{stop_at}"
        assert run_recipe([str(src)], recipe, out, shard_docs=20, should_stop=stop)["status"] == "cancelled"
        run_recipe([str(src)], recipe, out, shard_docs=20)
        assert version_content(out) == version_content(tmp_path / "ref")
