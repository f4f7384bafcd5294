"""Argilla suggestions and Label Studio predictions: the tools' model output is imported as what it
is — candidate responses from the named model, or pre-annotations — never as human judgements.

The fixtures follow the tools' own export shapes: Argilla v2 ``Record.to_dict()`` (``fields``,
``metadata``, ``suggestions: {question: {"value", "score", "agent"}}``, ``responses: {question:
[{"value", "user_id", "status"}]}``, ``vectors``, ``_server_id``) and a Label Studio JSON task
export (``data``, ``meta``, ``annotations`` with ``completed_by`` / ``lead_time`` / ``result``,
``predictions`` with ``model_version`` / ``score`` / ``result``).
"""

from __future__ import annotations

import json

import pytest

from labeling import actions, export
from labeling.imports import parse_jsonl
from labeling.models import Judgement, Prompt, Response

ANNOTATOR_UUID = "3c9a4f0e-5d1b-4b8e-9f2a-6e7d8c9b0a11"
ARGILLA = {  # what Argilla 2.x's Record.to_dict() gives (dataset.records.to_list(flatten=False))
    "id": "uf-112",
    "fields": {"prompt": "How do vaccines train the immune system?",
               "response1": "They contain a harmless piece or copy of a germ so the body learns to recognise it.",
               "response2": "Vaccines are magnets that pull viruses out of the blood."},
    "metadata": {"source": "ultrafeedback", "topic": "biology"},
    "suggestions": {
        "preference": {"value": "response1", "score": 0.92, "agent": "judge-llama-3-70b"},
        "ranking": {"value": ["response1", "response2"], "score": [0.92, 0.08], "agent": "judge-llama-3-70b"},
        "corrected_response": {"value": "A vaccine shows the immune system a harmless part of a germ, so it "
                                        "makes antibodies and memory cells before a real infection.",
                               "score": None, "agent": "mistral-7b-instruct"},
    },
    "responses": {"preference": [{"value": "response1", "user_id": ANNOTATOR_UUID}]},
    "vectors": {},
    "status": "completed",
    "_server_id": "5b1f6c1e-8a57-4c8f-9a57-3f8b2a9e1d01",
}

LABEL_STUDIO = {  # one task of Label Studio's JSON export, with its predictions
    "id": 318, "inner_id": 18, "project": 12, "file_upload": "a1b2c3d4-tasks.json", "drafts": [],
    "created_at": "2024-05-02T10:11:12.000000Z", "updated_at": "2024-05-02T10:31:40.000000Z",
    "total_annotations": 1, "cancelled_annotations": 0, "total_predictions": 2,
    "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": None,
    "updated_by": [{"user_id": 4}], "comment_authors": [],
    "data": {"prompt": "Summarise: the meeting moved to Friday.", "answer1": "Meeting now Friday.",
             "answer2": "The meeting was cancelled."},
    "meta": {"batch": "b7"},
    "annotations": [{"id": 901, "completed_by": 4, "was_cancelled": False, "ground_truth": False,
                     "created_at": "2024-05-02T10:31:40.000000Z", "updated_at": "2024-05-02T10:31:40.000000Z",
                     "draft_created_at": None, "lead_time": 8.25, "prediction": {}, "result_count": 1,
                     "unique_id": "6f0c2d7e-1111-4c3a-9e55-0b0e8a6f2c10", "import_id": None,
                     "last_action": None, "task": 318, "project": 12, "updated_by": 4,
                     "parent_prediction": 77, "parent_annotation": None, "last_created_by": None,
                     "result": [{"id": "pw1", "from_name": "comparison", "to_name": "pairwise", "type": "pairwise",
                                 "origin": "manual", "value": {"selected": "left"}}]}],
    "predictions": [
        {"id": 77, "model_version": "rm-deberta-v3@2024-05", "created_ago": "3 hours", "score": 0.81,
         "cluster": None, "neighbors": None, "mislabeling": 0.0, "created_at": "2024-05-02T07:02:00.000000Z",
         "updated_at": "2024-05-02T07:02:00.000000Z", "model": None, "model_run": None, "task": 318, "project": 12,
         "result": [{"id": "pr1", "from_name": "comparison", "to_name": "pairwise", "type": "pairwise",
                     "origin": "prediction", "value": {"selected": "left"}},
                    {"id": "pr2", "from_name": "helpful", "to_name": "answer2", "type": "rating",
                     "origin": "prediction", "value": {"rating": 1}}]},
        {"id": 78, "model_version": "qwen2-7b-instruct", "created_ago": "3 hours", "score": None,
         "cluster": None, "neighbors": None, "mislabeling": 0.0, "created_at": "2024-05-02T07:02:05.000000Z",
         "updated_at": "2024-05-02T07:02:05.000000Z", "model": None, "model_run": None, "task": 318, "project": 12,
         "result": [{"id": "pr3", "from_name": "rewrite_answer", "to_name": "prompt", "type": "textarea",
                     "origin": "prediction", "value": {"text": ["The meeting has moved to Friday."]}}]},
    ],
}


