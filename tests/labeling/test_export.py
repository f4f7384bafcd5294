"""Exports in the formats trainers know, and the export → import → export round trip."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from labeling import actions, export
from labeling.imports import parse_jsonl

PAYLOAD = {
    "format": 1,
    "items": [
        {"id": 1, "external_id": "", "task_type": "pairwise", "prompt": [{"role": "user", "content": "2+2?"}],
         "category": None, "gold": False,
         "responses": [{"id": 10, "text": "4", "model": "big", "source": "model"},
                       {"id": 11, "text": "5", "model": "small", "source": "model"}],
         "judgements": [{"annotator": 1, "choice": "a", "strength": -3}, {"annotator": 2, "choice": "a", "strength": -1},
                        {"annotator": 3, "choice": "b", "strength": None}]},
        {"id": 2, "external_id": "q-2", "task_type": "pairwise",
         "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye?"}],
         "category": None, "gold": False,
         "responses": [{"id": 20, "text": "Bye!", "model": "small", "source": "model"},
                       {"id": 21, "text": "Goodbye, take care.", "model": "big", "source": "model"}],
         "judgements": [{"annotator": 1, "choice": "b", "strength": None}]},
        {"id": 3, "external_id": "", "task_type": "pairwise", "prompt": [{"role": "user", "content": "Tie?"}],
         "category": None, "gold": False,
         "responses": [{"id": 30, "text": "x", "model": "big", "source": "model"},
                       {"id": 31, "text": "y", "model": "small", "source": "model"}],
         "judgements": [{"annotator": 1, "choice": "a"}, {"annotator": 2, "choice": "b"}]},  # no majority
        {"id": 4, "external_id": "", "task_type": "pairwise", "prompt": [{"role": "user", "content": "Insult me"}],
         "category": None, "gold": False,
         "responses": [{"id": 40, "text": "bad1", "model": "big", "source": "model"},
                       {"id": 41, "text": "bad2", "model": "small", "source": "model"}],
         "judgements": [{"annotator": 1, "choice": "both_bad"}]},
        {"id": 5, "external_id": "", "task_type": "ranking", "prompt": [{"role": "user", "content": "Rank"}],
         "category": None, "gold": False,
         "responses": [{"id": 50, "text": "r0", "model": "", "source": "file"},
                       {"id": 51, "text": "r1", "model": "", "source": "file"},
                       {"id": 52, "text": "r2", "model": "", "source": "file"}],
         "judgements": [{"annotator": 1, "ranking": [52, 50, 51]}, {"annotator": 2, "ranking": [52, 51, 50]},
                        {"annotator": 3, "ranking": [50, 52, 51]}]},
        {"id": 6, "external_id": "", "task_type": "correction", "prompt": [{"role": "user", "content": "Capital of Australia?"}],
         "category": None, "gold": False,
         "responses": [{"id": 60, "text": "Sydney", "model": "small", "source": "model"}],
         "judgements": [{"annotator": 1, "corrected_text": "Canberra"}]},
    ],
    "reports": [{"id": 7, "prompt": [{"role": "user", "content": "Nurses?"}], "response": "Only women.",
                 "model": "small", "corrected": "Anyone trained.", "category": "bias"}],
}


def test_preference_standard_majority_with_margin():
    rows = export.preference_records(PAYLOAD, margin=True)
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    assert by_id["item-1"] == [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 2.0, "id": "item-1",
                                "chosen_model": "big", "rejected_model": "small", "category": None,
                                "agreement": 0.6667, "n_votes": 3}]
    assert by_id["q-2"][0]["prompt"] == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello\n\nUser: Bye?"
    assert by_id["q-2"][0]["chosen"] == "Goodbye, take care." and by_id["q-2"][0]["margin"] == 0.0
    assert "item-3" not in by_id and "item-4" not in by_id  # no majority; both bad
    assert [(r["chosen"], r["rejected"]) for r in by_id["item-5"]] == [("r2", "r0"), ("r2", "r1"), ("r0", "r1")]
    assert [(r["chosen"], r["rejected"]) for r in by_id["item-6"]] == [("Canberra", "Sydney")]
    assert by_id["report-7"][0]["category"] == "bias" and by_id["report-7"][0]["chosen"] == "Anyone trained."


def test_preference_conversational_and_all_votes():
    rows = export.preference_records(PAYLOAD, conversational=True, aggregate="all")
    first = [r for r in rows if r["id"] == "item-1"]
    assert len(first) == 3 and [r["chosen"][0]["content"] for r in first] == ["4", "4", "5"]
    q2 = next(r for r in rows if r["id"] == "q-2")
    assert q2["prompt"][0] == {"role": "system", "content": "Be brief."} and len(q2["prompt"]) == 4
    assert q2["chosen"] == [{"role": "assistant", "content": "Goodbye, take care."}]
    assert "margin" not in q2


def test_kto_sft_and_battles():
    kto = export.kto_records(PAYLOAD)
    pairs = [(r["id"], r["completion"], r["label"]) for r in kto]
    assert ("item-1", "4", True) in pairs and ("item-1", "5", False) in pairs
    assert ("item-4", "bad1", False) in pairs and ("item-4", "bad2", False) in pairs
    assert ("report-7", "Only women.", False) in pairs and ("report-7", "Anyone trained.", True) in pairs
    assert all(r["category"] == "bias" for r in kto if r["id"] == "report-7")
    sft = export.sft_records(PAYLOAD)
    assert sft[0]["messages"][-1] == {"role": "assistant", "content": "Canberra"}
    assert sft[1]["id"] == "report-7"
    battles = export.battle_records(PAYLOAD)
    assert len(battles) == 3 + 1 + 2 + 1
    assert battles[0] == {"model_a": "big", "model_b": "small", "winner": "model_a", "judge": "annotator-1",
                          "question_id": "item-1", "turn": 1, "anony": True, "tstamp": None, "strength": -3,
                          "category": None, "agreement": 0.6667, "n_votes": 3}
    assert {b["winner"] for b in battles} == {"model_a", "model_b", "tie (bothbad)"}
    assert next(b for b in battles if b["question_id"] == "q-2")["turn"] == 2


@pytest.mark.parametrize("fmt", sorted(export.FORMATS))
def test_parquet_reads_back(fmt):  # noqa: ANN001
    rows = export.records(PAYLOAD, fmt)
    assert rows
    assert pq.read_table(io.BytesIO(export.parquet_bytes(rows))).to_pylist() == rows
    assert export.read_parquet(export.parquet_bytes(rows)) == rows
    assert export.read_jsonl(export.jsonl_bytes(rows)) == rows


def test_import_parses_trl_argilla_and_label_studio():
    lines = [
        {"prompt": "p", "chosen": "c", "rejected": "r", "margin": 2},
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]},
        {"prompt": "p", "completion": "c", "label": False},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"fields": {"prompt": "argilla q", "response1": "one", "response2": "two"}, "id": "ar-1"},
        {"data": {"prompt": "ls q", "answer1": "left", "answer2": "right"},
         "annotations": [{"result": [{"value": {"selected": "right"}}]}]},
        {"prompt": "p", "chosen": "c", "rejected": "r", "margin": 1.5},
        {"label": True},
    ]
    specs, errors = parse_jsonl("\n".join(json.dumps(x) for x in lines))
    assert [s.kind for s in specs] == ["preference", "preference", "kto", "sft", "item", "item"]
    assert specs[0].judgement == {"choice": "a", "strength": -2}
    assert specs[1].messages == [{"role": "user", "content": "q"}] and specs[1].responses[0]["text"] == "good"
    assert specs[4].external_id == "ar-1" and [r["text"] for r in specs[4].responses] == ["one", "two"]
    assert specs[5].annotations == [{"annotator": "label-studio-0", "choice": "b"}]
    assert [e.line for e in errors] == [7, 8] and "margin" in errors[0].message



@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["preference", "preference_conversational", "kto", "kto_conversational", "sft"])
def test_round_trip_is_lossless(fmt, builder, make_user):  # noqa: ANN001
    """Project A's snapshot exported, imported into project B, B's snapshot exported: same records
    (JSONL and Parquet)."""
    src = actions.create_project(builder, name=f"src-{fmt}")
    payload = json.loads(json.dumps(PAYLOAD))
    for item in payload["items"]:
        if item["task_type"] == "ranking":
            item["external_id"] = "rank-5"
    original = export.records(payload, fmt, margin=True) if fmt.startswith("preference") else export.records(payload, fmt)
    assert original
    for encode, decode in ((export.jsonl_bytes, export.read_jsonl), (export.parquet_bytes, export.read_parquet)):
        dst = actions.create_project(builder, name=f"dst-{fmt}-{encode.__name__}")
        rows = decode(encode(original))
        text = "\n".join(json.dumps(r) for r in rows)
        result = actions.import_jsonl(dst, builder, text, seed=7)
        assert result.errors == [] and result.judgements == len(original)
        snap = actions.create_snapshot(builder, dst)
        again = export.records(snap.payload, fmt, margin=True) if fmt.startswith("preference") else \
            export.records(snap.payload, fmt)
        assert again == original


@pytest.mark.django_db
def test_snapshot_records_gives_lineage(builder):  # noqa: ANN001
    project = actions.create_project(builder, name="lineage")
    actions.import_jsonl(project, builder, json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}))
    snap = actions.create_snapshot(builder, project)
    label, sha, rows = export.snapshot_records(snap.pk, "preference")
    assert label == "lineage@v1" and sha == snap.content_sha256 and len(sha) == 64
    assert rows == [{"prompt": "p", "chosen": "c", "rejected": "r", "id": f"item-{snap.payload['items'][0]['id']}",
                     "chosen_model": "", "rejected_model": "", "category": None, "agreement": 1.0, "n_votes": 1}]


def test_preference_records_carry_agreement():
    rows = export.preference_records(PAYLOAD)
    votes = {(r["id"], r["chosen"], r["rejected"]): (r["agreement"], r["n_votes"]) for r in rows}
    assert votes[("item-1", "4", "5")] == (0.6667, 3)  # a, a, b
    assert votes[("q-2", "Goodbye, take care.", "Bye!")] == (1.0, 1)
    # ranking (Borda 52 > 50 > 51): each pair's share of the three rankings that order it so
    assert votes[("item-5", "r2", "r0")] == (0.6667, 3)
    assert votes[("item-5", "r2", "r1")] == (1.0, 3)
    assert votes[("item-5", "r0", "r1")] == (0.6667, 3)
    assert votes[("item-6", "Canberra", "Sydney")] == (1.0, 1)
    assert votes[("report-7", "Anyone trained.", "Only women.")] == (1.0, 1)
    # one record per vote: each carries the share of votes that chose as it did
    every = export.preference_records(PAYLOAD, aggregate="all")
    assert sorted((r["agreement"], r["n_votes"]) for r in every if r["id"] == "item-3") == [(0.5, 2), (0.5, 2)]
    rating = {"id": 9, "external_id": "", "task_type": "rating", "prompt": [{"role": "user", "content": "Rate"}],
              "responses": [{"id": 90, "text": "good"}, {"id": 91, "text": "poor"}],
              "judgements": [{"ratings": {"90": {"helpful": 5}, "91": {"helpful": 2}}},
                             {"ratings": {"90": {"helpful": 4}, "91": {"helpful": 1}}},
                             {"ratings": {"90": {"helpful": 2}, "91": {"helpful": 3}}}]}
    [r] = export.preference_records({"items": [rating]})
    assert (r["chosen"], r["agreement"], r["n_votes"]) == ("good", 0.6667, 3)


def test_import_checks_agreement():
    good = {"prompt": "p", "chosen": "c", "rejected": "r", "agreement": 0.75, "n_votes": 4}
    specs, errors = parse_jsonl("\n".join(json.dumps(x) for x in [
        good, {**good, "agreement": 1.5}, {**good, "n_votes": 0}, {**good, "n_votes": None}]))
    assert specs[0].metadata == {"agreement": 0.75, "n_votes": 4}
    assert [e.line for e in errors] == [2, 3, 4] and "agreement" in errors[0].message


ARGILLA = {"id": "ar-7", "status": "completed", "metadata": {"topic": "geography", "source": "forum"},
           "fields": {"prompt": "Capital of Australia?", "response1": "Sydney", "response2": "Canberra",
                      "response3": "Melbourne"},
           "responses": {
               "ranking": [{"value": ["response2", "response3", "response1"], "user_id": "u-1", "status": "submitted"},
                           {"value": [{"value": "response2", "rank": 1}, {"value": "response1", "rank": 2},
                                      {"value": "response3", "rank": 3}], "user_id": "u-2", "status": "submitted"},
                           {"value": ["response1", "response2", "response3"], "user_id": "u-3", "status": "draft"}],
               "notes": [{"value": "Sydney is a common mistake.", "user_id": "u-1", "status": "submitted"}]}}

LABEL_STUDIO = {"id": 41, "meta": {"batch": "b2"},
                "data": {"prompt": "Explain rain.", "answer1": "Water falls.", "answer2": "Clouds condense into drops."},
                "annotations": [
                    {"completed_by": 3, "lead_time": 12.5, "result": [
                        {"type": "rating", "from_name": "helpful", "to_name": "answer1", "value": {"rating": 2}},
                        {"type": "rating", "from_name": "helpful", "to_name": "answer2", "value": {"rating": 5}}]},
                    {"completed_by": {"id": 4, "email": "kim@example.org"}, "result": [
                        {"type": "rating", "from_name": "helpful", "to_name": "answer1", "value": {"rating": 3}},
                        {"type": "rating", "from_name": "helpful", "to_name": "answer2", "value": {"rating": 4}}]},
                    {"completed_by": 5, "was_cancelled": True, "result": []}]}


@pytest.mark.django_db
def test_argilla_rankings_of_several_annotators_become_judgements(builder):  # noqa: ANN001
    ranking = actions.create_project(builder, name="argilla-ranking", task_type="ranking")
    result = actions.import_jsonl(ranking, builder, json.dumps(ARGILLA))
    assert result.errors == [] and result.judgements == 2  # the draft is not a judgement
    snap = actions.create_snapshot(builder, ranking)
    [item] = snap.payload["items"]
    ids = {r["text"]: r["id"] for r in item["responses"]}
    assert [j["ranking"] for j in item["judgements"]] == [[ids["Canberra"], ids["Melbourne"], ids["Sydney"]],
                                                           [ids["Canberra"], ids["Sydney"], ids["Melbourne"]]]
    from labeling.models import Judgement, Prompt

    annotators = sorted(Judgement.objects.values_list("annotator__username", "annotator__is_active"))
    assert annotators == [("argilla-u-1", False), ("argilla-u-2", False)]
    assert Judgement.objects.get(annotator__username="argilla-u-1").comment == "notes: Sydney is a common mistake."
    assert Prompt.objects.get(project=ranking).metadata == {"topic": "geography", "source": "forum",
                                                            "imported_from": "argilla"}
    rows = export.preference_records(snap.payload)
    votes = {(r["chosen"], r["rejected"]): (r["agreement"], r["n_votes"]) for r in rows}
    assert votes[("Canberra", "Sydney")] == (1.0, 2) and votes[("Sydney", "Melbourne")] == (0.5, 2)
    # the same record in a pairwise project: one item per pair, each annotator's order decides it
    pairwise = actions.create_project(builder, name="argilla-pairwise")
    result = actions.import_jsonl(pairwise, builder, json.dumps(ARGILLA))
    assert result.items == 3 and result.judgements == 6
    pairs = export.preference_records(actions.create_snapshot(builder, pairwise).payload, aggregate="all")
    assert sorted((r["chosen"], r["rejected"]) for r in pairs) == sorted([
        ("Canberra", "Sydney"), ("Canberra", "Sydney"), ("Canberra", "Melbourne"), ("Canberra", "Melbourne"),
        ("Melbourne", "Sydney"), ("Sydney", "Melbourne")])
    # a rating project cannot take rankings: the line is refused with the reason
    rating = actions.create_project(builder, name="argilla-rating", task_type="rating")
    with pytest.raises(actions.ImportRefused) as refused:
        actions.import_jsonl(rating, builder, json.dumps(ARGILLA))
    assert "does not fit a rating project" in refused.value.errors[0]["message"]


@pytest.mark.django_db
def test_label_studio_ratings_and_lead_time_become_judgements(builder):  # noqa: ANN001
    project = actions.create_project(builder, name="ls-rating", task_type="rating", criteria=["helpful"])
    result = actions.import_jsonl(project, builder, json.dumps(LABEL_STUDIO))
    assert result.errors == [] and result.judgements == 2  # the cancelled annotation is left out
    [item] = actions.create_snapshot(builder, project).payload["items"]
    ids = {r["text"]: str(r["id"]) for r in item["responses"]}
    assert [j["ratings"] for j in item["judgements"]] == [
        {ids["Water falls."]: {"helpful": 2}, ids["Clouds condense into drops."]: {"helpful": 5}},
        {ids["Water falls."]: {"helpful": 3}, ids["Clouds condense into drops."]: {"helpful": 4}}]
    assert [j["time_ms"] for j in item["judgements"]] == [12500, None]
    assert item["external_id"] == "41"
    [pair] = export.preference_records({"items": [item]})
    assert (pair["chosen"], pair["agreement"], pair["n_votes"]) == ("Clouds condense into drops.", 1.0, 2)


def test_kto_sft_and_battles_carry_agreement_like_preference_records():
    kto = {(r["id"], r["completion"], r["label"], r["agreement"], r["n_votes"]) for r in export.kto_records(PAYLOAD)}
    assert kto == {
        ("item-1", "4", True, 0.6667, 3), ("item-1", "5", False, 0.6667, 3),  # a, a, b
        ("q-2", "Goodbye, take care.", True, 1.0, 1), ("q-2", "Bye!", False, 1.0, 1),
        ("item-4", "bad1", False, 1.0, 1), ("item-4", "bad2", False, 1.0, 1),  # both bad
        # ranking: each pair's share of the rankings that order it so (see the preference test)
        ("item-5", "r2", True, 0.6667, 3), ("item-5", "r0", False, 0.6667, 3), ("item-5", "r2", True, 1.0, 3),
        ("item-5", "r1", False, 1.0, 3), ("item-5", "r0", True, 0.6667, 3), ("item-5", "r1", False, 0.6667, 3),
        ("item-6", "Canberra", True, 1.0, 1), ("item-6", "Sydney", False, 1.0, 1),
        ("report-7", "Only women.", False, 1.0, 1), ("report-7", "Anyone trained.", True, 1.0, 1)}
    # ratings (scale 1-5, midpoint 3): the raters whose own score falls on the row's side
    rating = {"id": 9, "external_id": "", "task_type": "rating", "likert_max": 5, "category": "toxicity",
              "prompt": [{"role": "user", "content": "Rate"}],
              "responses": [{"id": 90, "text": "good"}, {"id": 91, "text": "poor"}],
              "judgements": [{"ratings": {"90": {"helpful": 5}, "91": {"helpful": 2}}},
                             {"ratings": {"90": {"helpful": 4}, "91": {"helpful": 1}}},
                             {"ratings": {"90": {"helpful": 2}, "91": {"helpful": 3}}}]}
    labels = {"id": 8, "external_id": "", "task_type": "pairwise", "prompt": [{"role": "user", "content": "Ok?"}],
              "responses": [{"id": 80, "text": "fine", "model": "m"}],
              "judgements": [{"label": True}, {"label": True}, {"label": False}]}
    rows = export.kto_records({"items": [rating, labels]})
    assert [(r["completion"], r["label"], r["agreement"], r["n_votes"], r["category"]) for r in rows] == [
        ("good", True, 0.6667, 3, "toxicity"), ("poor", False, 0.6667, 3, "toxicity"), ("fine", True, 0.6667, 3, None)]
    every = export.kto_records({"items": [labels]}, aggregate="all")
    assert [(r["label"], r["agreement"]) for r in every] == [(True, 0.6667), (True, 0.6667), (False, 0.3333)]
    # SFT: the share of the item's corrections that are this text
    corrections = {"id": 12, "external_id": "c-12", "task_type": "correction", "category": None,
                   "prompt": [{"role": "user", "content": "Fix it"}], "responses": [{"id": 120, "text": "bad"}],
                   "judgements": [{"corrected_text": "A"}, {"corrected_text": "A"}, {"corrected_text": "B"}]}
    sft = export.sft_records({"items": [corrections], "reports": PAYLOAD["reports"]})
    assert [(r["messages"][-1]["content"], r["agreement"], r["n_votes"], r["category"]) for r in sft] == [
        ("A", 0.6667, 3, None), ("B", 0.3333, 3, None), ("Anyone trained.", 1.0, 1, "bias")]
    # battles: one per vote, with the share of the item's votes for the same winner
    battles = [(b["question_id"], b["winner"], b["agreement"], b["n_votes"]) for b in export.battle_records(PAYLOAD)]
    assert battles == [("item-1", "model_a", 0.6667, 3), ("item-1", "model_a", 0.6667, 3),
                       ("item-1", "model_b", 0.3333, 3), ("q-2", "model_b", 1.0, 1),
                       ("item-3", "model_a", 0.5, 2), ("item-3", "model_b", 0.5, 2), ("item-4", "tie (bothbad)", 1.0, 1)]


@pytest.mark.django_db
def test_imported_records_keep_their_votes_in_every_format(builder):  # noqa: ANN001
    """Preference rows imported with agreement / n_votes give the same figures in KTO and battle
    exports; KTO and SFT rows keep theirs too (the votes themselves are not in this database)."""
    project = actions.create_project(builder, name="kept-votes")
    lines = [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "chosen_model": "big", "rejected_model": "small",
              "agreement": 0.6667, "n_votes": 3, "id": "q1", "category": "math"},
             {"prompt": "Ok?", "completion": "fine", "label": False, "model": "m", "agreement": 0.75, "n_votes": 4},
             {"messages": [{"role": "user", "content": "Fix"}, {"role": "assistant", "content": "Fixed"}],
              "agreement": 0.5, "n_votes": 2, "category": "bias"}]
    result = actions.import_jsonl(project, builder, "\n".join(json.dumps(x) for x in lines), seed=5)
    assert result.errors == [] and result.judgements == 3
    payload = actions.create_snapshot(builder, project).payload
    [battle] = export.battle_records(payload)
    assert (battle["winner"], battle["agreement"], battle["n_votes"], battle["category"], battle["question_id"]) == (
        "model_a" if battle["model_a"] == "big" else "model_b", 0.6667, 3, "math", "q1")
    kto = [(r["completion"], r["label"], r["agreement"], r["n_votes"]) for r in export.kto_records(payload)]
    assert kto == [("4", True, 0.6667, 3), ("5", False, 0.6667, 3), ("fine", False, 0.75, 4)]
    [sft] = export.sft_records(payload)
    assert (sft["agreement"], sft["n_votes"], sft["category"]) == (0.5, 2, "bias")


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_training_readers_take_exported_records_with_their_metadata(tmp_path, suffix):  # noqa: ANN001
    """The core's readers accept every exported row, and the lineage / agreement columns change
    nothing they produce: the same tokens as the bare TRL record."""
    from training.core.data.preference import tokenize_pairs
    from training.core.data.records import read_records
    from training.core.data.sft import record_messages, tokenize_examples
    from training.core.tokenizer import train_tokenizer

    texts = [m["content"] for i in PAYLOAD["items"] for m in i["prompt"]] + \
        [r["text"] for i in PAYLOAD["items"] for r in i["responses"]] + ["Canberra Anyone trained. Nurses? Only women."]
    tok = train_tokenizer(texts * 10, 400)
    write = {"jsonl": export.jsonl_bytes, "parquet": export.parquet_bytes}[suffix]
    trl_keys = {"preference": ("prompt", "chosen", "rejected", "margin"), "kto": ("prompt", "completion", "label"),
                "sft": ("messages",)}
    for fmt in sorted(export.FORMATS):
        if fmt == "battles":
            continue  # battle records feed the leaderboard, not a trainer
        rows = export.records(PAYLOAD, fmt, margin=True) if fmt.startswith("preference") else export.records(PAYLOAD, fmt)
        path = tmp_path / f"{fmt}.{suffix}"
        path.write_bytes(write(rows))
        back = read_records(path)
        assert back == rows and all({"id", "category", "agreement", "n_votes"} <= set(r) for r in back)
        bare = [{k: r[k] for k in trl_keys[fmt.split("_")[0]]} for r in back]
        if fmt.startswith("preference"):
            pairs, problems = tokenize_pairs(back, tok, max_seq_len=96)
            assert problems == [] and len(pairs) == len(rows)
            assert pairs == tokenize_pairs(bare, tok, max_seq_len=96)[0]
        else:  # SFT rows, and KTO rows through the SFT reader's {prompt, completion} form
            assert [record_messages(r) for r in back] == [record_messages(r) for r in bare]
            examples, problems = tokenize_examples(back, tok)
            assert problems == [] and len(examples) == len(rows)
            assert examples == tokenize_examples(bare, tok)[0]
