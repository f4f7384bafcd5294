"""Pre-annotations on the annotator page: the project setting, the locked item's suggestions in
the task's own terms (positions after the randomized order), who may read them, and that they
stay out of the votes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from labeling import actions
from labeling.models import Assignment, Prompt, Response
from labeling.suggestions import task_suggestions
from tests.labeling.test_import_tools import ARGILLA, LABEL_STUDIO

pytestmark = pytest.mark.django_db


def next_for(client, project):  # noqa: ANN001, ANN201
    resp = client.post(f"/api/labeling/projects/{project.pk}/next/", format="json")
    assert resp.status_code == 200, resp.content
    return resp.json()


def suggestions_of(client, assignment):  # noqa: ANN001, ANN201
    return client.get(f"/api/labeling/assignments/{assignment}/suggestions/")


def with_pre_annotations(project, make) -> None:  # noqa: ANN001
    """Give every prompt of ``project`` the pre-annotations ``make(listed response ids)`` returns."""
    for prompt in Prompt.objects.filter(project=project):
        ids = list(prompt.responses.order_by("id").values_list("id", flat=True))
        prompt.metadata = {**prompt.metadata, "pre_annotations": make(ids)}
        prompt.save(update_fields=["metadata"])


# ---- the setting -------------------------------------------------------------------------------

def test_the_setting_is_hidden_by_default_and_only_builders_change_it(client_for, builder, annotator):  # noqa: ANN001
    resp = client_for(builder).post("/api/labeling/projects/", {"name": "suggested"}, format="json")
    assert resp.status_code == 201 and resp.json()["pre_annotations"] == "hidden"
    pid = resp.json()["id"]
    resp = client_for(builder).post("/api/labeling/projects/", {"name": "pre-filled", "pre_annotations": "prefilled"},
                                    format="json")
    assert resp.status_code == 201 and resp.json()["pre_annotations"] == "prefilled"
    assert client_for(annotator).get(f"/api/labeling/projects/{resp.json()['id']}/").json()["pre_annotations"] \
        == "prefilled"

    resp = client_for(annotator).patch(f"/api/labeling/projects/{pid}/", {"pre_annotations": "shown"}, format="json")
    assert resp.status_code == 403 and resp.json()["code"] == "permission_denied" and resp.json()["hint"]
    resp = client_for(builder).patch(f"/api/labeling/projects/{pid}/", {"pre_annotations": "always"}, format="json")
    body = resp.json()
    assert resp.status_code == 400 and body["code"] == "invalid" and "pre_annotations" in body["fields"] and body["hint"]
    assert client_for(builder).get(f"/api/labeling/projects/{pid}/").json()["pre_annotations"] == "hidden"
    resp = client_for(builder).patch(f"/api/labeling/projects/{pid}/",
                                     {"pre_annotations": "shown", "overlap": 2}, format="json")
    assert resp.status_code == 200 and (resp.json()["pre_annotations"], resp.json()["overlap"]) == ("shown", 2)
    from studio.models import Event

    changes = Event.objects.filter(kind="labeling.project.updated", payload__project=pid).values_list("payload", flat=True)
    assert [sorted(c["fields"]) for c in changes] == [["overlap", "pre_annotations"]]


# ---- the locked item's suggestions -------------------------------------------------------------

def _prefer_first(ids: list[int]) -> list[dict]:
    return [{"tool": "label_studio", "model": "rm-v3", "score": 0.81, "questions": ["comparison"], "preferred": ids[0]}]


@pytest.mark.parametrize("mode", ["hidden", "shown", "prefilled"])
def test_suggestions_follow_the_setting_and_the_randomized_positions(mode, client_for, annotator, make_project):  # noqa: ANN001
    project = make_project(8, name=f"positions-{mode}", pre_annotations=mode)
    with_pre_annotations(project, _prefer_first)
    client = client_for(annotator)
    seen = set()
    for _ in range(8):
        a = next_for(client, project)
        resp = suggestions_of(client, a["assignment"])
        assert resp.status_code == 200, resp.content
        body = resp.json()
        assert (body["assignment"], body["item"], body["mode"]) == (a["assignment"], a["item"], mode)
        if mode == "hidden":
            assert body["suggestions"] == [] and body["prefill"] is None
        else:
            first = min(r["id"] for r in a["responses"])  # the response listed first, which the model preferred
            position = next(r for r in a["responses"] if r["id"] == first)["label"]
            seen.add(position)
            [s] = body["suggestions"]
            assert s["choice"] == position.lower()
            assert s["summary"] == f"Label Studio · rm-v3 · score 0.81: prefers Answer {position}"
            assert body["prefill"] == ({"suggestion": 0, "choice": position.lower()} if mode == "prefilled" else None)
        resp = client.post("/api/labeling/judgements/", {"assignment": a["assignment"], "choice": "tie"}, format="json")
        assert resp.status_code == 201, resp.content
    if mode != "hidden":
        assert seen == {"A", "B"}  # the order was randomized and the suggestion followed it


def test_only_the_holder_reads_the_suggestions(client_for, make_user, annotator, builder, plain_user, make_project):  # noqa: ANN001
    project = make_project(3, name="holder-only", pre_annotations="prefilled")
    with_pre_annotations(project, _prefer_first)
    other = make_user("otto", "annotator")
    a = next_for(client_for(annotator), project)
    url = f"/api/labeling/assignments/{a['assignment']}/suggestions/"
    for who in (other, builder):
        resp = client_for(who).get(url)
        body = resp.json()
        assert resp.status_code == 403 and body["code"] == "not_your_item" and body["detail"] and body["hint"]
    resp = client_for(plain_user).get(url)
    assert resp.status_code == 403 and resp.json()["code"] == "permission_denied"
    assert client_for(None).get(url).status_code in (401, 403)
    resp = client_for(annotator).get("/api/labeling/assignments/999999/suggestions/")
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"
    # a finished assignment, an expired lock: no longer shown
    Assignment.objects.filter(pk=a["assignment"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    resp = client_for(annotator).get(url)
    assert resp.status_code == 409 and resp.json()["code"] == "lock_expired" and resp.json()["hint"]
    b = next_for(client_for(annotator), project)
    assert client_for(annotator).post("/api/labeling/judgements/", {"assignment": b["assignment"], "choice": "a"},
                                      format="json").status_code == 201
    resp = suggestions_of(client_for(annotator), b["assignment"])
    assert resp.status_code == 409 and resp.json()["code"] == "not_active"


def test_label_studio_prediction_maps_only_onto_the_pairs_it_compared(client_for, builder, annotator):  # noqa: ANN001
    """The prediction preferred answer1 over answer2 and rated answer2; the studio's annotators get
    the model-written candidate paired with each (the judged pair is complete). Against the
    candidate nothing is known of a preference, so none is shown; the rating of answer2 is."""
    project = actions.create_project(builder, name="ls-pairs")
    actions.update_project(project, builder, pre_annotations="prefilled")
    actions.import_jsonl(project, builder, json.dumps(LABEL_STUDIO), seed=1)
    ids = {r.text: r.pk for r in Response.objects.filter(prompt__project=project)}
    client = client_for(annotator)
    got = {}
    for _ in range(2):
        a = next_for(client, project)
        shown = [r["id"] for r in a["responses"]]
        body = suggestions_of(client, a["assignment"]).json()
        got[frozenset(shown)] = (shown, body)
        client.post("/api/labeling/judgements/", {"assignment": a["assignment"], "choice": "tie"}, format="json")
    cand = ids["The meeting has moved to Friday."]
    shown, body = got[frozenset({ids["Meeting now Friday."], cand})]
    assert body["suggestions"] == [] and body["prefill"] is None
    shown, body = got[frozenset({ids["The meeting was cancelled."], cand})]
    label = "A" if shown[0] == ids["The meeting was cancelled."] else "B"
    [s] = body["suggestions"]
    assert s["summary"] == f"Label Studio · rm-deberta-v3@2024-05 · score 0.81: rates Answer {label} helpful 1"
    assert s["ratings"] == {str(ids["The meeting was cancelled."]): {"helpful": 1}} and "choice" not in s
    assert body["prefill"] is None  # a rating is no pairwise answer


def test_argilla_ranking_in_a_ranking_project(client_for, builder, annotator):  # noqa: ANN001
    """An unjudged Argilla record in a ranking project: one item with both listed responses and the
    model-written candidate. The judge ranked the listed two only, so the page shows that order
    but pre-fills no ranking (where the candidate belongs is unknown)."""
    record = {k: v for k, v in ARGILLA.items() if k != "responses"}
    project = actions.create_project(builder, name="argilla-ranking", task_type="ranking")
    actions.update_project(project, builder, pre_annotations="prefilled")
    actions.import_jsonl(project, builder, json.dumps(record))
    a = next_for(client_for(annotator), project)
    body = suggestions_of(client_for(annotator), a["assignment"]).json()
    number = {r["id"]: i + 1 for i, r in enumerate(a["responses"])}
    ids = {r.text: r.pk for r in Response.objects.filter(prompt__project=project)}
    r1, r2 = ids[ARGILLA["fields"]["response1"]], ids[ARGILLA["fields"]["response2"]]
    # "preferred response1" says nothing of the candidate, so it is left out; the ranking of the two is shown
    [ranked] = body["suggestions"]
    assert ranked["says"] == [f"ranks Answer {number[r1]} > Answer {number[r2]}"] and ranked["ranking"] == [r1, r2]
    assert ranked["summary"].startswith("Argilla · judge-llama-3-70b · scores 0.92, 0.08: ranks")
    assert body["prefill"] is None


def test_full_ranking_and_ratings_prefill_the_form(client_for, builder, annotator, pair_lines_fn):  # noqa: ANN001
    ranking = actions.create_project(builder, name="ranked", task_type="ranking")
    actions.import_jsonl(ranking, builder, pair_lines_fn(1), seed=0)
    with_pre_annotations(ranking, lambda ids: [{"tool": "argilla", "model": "judge", "score": None,
                                                 "ranking": [ids[1], ids[0]]}])
    actions.update_project(ranking, builder, pre_annotations="prefilled")
    a = next_for(client_for(annotator), ranking)
    body = suggestions_of(client_for(annotator), a["assignment"]).json()
    listed = sorted(r["id"] for r in a["responses"])
    assert body["prefill"] == {"suggestion": 0, "ranking": [listed[1], listed[0]]}

    rating = actions.create_project(builder, name="rated", task_type="rating", criteria=["helpful"], likert_max=5)
    actions.import_jsonl(rating, builder, pair_lines_fn(1), seed=0)
    with_pre_annotations(rating, lambda ids: [{"tool": "label_studio", "model": "rm", "score": None, "ratings": {
        str(ids[0]): {"helpful": 4, "fluent": 2}, str(ids[1]): {"helpful": 9}}}])
    actions.update_project(rating, builder, pre_annotations="prefilled")
    a = next_for(client_for(annotator), rating)
    body = suggestions_of(client_for(annotator), a["assignment"]).json()
    listed = sorted(r["id"] for r in a["responses"])
    # only what fits the form: a project criterion, within 1..likert_max
    assert body["prefill"] == {"suggestion": 0, "ratings": {str(listed[0]): {"helpful": 4}}}
    [s] = body["suggestions"]
    assert set(s["says"]) == {f"rates Answer {1 + [r['id'] for r in a['responses']].index(listed[0])} fluent 2, helpful 4",
                              f"rates Answer {1 + [r['id'] for r in a['responses']].index(listed[1])} helpful 9"}


def test_pre_annotations_never_become_votes(client_for, builder, annotator, make_project):  # noqa: ANN001
    project = make_project(2, name="no-votes")
    actions.update_project(project, builder, pre_annotations="prefilled")
    with_pre_annotations(project, _prefer_first)
    client = client_for(annotator)
    a = next_for(client, project)
    assert suggestions_of(client, a["assignment"]).json()["prefill"] is not None
    client.post("/api/labeling/judgements/", {"assignment": a["assignment"], "choice": "both_bad"}, format="json")
    snap = actions.create_snapshot(builder, project)
    assert snap.counts["judgements"] == 1 and "pre_annotations" not in json.dumps(snap.payload)
    [item] = snap.payload["items"]
    assert [j["choice"] for j in item["judgements"]] == ["both_bad"]


# ---- the mapping itself (pure) -----------------------------------------------------------------

def test_mapping_names_positions_and_hides_the_answers_models():
    pre = [{"tool": "argilla", "model": "writer-7b", "score": 0.5, "choice": "tie"},
           {"tool": "label_studio", "model": "ner-v2", "score": 0.5, "values": {"spans": {"labels": ["<b>X</b>"]}}},
           {"tool": "argilla", "model": "judge", "score": None, "comment": "B <script>is</script> vague",
            "preferred": 99},
           "not a pre-annotation"]
    out, prefill = task_suggestions(pre, "pairwise", [5, 4], listed={4, 5, 99}, hidden_models={"writer-7b"})
    assert [s["summary"] for s in out] == ["Argilla · a model · score 0.5: calls it a tie",
                                           "Label Studio · ner-v2 · score 0.5",
                                           "Argilla · judge"]
    assert out[0]["model"] is None and out[1]["values"] == {"spans": '{"labels": ["<b>X</b>"]}'}
    assert out[2]["comment"] == "B <script>is</script> vague" and "choice" not in out[2]
    assert prefill == {"suggestion": 0, "choice": "tie"}
    # a verdict over responses the tool never listed (a model's candidate in the pair) is not applied
    out, prefill = task_suggestions(pre[:1], "pairwise", [5, 4], listed={5})
    assert out == [] and prefill is None


def test_pages_carry_the_setting(client_for, builder, annotator, make_project):  # noqa: ANN001
    project = make_project(1, name="pages")
    page = client_for(annotator).get(f"/labeling/{project.pk}/").content.decode()
    assert 'data-pre-annotations="hidden"' in page and 'id="suggestions"' not in page  # no panel, no request
    actions.update_project(project, builder, pre_annotations="shown")
    page = client_for(annotator).get(f"/labeling/{project.pk}/").content.decode()
    assert 'data-pre-annotations="shown"' in page and 'id="suggestion-list"' in page
    manage = client_for(builder).get(f"/labeling/{project.pk}/manage/").content.decode()
    assert '<option value="shown" selected>' in manage and 'id="settings-form"' in manage
    assert 'name="pre_annotations"' in client_for(builder).get("/labeling/").content.decode()