@pytest.mark.django_db
def test_argilla_suggestions_are_candidates_and_pre_annotations_not_judgements(builder):  # noqa: ANN001
    project = actions.create_project(builder, name="argilla-suggestions")
    result = actions.import_jsonl(project, builder, json.dumps(ARGILLA), seed=3)
    assert result.errors == []
    # one human judgement; the model's suggestions add none
    assert result.judgements == 1 and Judgement.objects.filter(project=project).count() == 1
    assert list(Judgement.objects.values_list("annotator__username", flat=True)) == [f"argilla-{ANNOTATOR_UUID}"]
    assert result.suggested_responses == 1 and result.pre_annotations == 2 and result.responses == 3
    fields = ARGILLA["fields"]
    written = Response.objects.get(prompt__project=project, source_kind="model")
    assert written.model_name == "mistral-7b-instruct"
    assert written.text == ARGILLA["suggestions"]["corrected_response"]["value"]
    assert written.metadata == {"imported_from": "argilla", "suggestion_for": "corrected_response"}
    ids = {r.text: r.pk for r in Response.objects.filter(prompt__project=project)}
    prompt = Prompt.objects.get(project=project)
    assert prompt.metadata["pre_annotations"] == [
        {"tool": "argilla", "model": "judge-llama-3-70b", "score": 0.92, "questions": ["preference"],
         "preferred": ids[fields["response1"]]},
        {"tool": "argilla", "model": "judge-llama-3-70b", "score": [0.92, 0.08], "questions": ["ranking"],
         "ranking": [ids[fields["response1"]], ids[fields["response2"]]]}]
    assert prompt.metadata["source"] == "ultrafeedback"
    # the judged pair stays as the annotator saw it; the model's answer is paired with each response
    items = list(project.items.order_by("id"))
    shown = [sorted(r.text for r in item.shown_responses()) for item in items]
    assert shown == [sorted([fields["response1"], fields["response2"]]),
                     sorted([fields["response1"], written.text]), sorted([fields["response2"], written.text])]
    assert [(i.submitted_count, i.complete) for i in items] == [(1, True), (0, False), (0, False)]
    # exports hold the human vote only; the candidate's model is its lineage once it is judged
    snap = actions.create_snapshot(builder, project)
    assert [len(i["judgements"]) for i in snap.payload["items"]] == [1]
    [pair] = export.preference_records(snap.payload)
    assert (pair["chosen"], pair["n_votes"], pair["agreement"]) == (fields["response1"], 1, 1.0)


