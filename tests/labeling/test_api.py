"""The labeling API: projects, imports, assignment rules, judgements, reports, snapshots, exports."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from labeling import actions
from labeling.models import Assignment, Item, Judgement, Project, Report, Snapshot, SnapshotImmutable

pytestmark = pytest.mark.django_db


def next_for(client, project):  # noqa: ANN001, ANN201
    resp = client.post(f"/api/labeling/projects/{project.pk}/next/", format="json")
    assert resp.status_code == 200, resp.content
    return resp.json()


def judge(client, assignment, **fields):  # noqa: ANN001, ANN003, ANN201
    return client.post("/api/labeling/judgements/", {"assignment": assignment, **fields}, format="json")


# ---- projects and imports ----------------------------------------------------------------------

def test_builder_creates_project_annotator_cannot(client_for, builder, annotator):  # noqa: ANN001
    body = {"name": "Helpfulness", "task_type": "pairwise", "overlap": 3, "guidelines": "# Be kind\nPrefer *true* answers."}
    resp = client_for(annotator).post("/api/labeling/projects/", body, format="json")
    assert resp.status_code == 403 and resp.json()["code"] == "permission_denied"
    resp = client_for(builder).post("/api/labeling/projects/", body, format="json")
    assert resp.status_code == 201, resp.content
    pid = resp.json()["id"]
    assert client_for(annotator).get(f"/api/labeling/projects/{pid}/").json()["overlap"] == 3
    resp = client_for(builder).patch(f"/api/labeling/projects/{pid}/", {"guidelines": "new"}, format="json")
    assert resp.json()["guidelines_version"] == 2
    resp = client_for(builder).post("/api/labeling/projects/", {**body, "overlap": 0}, format="json")
    assert resp.status_code == 400 and "overlap" in resp.json()["fields"]


def test_import_refuses_bad_lines_and_stores_nothing(client_for, builder, make_project, pair_lines_fn):  # noqa: ANN001
    project = make_project(0, name="imports")
    good = pair_lines_fn(3).splitlines()
    text = "\n".join([good[0], "{not json", good[1], json.dumps({"prompt": "only one", "responses": ["x"]}), good[2]])
    resp = client_for(builder).post(f"/api/labeling/projects/{project.pk}/import/", {"jsonl": text}, format="json")
    assert resp.status_code == 400
    body = resp.json()
    assert body["code"] == "import_refused" and body["stored"] is False
    assert [e["line"] for e in body["errors"]] == [2, 4]
    assert "not valid JSON" in body["errors"][0]["message"] and "at least 2 responses" in body["errors"][1]["message"]
    assert Item.objects.filter(project=project).count() == 0 and project.prompts.count() == 0
    resp = client_for(builder).post(f"/api/labeling/projects/{project.pk}/import/",
                                    {"jsonl": text, "on_error": "skip"}, format="json")
    assert resp.status_code == 201
    assert resp.json()["items"] == 3 and [e["line"] for e in resp.json()["errors"]] == [2, 4]
    # already stored items are kept when a later import is refused
    client_for(builder).post(f"/api/labeling/projects/{project.pk}/import/", {"jsonl": "{bad"}, format="json")
    assert Item.objects.filter(project=project).count() == 3


def test_import_file_upload_and_multi_turn_and_k_way(client_for, builder, make_project):  # noqa: ANN001
    from django.core.files.uploadedfile import SimpleUploadedFile

    project = make_project(0, name="multi")
    line = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "Tell me a joke"}],
            "responses": ["joke one", "joke two", "joke three"]}
    upload = SimpleUploadedFile("p.jsonl", (json.dumps(line) + "\n").encode())
    resp = client_for(builder).post(f"/api/labeling/projects/{project.pk}/import/", {"file": upload}, format="multipart")
    assert resp.status_code == 201, resp.content
    assert resp.json()["items"] == 3  # pairwise: every pair of the three responses
    assert project.prompts.get().messages[-1]["content"] == "Tell me a joke"


def test_order_is_randomized_and_recorded(builder, make_project):  # noqa: ANN001
    project = make_project(40, name="order")
    firsts = [item.shown_responses()[0].model_name for item in Item.objects.filter(project=project)]
    assert 5 < firsts.count("alpha") < 35  # both orders occur
    assert all(len(item.shown_responses()) == 2 for item in Item.objects.filter(project=project))


# ---- assignment and judgements -------------------------------------------------------------

def test_label_flow_and_idempotent_submission(client_for, annotator, make_project):  # noqa: ANN001
    project = make_project(2, name="flow", overlap=1)
    c = client_for(annotator)
    a = next_for(c, project)
    assert [r["label"] for r in a["responses"]] == ["A", "B"] and a["prompt"][0]["role"] == "user"
    assert "model" not in a["responses"][0]  # model identity is hidden from annotators
    assert next_for(c, project)["assignment"] == a["assignment"]  # the current lock is returned again
    resp = judge(c, a["assignment"], choice="a", strength=-2, client_token="tok-1", time_on_task_ms=4200)
    assert resp.status_code == 201, resp.content
    again = judge(c, a["assignment"], choice="b", client_token="tok-1")
    assert again.status_code == 200 and again.json()["id"] == resp.json()["id"] and again.json()["choice"] == "a"
    assert Judgement.objects.count() == 1
    dup = judge(c, a["assignment"], choice="a", client_token="tok-2")
    assert dup.status_code == 409 and dup.json()["code"] == "already_submitted"
    j = Judgement.objects.get()
    assert j.time_on_task_ms == 4200 and j.strength == -2
    assert Item.objects.get(pk=a["item"]).complete
    b = next_for(c, project)
    assert b["item"] != a["item"]
    judge(c, b["assignment"], choice="tie", client_token="tok-3")
    done = next_for(c, project)
    assert done["assignment"] is None and done["reason"] == "no_items"


def test_strength_and_choice_validation(client_for, annotator, make_project):  # noqa: ANN001
    project = make_project(1, name="validate")
    c = client_for(annotator)
    a = next_for(c, project)
    resp = judge(c, a["assignment"], choice="a", strength=2)
    assert resp.status_code == 400 and resp.json()["fields"]["strength"]
    resp = judge(c, a["assignment"], choice="maybe")
    assert resp.status_code == 400 and "choice" in resp.json()["fields"]
    resp = judge(c, a["assignment"], strength=5, choice="b")
    assert resp.status_code == 400
    assert judge(c, a["assignment"], choice="b", strength=3).status_code == 201


def test_someone_elses_item_and_expired_lock_are_refused(client_for, make_user, make_project):  # noqa: ANN001
    project = make_project(2, name="locks", lock_ttl_seconds=60)
    u1, u2 = make_user("u1", "annotator"), make_user("u2", "annotator")
    a1 = next_for(client_for(u1), project)
    resp = judge(client_for(u2), a1["assignment"], choice="a")
    assert resp.status_code == 403 and resp.json()["code"] == "not_your_item" and resp.json()["hint"]
    Assignment.objects.filter(pk=a1["assignment"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    resp = judge(client_for(u1), a1["assignment"], choice="a")
    assert resp.status_code == 409 and resp.json()["code"] == "lock_expired" and "expired" in resp.json()["detail"]
    # the expired slot is reclaimed: u2 gets that item
    a2 = next_for(client_for(u2), project)
    assert a2["item"] == a1["item"]
    assert Assignment.objects.get(pk=a1["assignment"]).status == "expired"


def test_overlap_exact_with_many_annotators(client_for, make_user, make_project):  # noqa: ANN001
    project = make_project(3, name="overlap", overlap=2)
    users = [make_user(f"o{i}", "annotator") for i in range(5)]
    for u in users:
        c = client_for(u)
        while True:
            a = next_for(c, project)
            if a["assignment"] is None:
                break
            assert judge(c, a["assignment"], choice="a").status_code == 201
    counts = [Judgement.objects.filter(item=i).count() for i in Item.objects.filter(project=project)]
    assert counts == [2, 2, 2]
    assert Judgement.objects.values("item", "annotator").distinct().count() == 6


def test_skip_frees_the_slot_and_is_not_offered_again(client_for, make_user, make_project):  # noqa: ANN001
    project = make_project(1, name="skip", overlap=1)
    u1, u2 = make_user("s1", "annotator"), make_user("s2", "annotator")
    a = next_for(client_for(u1), project)
    held = next_for(client_for(u2), project)
    assert held["assignment"] is None and held["reason"] == "all_locked"  # the only slot is held, may come free
    resp = client_for(u1).post(f"/api/labeling/assignments/{a['assignment']}/skip/")
    assert resp.status_code == 200 and resp.json()["status"] == "skipped"
    skipped = next_for(client_for(u1), project)
    assert skipped["assignment"] is None and skipped["reason"] == "no_items"  # never offered again to u1
    assert next_for(client_for(u2), project)["item"] == a["item"]


def test_no_self_review(client_for, builder, make_user, make_project):  # noqa: ANN001
    project = make_project(0, name="self")
    writer = make_user("writer", "annotator")
    line = {"prompt": "Write a haiku", "responses": [{"text": "mine", "source": "human", "author": "writer"},
                                                      {"text": "model's", "model": "m"}]}
    actions.import_jsonl(project, builder, json.dumps(line))
    assert next_for(client_for(writer), project)["reason"] == "no_items"
    other = make_user("reader", "annotator")
    assert next_for(client_for(other), project)["assignment"] is not None


def test_cap_and_gold_block(client_for, builder, make_user, make_project):  # noqa: ANN001
    project = make_project(5, name="cap", annotator_cap=2)
    u = make_user("capped", "annotator")
    c = client_for(u)
    for _ in range(2):
        judge(c, next_for(c, project)["assignment"], choice="a")
    assert next_for(c, project)["reason"] == "cap_reached"

    gold = make_project(0, name="gold", gold_rate=1.0, gold_min_judged=2, gold_block_accuracy=0.6)
    lines = [json.dumps({"prompt": f"g{i}", "responses": ["right", "wrong"], "gold": {"choice": "a"}}) for i in range(3)]
    lines += [json.dumps({"prompt": "regular", "responses": ["x", "y"]})]
    actions.import_jsonl(gold, builder, "\n".join(lines), seed=1)
    v = make_user("careless", "annotator")
    cv = client_for(v)
    for _ in range(2):
        a = next_for(cv, gold)
        item = Item.objects.get(pk=a["item"])
        assert item.is_gold
        wrong = {"a": "b", "b": "a"}[item.gold_answer["choice"]]
        judge(cv, a["assignment"], choice=wrong)
    assert next_for(cv, gold)["reason"] == "gold_blocked"
    assert Judgement.objects.filter(annotator=v, gold_correct=False).count() == 2


def test_gold_answer_follows_the_shuffle(builder, make_project):  # noqa: ANN001
    project = make_project(0, name="goldshuffle")
    lines = [json.dumps({"prompt": f"g{i}", "responses": ["RIGHT", "wrong"], "gold": {"choice": "a"}}) for i in range(20)]
    actions.import_jsonl(project, builder, "\n".join(lines), seed=2)
    for item in Item.objects.filter(project=project):
        shown = item.shown_responses()
        right_pos = "a" if shown[0].text == "RIGHT" else "b"
        assert item.gold_answer["choice"] == right_pos


def test_edit_within_window_only(client_for, annotator, make_user, make_project):  # noqa: ANN001
    project = make_project(1, name="edit", edit_window_seconds=600)
    c = client_for(annotator)
    a = next_for(c, project)
    jid = judge(c, a["assignment"], choice="a", strength=-1).json()["id"]
    resp = c.patch(f"/api/labeling/judgements/{jid}/", {"choice": "b"}, format="json")
    assert resp.status_code == 200 and resp.json()["choice"] == "b" and resp.json()["strength"] is None
    assert resp.json()["edit_count"] == 1
    other = make_user("nosy", "annotator")
    assert client_for(other).patch(f"/api/labeling/judgements/{jid}/", {"choice": "a"}, format="json").status_code == 404
    Judgement.objects.filter(pk=jid).update(created_at=timezone.now() - timedelta(seconds=601))
    resp = c.patch(f"/api/labeling/judgements/{jid}/", {"choice": "a"}, format="json")
    assert resp.status_code == 409 and resp.json()["code"] == "edit_window_closed"


@pytest.mark.parametrize("task_type", ["ranking", "rating", "correction"])
def test_other_task_types(task_type, client_for, builder, annotator):  # noqa: ANN001
    project = actions.create_project(builder, name=task_type, task_type=task_type, criteria=["helpful", "honest"])
    actions.import_jsonl(project, builder, json.dumps({"prompt": "Q", "responses": ["one", "two", "three"]}))
    c = client_for(annotator)
    a = next_for(c, project)
    ids = [r["id"] for r in a["responses"]]
    if task_type == "ranking":
        assert judge(c, a["assignment"], ranking=ids[:2]).status_code == 400
        body = {"ranking": list(reversed(ids))}
    elif task_type == "rating":
        assert judge(c, a["assignment"], ratings={str(ids[0]): {"helpful": 9}}).status_code == 400
        body = {"ratings": {str(i): {"helpful": 4, "honest": 5} for i in ids}}
    else:
        assert judge(c, a["assignment"], corrected_text="  ").status_code == 400
        body = {"corrected_text": "A better answer."}
    resp = judge(c, a["assignment"], **body)
    assert resp.status_code == 201, resp.content


# ---- reports -------------------------------------------------------------------------------

def test_report_lifecycle(client_for, plain_user, moderator, annotator, builder, make_project):  # noqa: ANN001
    body = {"category": "bias", "bias_kind": "gender", "severity": "high", "source": "playground",
            "prompt_messages": [{"role": "user", "content": "Who makes a good nurse?"}],
            "response_text": "Only women.", "model_name": "tiny-v1", "description": "stereotype"}
    resp = client_for(plain_user).post("/api/labeling/reports/", body, format="json")
    assert resp.status_code == 201, resp.content
    rid = resp.json()["id"]
    bad = client_for(plain_user).post("/api/labeling/reports/", {**body, "category": "toxicity"}, format="json")
    assert bad.status_code == 400  # a bias kind only goes with the bias category
    assert client_for(plain_user).post(f"/api/labeling/reports/{rid}/triage/").status_code == 403
    assert client_for(annotator).get("/api/labeling/reports/").json()["count"] == 0  # only their own
    mod = client_for(moderator)
    assert mod.get("/api/labeling/reports/?status=open").json()["count"] == 1
    assert mod.post(f"/api/labeling/reports/{rid}/triage/", {"note": "looking"}, format="json").json()["status"] == "triaged"
    again = mod.post(f"/api/labeling/reports/{rid}/triage/", {}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "invalid_transition"
    resp = mod.post(f"/api/labeling/reports/{rid}/resolve/", {"corrected_text": "Anyone with the training and care."},
                    format="json")
    assert resp.json()["status"] == "resolved" and resp.json()["moderator"] == "mo"
    snap = client_for(builder).post("/api/labeling/snapshots/", {"project": None}, format="json").json()
    recs = client_for(builder).get(f"/api/labeling/snapshots/{snap['id']}/export/?kind=preference&file=json").json()
    assert recs["records"] == [{"prompt": "Who makes a good nurse?", "chosen": "Anyone with the training and care.",
                                "rejected": "Only women.", "id": f"report-{rid}", "chosen_model": "human",
                                "rejected_model": "tiny-v1", "category": "bias", "agreement": 1.0, "n_votes": 1}]
    kto = client_for(builder).get(f"/api/labeling/snapshots/{snap['id']}/export/?kind=kto&file=json").json()
    assert [(r["completion"], r["label"]) for r in kto["records"]] == [("Only women.", False),
                                                                       ("Anyone with the training and care.", True)]


def test_annotator_reports_an_item_response(client_for, annotator, make_project):  # noqa: ANN001
    project = make_project(1, name="rep")
    c = client_for(annotator)
    a = next_for(c, project)
    resp = c.post("/api/labeling/reports/", {"category": "misinformation", "response": a["responses"][1]["id"],
                                             "item": a["item"], "source": "annotator"}, format="json")
    assert resp.status_code == 201
    r = Report.objects.get()
    assert r.project == project and r.response_text == a["responses"][1]["text"] and r.model_name in ("alpha", "beta")
    assert r.prompt_messages[0]["content"].startswith("Question 0")


def test_plain_users_cannot_report_by_item_id(client_for, plain_user, make_project):  # noqa: ANN001
    project = make_project(1, name="rep-plain")
    response_id = Item.objects.filter(project=project).first().shown_responses()[0].pk
    resp = client_for(plain_user).post("/api/labeling/reports/", {"category": "other", "response": response_id},
                                       format="json")
    assert resp.status_code == 403 and "response_text" in resp.json()["hint"]


# ---- snapshots and exports -------------------------------------------------------------------

def test_snapshots_are_immutable_and_versioned(client_for, annotator, builder, make_project):  # noqa: ANN001
    project = make_project(2, name="snap")
    c = client_for(annotator)
    a = next_for(c, project)
    judge(c, a["assignment"], choice="a", strength=-3)
    b = client_for(builder)
    s1 = b.post("/api/labeling/snapshots/", {"project": project.pk, "note": "first"}, format="json").json()
    a2 = next_for(c, project)
    judge(c, a2["assignment"], choice="b")
    s2 = b.post("/api/labeling/snapshots/", {"project": project.pk}, format="json").json()
    assert (s1["version"], s2["version"]) == (1, 2)
    assert s1["counts"] == {"items": 1, "judgements": 1, "reports": 0} and s2["counts"]["judgements"] == 2
    assert s1["content_sha256"] != s2["content_sha256"]
    snap = Snapshot.objects.get(pk=s1["id"])
    with pytest.raises(SnapshotImmutable):
        snap.save()
    with pytest.raises(SnapshotImmutable):
        snap.delete()
    # a later edit does not change the frozen snapshot
    Judgement.objects.update(choice="tie", strength=0)
    recs = b.get(f"/api/labeling/snapshots/{s1['id']}/export/?kind=preference&file=json&margin=1").json()["records"]
    assert len(recs) == 1 and recs[0]["margin"] == 3.0
    item = Item.objects.get(pk=a["item"])
    winner = item.shown_responses()[0].text
    assert recs[0]["chosen"] == winner


def test_export_files_read_back(client_for, annotator, builder, make_project):  # noqa: ANN001
    import io

    import pyarrow.parquet as pq

    project = make_project(3, name="files")
    c = client_for(annotator)
    for _ in range(3):
        judge(c, next_for(c, project)["assignment"], choice="a")
    sid = client_for(builder).post("/api/labeling/snapshots/", {"project": project.pk}, format="json").json()["id"]
    for fmt in ("preference", "preference_conversational", "kto", "battles"):
        resp = client_for(builder).get(f"/api/labeling/snapshots/{sid}/export/?kind={fmt}&file=parquet")
        assert resp.status_code == 200 and resp["X-Snapshot"] == "files@v1"
        table = pq.read_table(io.BytesIO(resp.content))
        jl = client_for(builder).get(f"/api/labeling/snapshots/{sid}/export/?kind={fmt}&file=jsonl")
        rows = [json.loads(line) for line in jl.content.decode().splitlines()]
        assert table.to_pylist() == rows and len(rows) >= 3
    assert client_for(builder).get(f"/api/labeling/snapshots/{sid}/export/?kind=nope").status_code == 400
    assert client_for(annotator).get(f"/api/labeling/snapshots/{sid}/export/").status_code == 403


def test_quality_endpoint(client_for, make_user, builder, make_project):  # noqa: ANN001
    project = make_project(4, name="quality", overlap=4)
    for i in range(4):
        c = client_for(make_user(f"q{i}", "annotator"))
        for _ in range(4):
            judge(c, next_for(c, project)["assignment"], choice="a" if i < 3 else "b", time_on_task_ms=3000 + i)
    q = client_for(builder).get(f"/api/labeling/projects/{project.pk}/quality/").json()
    assert q["progress"]["judgements"] == 16 and q["progress"]["complete_items"] == 4
    assert set(q["alpha"]) == {"choice (nominal)"}
    rows = {r["username"]: r for r in q["annotators"]}
    assert rows["q0"]["agreement"] == 1.0 and rows["q3"]["agreement"] == 0.0
    assert len(q["adjudication"]) == 4 and q["adjudication"][0]["agreement"] == pytest.approx(3 / 4)
    assert {r["model"] for r in q["leaderboard"]} == {"alpha", "beta"}


def test_events_published_on_judgement(client_for, annotator, make_project):  # noqa: ANN001
    from studio.models import Event

    project = make_project(1, name="events")
    c = client_for(annotator)
    judge(c, next_for(c, project)["assignment"], choice="a")
    kinds = list(Event.objects.filter(group=f"labeling.project.{project.pk}").values_list("kind", flat=True))
    assert "labeling.judgement" in kinds and "labeling.imported" in kinds


def test_openapi_documents_labeling(client_for):  # noqa: ANN001
    resp = client_for(None).get("/api/schema/", HTTP_ACCEPT="application/json")
    paths = json.loads(resp.content)["paths"] if resp["Content-Type"].startswith("application/json") else None
    if paths is None:
        import yaml

        paths = yaml.safe_load(resp.content)["paths"]
    for p in ("/api/labeling/projects/", "/api/labeling/projects/{id}/next/", "/api/labeling/judgements/",
              "/api/labeling/reports/{id}/resolve/", "/api/labeling/snapshots/{id}/export/",
              "/api/labeling/projects/{id}/import/", "/api/labeling/projects/{id}/quality/"):
        assert p in paths, p


def test_pages_render_and_escape_model_text(client_for, annotator, builder, moderator, make_project):  # noqa: ANN001
    project = make_project(1, name="<b>pages</b>", guidelines="# Rules\n<script>alert(1)</script>\n\n*kind*")
    html = client_for(annotator).get(f"/labeling/{project.pk}/").content.decode()
    assert "<em>kind</em>" in html and "<script>alert(1)</script>" not in html
    assert "&lt;b&gt;pages&lt;/b&gt;" in html
    assert client_for(annotator).get("/labeling/").status_code == 200
    assert client_for(annotator).get(f"/labeling/{project.pk}/manage/").status_code == 403
    assert client_for(builder).get(f"/labeling/{project.pk}/manage/").status_code == 200
    Report.objects.create(category="toxicity", response_text="<img src=x onerror=alert(1)>", reporter=annotator)
    page = client_for(moderator).get("/reports/").content.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page


def test_submit_and_next_in_one_request(client_for, annotator, make_project):  # noqa: ANN001
    project = make_project(2, name="one-trip")
    c = client_for(annotator)
    a = next_for(c, project)
    resp = judge(c, a["assignment"], choice="a", next=True, client_token="t-1")
    assert resp.status_code == 201
    nxt = resp.json()["next"]
    assert nxt["assignment"] and nxt["item"] != a["item"]
    last = judge(c, nxt["assignment"], choice="b", next=True).json()
    assert last["next"] == {"assignment": None, "reason": "no_items",
                            "detail": "Nothing left for you to label in this project right now."}
    # a retry with the same token returns the stored judgement and the current lock state
    again = judge(c, a["assignment"], choice="a", next=True, client_token="t-1")
    assert again.status_code == 200 and again.json()["next"]["assignment"] is None


def test_lock_extension(client_for, make_user, make_project):  # noqa: ANN001
    project = make_project(3, lock_ttl_seconds=60)
    u1, u2 = make_user("ext1", "annotator"), make_user("ext2", "annotator")
    a = next_for(client_for(u1), project)
    row = Assignment.objects.get(pk=a["assignment"])
    row.expires_at = timezone.now() + timedelta(seconds=5)  # almost run out
    row.save(update_fields=["expires_at"])
    url = f"/api/labeling/assignments/{a['assignment']}/extend/"
    resp = client_for(u1).post(url)
    assert resp.status_code == 200, resp.content
    extended = Assignment.objects.get(pk=a["assignment"]).expires_at
    assert timedelta(seconds=55) <= extended - timezone.now() <= timedelta(seconds=60)
    assert resp.json()["lock_ttl_seconds"] == 60
    # someone else's lock
    resp = client_for(u2).post(url)
    assert resp.status_code == 403 and resp.json()["code"] == "not_your_item"
    # a lock held for six lock times cannot be extended any more
    Assignment.objects.filter(pk=a["assignment"]).update(created_at=timezone.now() - timedelta(seconds=6 * 60))
    resp = client_for(u1).post(url)
    assert resp.status_code == 409 and resp.json()["code"] == "lock_limit"
    # an expired lock is not revived
    Assignment.objects.filter(pk=a["assignment"]).update(created_at=timezone.now(),
                                                         expires_at=timezone.now() - timedelta(seconds=1))
    resp = client_for(u1).post(url)
    assert resp.status_code == 409 and resp.json()["code"] == "lock_expired"
    # nor a finished one
    b = next_for(client_for(u2), project)
    assert judge(client_for(u2), b["assignment"], choice="a").status_code == 201
    resp = client_for(u2).post(f"/api/labeling/assignments/{b['assignment']}/extend/")
    assert resp.status_code == 409 and resp.json()["code"] == "not_active"


def test_a_slot_taken_meanwhile_is_looked_for_again_without_losing_the_judgement(make_user, make_project,  # noqa: ANN001
                                                                                monkeypatch):
    """The next item's hand-out runs in the submission's transaction without a savepoint: a slot
    taken between the look and the lock must not raise (that would roll the judgement back) but be
    skipped (ON CONFLICT DO NOTHING) and the next free item handed out instead."""
    from django.db import connection

    project = make_project(3, name="stale-look")  # overlap 1
    u1, u2 = make_user("stale1", "annotator"), make_user("stale2", "annotator")
    held = actions.next_item(project, u1)
    mine = actions.next_item(project, u2)
    real_look, stale = actions._free_item, [held["item"]]

    def look(project, user, *, gold):  # noqa: ANN001, ANN202 - the first look names u1's held item
        return (stale.pop(), 0) if stale and not gold else real_look(project, user, gold=gold)

    monkeypatch.setattr(actions, "_free_item", look)
    monkeypatch.setattr(connection.features, "has_select_for_update_skip_locked", False)  # the look-then-lock path
    body, created = actions.submit_judgement(u2, {"assignment": mine["assignment"], "choice": "a", "next": True})
    assert created and not stale
    assert body["next"]["assignment"] and body["next"]["item"] not in (held["item"], mine["item"])
    assert Judgement.objects.filter(assignment_id=mine["assignment"], annotator=u2).count() == 1
    assert Assignment.objects.filter(item_id=held["item"]).count() == 1  # nothing written on the taken slot


def test_the_same_submission_sent_twice_at_once_returns_the_stored_judgement(make_user, make_project,  # noqa: ANN001
                                                                             monkeypatch):
    """A retry racing its own first send: its token look-up ran before the first one committed, then
    it waited for the assignment's row lock. It gets the stored judgement (200), not a 409."""
    project = make_project(2, name="double-send")
    user = make_user("double", "annotator")
    task = actions.next_item(project, user)
    sent = {"assignment": task["assignment"], "choice": "b", "client_token": "same-send"}
    first, created = actions.submit_judgement(user, dict(sent))
    assert created
    real, missed = actions._stored_for_token, []

    def look(who, token):  # noqa: ANN001, ANN202 - the second send's first look-up: not committed yet
        if not missed:
            missed.append(token)
            return None
        return real(who, token)

    monkeypatch.setattr(actions, "_stored_for_token", look)
    again, created = actions.submit_judgement(user, dict(sent))
    assert missed == ["same-send"] and not created and again["id"] == first["id"]
    other = make_user("double-other", "annotator")
    missed.clear()
    with pytest.raises(actions.StudioAPIError) as refused:  # someone else's item stays refused
        actions.submit_judgement(other, dict(sent))
    assert refused.value.status_code in (403, 409)
    assert Judgement.objects.filter(project=project).count() == 1