@pytest.mark.django_db
def test_argilla_suggestions_join_the_items_of_an_unjudged_record(builder):  # noqa: ANN001
    record = {k: v for k, v in ARGILLA.items() if k != "responses"}
    project = actions.create_project(builder, name="argilla-ranking-suggested", task_type="ranking")
    result = actions.import_jsonl(project, builder, json.dumps(record))
    assert (result.items, result.judgements, result.suggested_responses) == (1, 0, 1)
    [item] = project.items.all()
    assert len(item.shown_responses()) == 3 and not item.complete
    # Argilla v1 (FeedbackRecord) lists its suggestions with their question names
    v1 = {**record, "suggestions": [{"question_name": n, **s} for n, s in record["suggestions"].items()]}
    [spec], errors = parse_jsonl(json.dumps(v1))
    assert errors == [] and len(spec.suggested) == 1 and len(spec.pre_annotations) == 2


@pytest.mark.django_db
def test_label_studio_predictions_are_candidates_and_pre_annotations(builder):  # noqa: ANN001
    project = actions.create_project(builder, name="ls-predictions")
    result = actions.import_jsonl(project, builder, json.dumps(LABEL_STUDIO), seed=1)
    assert result.errors == [] and result.judgements == 1
    assert (result.suggested_responses, result.pre_annotations) == (1, 1)
    [human] = Judgement.objects.filter(project=project)
    assert human.annotator.username == "label-studio-4" and human.time_on_task_ms == 8250
    written = Response.objects.get(prompt__project=project, source_kind="model")
    assert (written.text, written.model_name) == ("The meeting has moved to Friday.", "qwen2-7b-instruct")
    ids = {r.text: r.pk for r in Response.objects.filter(prompt__project=project)}
    [pre] = Prompt.objects.get(project=project).metadata["pre_annotations"]
    assert pre == {"tool": "label_studio", "model": "rm-deberta-v3@2024-05", "score": 0.81,
                   "questions": ["comparison", "helpful"], "preferred": ids["Meeting now Friday."],
                   "ratings": {str(ids["The meeting was cancelled."]): {"helpful": 1}}}
    assert project.items.count() == 3 and project.items.filter(complete=True).count() == 1


def test_prediction_values_not_understood_are_kept_as_given():
    task = {**LABEL_STUDIO, "annotations": [], "predictions": [
        {"model_version": "ner-v2", "score": 0.5,
         "result": [{"from_name": "spans", "to_name": "prompt", "type": "labels",
                     "value": {"start": 0, "end": 9, "labels": ["ACTION"]}},
                    {"from_name": "rewrite_answer", "to_name": "prompt", "type": "textarea",
                     "value": {"text": ["Moved to Friday."]}}]}]}
    [spec], errors = parse_jsonl(json.dumps(task))
    assert errors == [] and [(r["text"], r["model"]) for r in spec.suggested] == [("Moved to Friday.", "ner-v2")]
    assert spec.pre_annotations == [{"tool": "label_studio", "model": "ner-v2", "score": 0.5, "questions": ["spans"],
                                     "values": {"spans": {"start": 0, "end": 9, "labels": ["ACTION"]}}}]


def test_argilla_label_and_rating_suggestions_over_three_responses():
    from labeling.imports import pre_annotation_record

    record = {"id": "r3", "fields": {"prompt": "Pick one", "response1": "one", "response2": "two", "response3": "three"},
              "metadata": {}, "responses": {}, "vectors": {},
              "suggestions": {"best": {"value": "response3", "score": 0.7, "agent": "judge"},
                              "overall_quality": {"value": 4, "score": None, "agent": "judge"},
                              "helpful_response2": {"value": 2, "score": 0.4, "agent": "judge"},
                              "verdict": {"value": "tie", "score": None, "agent": "judge"}}}
    [spec], errors = parse_jsonl(json.dumps(record))
    assert errors == [] and spec.suggested == []
    # a score that names no response cannot be placed, so it is kept as given
    assert [pre_annotation_record(p, [10, 11, 12]) for p in spec.pre_annotations] == [
        {"tool": "argilla", "model": "judge", "score": 0.7, "questions": ["best"], "preferred": 12},
        {"tool": "argilla", "model": "judge", "score": None, "questions": ["overall_quality"],
         "values": {"overall_quality": 4}},
        {"tool": "argilla", "model": "judge", "score": 0.4, "questions": ["helpful_response2"],
         "ratings": {"11": {"helpful": 2}}},
        {"tool": "argilla", "model": "judge", "score": None, "questions": ["verdict"], "choice": "tie"}]


BAD_LINES = [
    {**ARGILLA, "suggestions": ["not", "objects"]},                                     # 1
    {**ARGILLA, "suggestions": {"ranking": ["response1", "response2"]}},                # 2: no {"value"}
    {**ARGILLA, "suggestions": {"preference": {"value": "response1", "score": "high"}}},  # 3
    {**LABEL_STUDIO, "predictions": [77, 78]},                                          # 4: ids, not objects
    {**LABEL_STUDIO, "predictions": [{"model_version": "m", "result": {"value": {}}}]},  # 5
    {**ARGILLA, "suggestions": {"ranking": {"value": ["response1", "response1"], "agent": "m"}}},  # 6
    {"model_a": "big", "model_b": "small", "winner": "model_a", "judge": "annotator-1"},  # 7
]


@pytest.mark.django_db
def test_malformed_suggestions_are_listed_by_line_and_nothing_stored_is_lost(builder, pair_lines_fn):  # noqa: ANN001
    project = actions.create_project(builder, name="tools-bad-lines")
    actions.import_jsonl(project, builder, pair_lines_fn(3), seed=0)
    before = (Prompt.objects.filter(project=project).count(), Response.objects.filter(prompt__project=project).count(),
              project.items.count())
    text = "\n".join(json.dumps(x) for x in [*BAD_LINES, ARGILLA])
    with pytest.raises(actions.ImportRefused) as refused:
        actions.import_jsonl(project, builder, text)
    errors = refused.value.errors
    assert [e["line"] for e in errors] == [1, 2, 3, 4, 5, 6, 7]
    assert "suggestions" in errors[0]["message"] and "'ranking'" in errors[1]["message"]
    assert "score" in errors[2]["message"] and "predictions" in errors[3]["message"]
    assert "result" in errors[4]["message"] and "twice" in errors[5]["message"]
    assert "preference export" in errors[6]["message"]
    after = (Prompt.objects.filter(project=project).count(), Response.objects.filter(prompt__project=project).count(),
             project.items.count())
    assert after == before
    # skip: the good line is stored, the bad ones listed, the earlier items kept
    result = actions.import_jsonl(project, builder, text, on_error="skip")
    assert [e["line"] for e in result.errors] == [1, 2, 3, 4, 5, 6, 7]
    assert (result.prompts, result.suggested_responses, result.pre_annotations) == (1, 1, 2)
    assert Prompt.objects.filter(project=project).count() == before[0] + 1


@pytest.mark.browser
@pytest.mark.slow
def test_the_manage_page_lists_the_imported_suggestions_and_predictions(page, studio_server):  # noqa: ANN001
    from tests.live import sign_in

    builder = studio_server.session("builder", "builder-demo-pass")
    status, project = builder.request("POST", "/api/labeling/projects/", {"name": "tools in the browser"})
    assert status == 201, project
    sign_in(page, studio_server, "builder", "builder-demo-pass")
    page.goto(f"{studio_server.url}/labeling/{project['id']}/manage/")
    page.get_by_label("…or paste lines").fill(json.dumps(ARGILLA) + "\n" + json.dumps(LABEL_STUDIO) + "\n")
    page.get_by_role("button", name="Import").click()
    page.locator("#import-result").get_by_text("Stored 2 prompts").wait_for()
    assert page.locator("#import-result").inner_text().startswith(
        "Stored 2 prompts, 6 responses, 6 items, 2 judgements.")
    assert page.locator("#import-suggestions").inner_text() == (
        "Model suggestions / predictions: 2 candidate responses (source: the named model), "
        "3 pre-annotations kept with their prompts (not judgements).")
