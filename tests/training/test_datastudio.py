"""Data studio API: sources (every bad input → a clear error and nothing changed), curation runs
(create, progress events, cancel, resume, a crash leaves no dataset version), the recipe tools
(preview, LSH calculator), audit and datasheet pages, and roles."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from training.models import DatasetVersion
from training.models.datastudio import CurationRun, DataSource

BASE = "/api/datastudio"
LIGHT = [{"step": "normalize", "config": {}}, {"step": "length", "config": {"min_words": 5}},
         {"step": "exact_dedup", "config": {}}]


def docs_jsonl(n: int, *, start: int = 0, dup_every: int = 0) -> bytes:
    """``n`` distinct English documents (every ``dup_every``-th repeats the one before)."""
    lines = []
    for i in range(start, start + n):
        k = i - 1 if dup_every and i % dup_every == 0 and i > start else i
        lines.append(json.dumps({"text": f"Document number {k} tells a short story about the river, the mill "
                                         f"and the people who lived beside them in year {1800 + k}."}))
    return ("\n".join(lines) + "\n").encode()


def upload(client, filename: str, content: bytes, **extra):  # noqa: ANN001, ANN003, ANN201
    f = io.BytesIO(content)
    f.name = filename
    return client.post(f"{BASE}/sources/", {"kind": "upload", "file": f, **extra}, format="multipart")


def source_dirs(data_dir: Path) -> list[str]:
    root = data_dir / "sources"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture
def bclient(builder, client_for):  # noqa: ANN001, ANN201
    return client_for(builder)


# ---- sources ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_import_corpus_records_metadata_and_detects_repeat(bclient, data_dir):  # noqa: ANN001
    resp = bclient.post(f"{BASE}/sources/", {"kind": "corpus", "corpus": "austen"}, format="json")
    assert resp.status_code == 201, resp.json()
    src = resp.json()
    assert (src["kind"], src["domain"], src["language"]) == ("corpus", "books", "en")
    assert src["licence"] and src["documents"] > 100
    assert (Path(DataSource.objects.get(pk=src["id"]).path) / "documents.jsonl").exists()
    again = bclient.post(f"{BASE}/sources/", {"kind": "corpus", "corpus": "austen", "name": "again"}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "source_duplicate"
    assert str(src["id"]) in again.json()["detail"]
    assert DataSource.objects.count() == 1 and source_dirs(data_dir) == [str(src["id"])]


@pytest.mark.django_db
def test_upload_skips_malformed_rows_with_line_numbers_and_detects_repeat(bclient, data_dir):  # noqa: ANN001
    content = docs_jsonl(3) + b"{not json\n" + docs_jsonl(2, start=3)
    resp = upload(bclient, "notes.jsonl", content, domain="news", language="en", licence="CC-BY-4.0")
    assert resp.status_code == 201, resp.json()
    src = resp.json()
    assert (src["documents"], src["domain"], src["licence"]) == (5, "news", "CC-BY-4.0")
    assert src["report"]["bad_rows_total"] == 1 and src["report"]["bad_rows"][0]["line"] == 4
    repeat = upload(bclient, "renamed.jsonl", content)
    assert repeat.status_code == 409 and repeat.json()["code"] == "source_duplicate"
    assert DataSource.objects.count() == 1


BAD_UPLOADS = [
    ("refused.jsonl", docs_jsonl(2) + b"oops\n", {"on_error": "refuse"}, 400, "malformed_rows"),
    ("image.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, {}, 400, "binary_file"),
    ("program.exe", b"MZ\x90\x00", {}, 400, "unsupported_format"),
    ("empty.jsonl", b"\n\n", {}, 400, "no_documents"),
    ("notes.txt", b"some text", {"domain": "astrology"}, 400, "invalid"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("name,content,extra,status,code", BAD_UPLOADS, ids=[c[4] for c in BAD_UPLOADS])
def test_bad_upload_is_refused_and_changes_nothing(bclient, data_dir, name, content, extra, status, code):  # noqa: ANN001
    first = upload(bclient, "keep.jsonl", docs_jsonl(3))
    assert first.status_code == 201
    before = source_dirs(data_dir)
    kept = (data_dir / "sources" / before[0] / "documents.jsonl").read_bytes()
    resp = upload(bclient, name, content, **extra)
    assert resp.status_code == status, resp.json()
    body = resp.json()
    assert body["code"] == code and body["detail"] and body["hint"], body
    assert DataSource.objects.count() == 1 and source_dirs(data_dir) == before
    assert (data_dir / "sources" / before[0] / "documents.jsonl").read_bytes() == kept


@pytest.mark.django_db
def test_oversized_file_and_archive_bomb_are_refused(bclient, data_dir, monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("STUDIO_SOURCE_MAX_FILE_BYTES", "1000")
    resp = upload(bclient, "big.txt", b"word " * 400)
    assert resp.status_code == 413 and resp.json()["code"] == "file_too_large", resp.json()
    monkeypatch.delenv("STUDIO_SOURCE_MAX_FILE_BYTES")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.txt", b"a" * (8 << 20))
    resp = upload(bclient, "bomb.zip", bomb.getvalue())
    assert resp.status_code == 413 and resp.json()["code"] == "archive_bomb", resp.json()
    assert DataSource.objects.count() == 0 and source_dirs(data_dir) == []


@pytest.mark.django_db
def test_url_and_folder_errors_are_clear(bclient, data_dir, tmp_path, monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("STUDIO_SOURCE_URL_ALLOW_PRIVATE", "1")
    cases = [({"kind": "url", "url": "http://127.0.0.1:9/page.html"}, 502, "url_unreachable"),
             ({"kind": "url"}, 400, "source_invalid"),
             ({"kind": "folder", "path": str(tmp_path / "missing")}, 400, "not_found"),
             ({"kind": "corpus", "corpus": "nope"}, 400, "source_invalid")]
    for body, status, code in cases:
        resp = bclient.post(f"{BASE}/sources/", body, format="json")
        assert resp.status_code == status and resp.json()["code"] == code, (body, resp.json())
        assert resp.json()["fields"], resp.json()
    assert DataSource.objects.count() == 0 and source_dirs(data_dir) == []


@pytest.mark.django_db
def test_folder_import_respects_gitignore_and_tags_languages(bclient, data_dir, tmp_path):  # noqa: ANN001
    repo = tmp_path / "repo"
    (repo / "node_modules" / "x").mkdir(parents=True)
    (repo / "node_modules" / "x" / "index.js").write_text("module.exports = 1;\n")
    (repo / ".gitignore").write_text("secret.txt\n")
    (repo / "secret.txt").write_text("do not import")
    (repo / "main.py").write_text("def main():\n    return 42\n")
    (repo / "README.md").write_text("# Project\n\nA readme.\n")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    resp = bclient.post(f"{BASE}/sources/", {"kind": "folder", "path": str(repo), "licence": "MIT"}, format="json")
    assert resp.status_code == 201, resp.json()
    src = resp.json()
    assert src["domain"] == "code" and src["documents"] == 2
    assert src["report"]["programming_languages"].get("Python") == 1
    texts = [json.loads(x)["text"] for x in (Path(DataSource.objects.get(pk=src["id"]).path) / "documents.jsonl")
             .read_text().splitlines()]
    assert not any("do not import" in t or "module.exports" in t for t in texts)


# ---- recipe tools -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_lsh_calculator_matches_the_formula(bclient):  # noqa: ANN001
    resp = bclient.get(f"{BASE}/lsh/", {"bands": 14, "rows": 8, "threshold": 0.8, "optimal_for": 112})
    assert resp.status_code == 200, resp.json()
    out = resp.json()
    assert out["p_candidate_at_threshold"] == pytest.approx(1 - (1 - 0.8 ** 8) ** 14, abs=1e-6)
    i = out["similarity"].index(0.5)
    assert out["probability"][i] == pytest.approx(1 - (1 - 0.5 ** 8) ** 14, abs=1e-6)
    assert out["knee"] == pytest.approx((1 / 14) ** (1 / 8), abs=1e-4)
    assert out["optimal"]["bands"] * out["optimal"]["rows"] <= 112
    bad = bclient.get(f"{BASE}/lsh/", {"bands": 0, "rows": 8})
    assert bad.status_code == 400 and "bands" in bad.json()["fields"]


@pytest.mark.django_db
def test_preview_histogram_and_both_sides_of_the_cut(bclient, data_dir):  # noqa: ANN001
    src = bclient.post(f"{BASE}/sources/", {"kind": "corpus", "corpus": "austen"}, format="json").json()
    resp = bclient.post(f"{BASE}/preview/", {"step": {"step": "gopher_quality", "config": {}},
                                             "value_field": "n_words", "sources": [src["id"]], "sample": 60},
                        format="json")
    assert resp.status_code == 200, resp.json()
    out = resp.json()
    assert out["n"] == 60 and sum(out["histogram"]["counts"]) == 60
    assert [c["cut"] for c in out["cuts"]] == [50, 100000]
    assert all(x["value"] >= 100000 for x in out["cuts"][1]["above"])
    bad = bclient.post(f"{BASE}/preview/", {"step": {"step": "gopher_quality"}, "value_field": "nope",
                                            "sources": [src["id"]]}, format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "recipe_invalid"


@pytest.mark.django_db
def test_recipes_show_presets_side_by_side_and_validation_names_the_field(bclient):  # noqa: ANN001
    out = bclient.get(f"{BASE}/recipes/").json()
    assert [s["step"] for s in out["default"]][0] == "extract"
    assert {"default", "gopher-datatrove", "gopher-dolma", "gopher-nemo", "c4", "fineweb"} <= set(out["presets"])
    assert any(r["differs"] for r in out["thresholds"]["gopher"])
    bad = bclient.post(f"{BASE}/recipes/validate/", {"recipe": [{"step": "length", "config": {"min_chars": -1}}]},
                       format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "recipe_invalid"
    assert any(k.startswith("recipe.length.") for k in bad.json()["fields"]), bad.json()


# ---- curation runs ----------------------------------------------------------------------------------


@pytest.fixture
def small_source(bclient, data_dir):  # noqa: ANN001, ANN201
    resp = upload(bclient, "stories.jsonl", docs_jsonl(40, dup_every=5), domain="books", licence="CC0-1.0")
    assert resp.status_code == 201, resp.json()
    return resp.json()


def create_run(bclient, capture, body, execute=True):  # noqa: ANN001, ANN201
    with capture(execute=execute):
        resp = bclient.post(f"{BASE}/runs/", body, format="json")
    assert resp.status_code == 201, resp.json()
    return CurationRun.objects.get(pk=resp.json()["id"])


@pytest.mark.django_db(transaction=True)
def test_run_streams_progress_and_publishes_a_dataset_version(bclient, small_source, huey_immediate,
                                                              django_capture_on_commit_callbacks):  # noqa: ANN001
    from studio.models import Event

    run = create_run(bclient, django_capture_on_commit_callbacks,
                     {"name": "stories curated", "sources": [small_source["id"]], "recipe": LIGHT, "shard_docs": 10})
    run.refresh_from_db()
    assert run.status == "succeeded", (run.error, run.log_path.read_text())
    kinds = list(Event.objects.filter(group=run.group).order_by("id").values_list("kind", flat=True))
    assert kinds[0] == "curation.status" and "curation.progress" in kinds and kinds[-1] == "curation.status"
    progress = [e.payload["progress"] for e in Event.objects.filter(group=run.group, kind="curation.progress")
                .order_by("id")]
    assert progress[-1]["docs_done"] == 40 and progress[-1]["docs_total"] == 40
    assert {"docs_per_s", "eta_s", "steps"} <= set(progress[-1])
    ds = run.dataset
    assert ds is not None and ds.documents == 33 and ds.source["kind"] == "curation"  # 7 exact duplicates removed
    texts = [json.loads(line)["text"] for f in sorted(ds.documents_file.glob("*.jsonl")) for line in f.open()]
    assert len(texts) == 33 and len(set(texts)) == 33
    report = bclient.get(f"{BASE}/runs/{run.pk}/report/").json()
    dedup = next(s for s in report["steps"] if s["name"] == "exact_dedup")
    assert dedup["by_rule"] == {"exact_duplicate": 7} and dedup["examples"]["exact_duplicate"]
    trail = bclient.get(f"{BASE}/runs/{run.pk}/decisions/", {"rule": "exact_duplicate", "limit": 5}).json()
    assert len(trail["results"]) == 5 and trail["next_offset"] == 5
    first = trail["results"][0]
    assert first["step"] == "exact_dedup" and first["action"] == "drop" and "Document number" in first["text"]
    rest = bclient.get(f"{BASE}/runs/{run.pk}/decisions/", {"rule": "exact_duplicate", "offset": 5}).json()
    assert len(rest["results"]) == 2 and rest["next_offset"] is None
    kept = bclient.get(f"{BASE}/runs/{run.pk}/documents/", {"limit": 50}).json()
    assert len(kept["results"]) == 33 and kept["results"][0]["domain"] == "books"
    assert bclient.get(f"{BASE}/runs/{run.pk}/documents/", {"offset": "x"}).status_code == 400
    sheet = bclient.get(f"{BASE}/runs/{run.pk}/datasheet/").json()["markdown"]
    assert sheet.startswith("# Datasheet") and "exact_duplicate" in sheet and "stories" in sheet
    download = bclient.get(f"{BASE}/runs/{run.pk}/datasheet/", {"download": 1})
    assert download["Content-Type"].startswith("text/markdown") and "attachment" in download["Content-Disposition"]
    # a tokenizer run trains on the version (its shards under data/)
    from training.actions import do_create_run
    from training.models import Run

    tok = do_create_run(None, kind="tokenizer", dataset=ds.pk, config={"vocab_size": 300})
    tok = Run.objects.get(pk=tok.pk)
    assert tok.status == "succeeded", (tok.error, tok.log_path.read_text())
    assert tok.summary["documents"] == 33


@pytest.mark.django_db
def test_bad_run_requests_are_refused(bclient, small_source):  # noqa: ANN001
    cases = [({"sources": [999]}, "source_missing", "sources"),
             ({"sources": [small_source["id"]], "recipe": [{"step": "nope"}]}, "recipe_invalid", "recipe.step"),
             ({"sources": [small_source["id"]], "recipe": [{"step": "near_dedup", "config": {"bands": 0}}]},
              "recipe_invalid", "recipe.near_dedup.bands")]
    for body, code, field in cases:
        resp = bclient.post(f"{BASE}/runs/", body, format="json")
        assert resp.status_code == 400 and resp.json()["code"] == code, resp.json()
        assert field in resp.json()["fields"], resp.json()
    assert CurationRun.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_cancel_queued_then_resume_runs_to_the_end(bclient, small_source, huey_immediate, monkeypatch):  # noqa: ANN001
    from training.datastudio import actions

    real_enqueue, queued = actions._enqueue, []
    monkeypatch.setattr(actions, "_enqueue", queued.append)  # the worker does not pick it up yet
    resp = bclient.post(f"{BASE}/runs/", {"sources": [small_source["id"]], "recipe": LIGHT}, format="json")
    run = CurationRun.objects.get(pk=resp.json()["id"])
    assert queued == [run.pk] and run.status == "queued"
    resp = bclient.post(f"{BASE}/runs/{run.pk}/cancel/")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    again = bclient.post(f"{BASE}/runs/{run.pk}/cancel/")
    assert again.status_code == 409 and again.json()["code"] == "curation_not_active"
    assert actions.claim_curation(run.pk) is None  # a cancelled run is not started by a late worker
    monkeypatch.setattr(actions, "_enqueue", real_enqueue)
    resp = bclient.post(f"{BASE}/runs/{run.pk}/resume/")
    assert resp.status_code == 200
    run.refresh_from_db()
    assert run.status == "succeeded" and run.dataset is not None and run.attempt == 1
    assert bclient.post(f"{BASE}/runs/{run.pk}/resume/").status_code == 409


@pytest.mark.django_db
def test_cancel_running_asks_the_child_to_stop(bclient, small_source, django_capture_on_commit_callbacks):  # noqa: ANN001
    run = create_run(bclient, django_capture_on_commit_callbacks, {"sources": [small_source["id"]], "recipe": LIGHT},
                     execute=False)
    CurationRun.objects.filter(pk=run.pk).update(status="running")
    resp = bclient.post(f"{BASE}/runs/{run.pk}/cancel/")
    assert resp.status_code == 200 and resp.json()["cancel_requested"] is True
    from training.datastudio.actions import cancel_requested

    assert cancel_requested(run.pk)


def _child(spec: dict, work: Path) -> subprocess.Popen:
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.Popen([sys.executable, "-m", "training.datastudio.child", "--spec", str(work / "spec.json"),
                             "--events", str(work / "events.jsonl"), "--every", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _events(work: Path) -> list[dict]:
    path = work / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")] if path.exists() else []


def test_forked_workers_of_the_child_keep_the_default_sigterm():
    """The child catches SIGTERM (to stop after a batch) but the processes it forks (the runner's
    worker pool) must not: stopping the pool terminates them with SIGTERM and waits for them."""
    code = (
        "import os, signal\n"
        "from training.datastudio.child import install_stop_handler\n"
        "stop = install_stop_handler()\n"
        "assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print(os.waitstatus_to_exitcode(status), stop['requested'])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["0", "True"], out.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_child_cancel_keeps_finished_shards_and_resume_equals_uninterrupted(tmp_path, workers):  # noqa: ANN001
    """SIGTERM to the child alone (as the studio sends it) stops it after a batch (exit 3, finished
    shards kept, worker pool stopped); resuming produces exactly the documents of an uninterrupted run."""
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(docs_jsonl(1200, dup_every=7))
    spec = {"inputs": [str(inp)], "recipe": LIGHT, "shard_docs": 20, "workers": workers}
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir()
    cut_dir.mkdir()
    ref = _child({**spec, "out_dir": str(tmp_path / "v-ref")}, ref_dir)
    assert ref.wait(timeout=600) == 0, ref.stdout.read().decode()
    proc = _child({**spec, "out_dir": str(tmp_path / "v-cut")}, cut_dir)
    while not any(e["event"] == "progress" and e["progress"]["shards_done"] >= 2 for e in _events(cut_dir)):
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=600) == 3, proc.stdout.read().decode()
    end = _events(cut_dir)[-1]
    assert end["event"] == "end" and end["summary"]["status"] == "cancelled"
    assert 2 <= end["summary"]["shards_done"] < 60
    assert not (tmp_path / "v-cut").exists()  # no half-written version
    resumed = _child({**spec, "out_dir": str(tmp_path / "v-cut"), "resume": True}, cut_dir)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read().decode()
    first_progress = next(e for e in _events(cut_dir)[_events(cut_dir).index(end) + 1:] if e["event"] == "progress")
    assert first_progress["progress"]["docs_done"] > end["summary"]["shards_done"] * 20 - 1

    def docs(folder: Path) -> list[str]:
        return [line for f in sorted((folder / "data").glob("*.jsonl")) for line in f.read_text().splitlines()]

    assert docs(tmp_path / "v-cut") == docs(tmp_path / "v-ref") and len(docs(tmp_path / "v-ref")) > 0


@pytest.mark.django_db(transaction=True)
def test_malformed_input_mid_run_fails_without_a_dataset_version(bclient, small_source, huey_immediate,
                                                                 django_capture_on_commit_callbacks):  # noqa: ANN001
    src = DataSource.objects.get(pk=small_source["id"])
    src.documents_file.chmod(0o644)
    with src.documents_file.open("a") as f:  # the file changes under the studio: line 41 is broken
        f.write("{broken\n")
    before = DatasetVersion.objects.count()
    run = create_run(bclient, django_capture_on_commit_callbacks,
                     {"sources": [src.pk], "recipe": LIGHT, "shard_docs": 10})
    run.refresh_from_db()
    assert run.status == "failed" and run.error["code"] == "curation_invalid_input", run.error
    assert ":41" in run.error["detail"] and run.error["hint"]
    assert DatasetVersion.objects.count() == before and run.dataset is None
    from training.datastudio.actions import version_dir

    assert not version_dir(run).exists()


@pytest.mark.django_db(transaction=True)
def test_killed_child_is_a_crash_that_leaves_no_dataset_version(bclient, small_source, huey_immediate,
                                                                django_capture_on_commit_callbacks,
                                                                monkeypatch):  # noqa: ANN001
    """The curation process dies (SIGKILL, e.g. out of memory) after its first progress event."""
    from training.datastudio import tasks

    real = tasks.supervise

    def killing_supervise(child, tail, *, on_events, **kwargs):  # noqa: ANN001, ANN003, ANN202
        def on(events):  # noqa: ANN001, ANN202
            on_events(events)
            if any(e.get("event") == "progress" for e in events):
                os.killpg(child.pid, signal.SIGKILL)
        return real(child, tail, on_events=on, **kwargs)

    monkeypatch.setattr(tasks, "supervise", killing_supervise)
    big = upload(bclient, "many.jsonl", docs_jsonl(3000, start=100)).json()
    before = DatasetVersion.objects.count()
    run = create_run(bclient, django_capture_on_commit_callbacks,
                     {"sources": [big["id"]], "recipe": LIGHT, "shard_docs": 50})
    run.refresh_from_db()
    assert run.status == "failed" and run.error["code"] == "curation_crashed" and run.exit_code == -9, run.error
    assert DatasetVersion.objects.count() == before
    from training.datastudio.actions import version_dir

    assert not version_dir(run).exists()


# ---- pages, escaping and roles ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_pages_render_and_the_datasheet_escapes_html(bclient, data_dir, huey_immediate,
                                                     django_capture_on_commit_callbacks):  # noqa: ANN001
    resp = upload(bclient, "evil.jsonl", docs_jsonl(12), name="<script>alert(1)</script>")
    assert resp.status_code == 201, resp.json()
    run = create_run(bclient, django_capture_on_commit_callbacks, {"sources": [resp.json()["id"]], "recipe": LIGHT})
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    for url in ("/data/", "/data/recipes/", f"/data/runs/{run.pk}/", f"/data/runs/{run.pk}/datasheet/"):
        page = bclient.get(url, HTTP_ACCEPT="text/html")
        assert page.status_code == 200, url
        assert b"<script>alert(1)</script>" not in page.content, url
    sheet = bclient.get(f"/data/runs/{run.pk}/datasheet/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in sheet and "<h1>Datasheet" in sheet
    audit = bclient.get(f"/data/runs/{run.pk}/").content.decode()
    assert 'id="audit"' in audit and "exact_dedup" in audit


@pytest.mark.django_db
def test_only_builders_create_sources_and_runs(client_for, annotator, moderator, plain_user, data_dir):  # noqa: ANN001
    for user in (annotator, moderator, plain_user):
        c = client_for(user)
        assert c.post(f"{BASE}/sources/", {"kind": "corpus", "corpus": "austen"}, format="json").status_code == 403
        assert c.post(f"{BASE}/runs/", {"sources": [1]}, format="json").status_code == 403
        assert c.get(f"{BASE}/runs/").status_code == 403
        assert c.get("/data/").status_code == 403
    anon = client_for(None)
    assert anon.post(f"{BASE}/sources/", {"kind": "corpus", "corpus": "austen"}, format="json").status_code == 401
    assert DataSource.objects.count() == 0


def curation_socket(user, run_id: int, query: str = ""):  # noqa: ANN001, ANN201
    from channels.testing import WebsocketCommunicator

    from training.datastudio.consumers import CurationEventsConsumer

    comm = WebsocketCommunicator(CurationEventsConsumer.as_asgi(), f"/ws/curation/{run_id}/{query}")
    comm.scope["user"] = user
    comm.scope["url_route"] = {"kwargs": {"run_id": run_id}}
    return comm


@pytest.mark.django_db(transaction=True)
async def test_websocket_relays_progress_to_builders_only(make_user):  # noqa: ANN001
    from asgiref.sync import sync_to_async
    from django.contrib.auth.models import AnonymousUser

    from studio.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
    from training.datastudio.actions import publish_curation

    builder = await sync_to_async(make_user)("bob", "builder")
    annotator = await sync_to_async(make_user)("annie", "annotator")
    run = await sync_to_async(CurationRun.objects.create)(name="watched", recipe=LIGHT, status="running")
    assert await curation_socket(AnonymousUser(), run.pk).connect() == (False, CLOSE_UNAUTHENTICATED)
    assert await curation_socket(annotator, run.pk).connect() == (False, CLOSE_FORBIDDEN)
    assert await curation_socket(builder, 987654).connect() == (False, CLOSE_FORBIDDEN)
    comm = curation_socket(builder, run.pk)
    assert (await comm.connect())[0]
    await sync_to_async(publish_curation)(run.pk, "curation.progress", {"progress": {"docs_done": 7, "eta_s": 3.0}})
    live = await comm.receive_json_from(timeout=5)
    assert live["kind"] == "curation.progress" and live["payload"]["progress"]["docs_done"] == 7
    await comm.disconnect()


@pytest.mark.django_db
def test_a_run_whose_worker_died_becomes_interrupted_and_resumable(bclient, small_source, monkeypatch):  # noqa: ANN001
    from datetime import timedelta

    from django.utils import timezone

    from training.datastudio import actions

    monkeypatch.setattr(actions, "_enqueue", lambda run_id: None)
    run = CurationRun.objects.create(name="lost", recipe=LIGHT, status="running", worker="elsewhere:1",
                                     heartbeat_at=timezone.now() - timedelta(seconds=actions.STALE_SECONDS + 5))
    fresh = CurationRun.objects.create(name="alive", recipe=LIGHT, status="running", worker="elsewhere:2",
                                       heartbeat_at=timezone.now())
    assert actions.mark_lost_curations() == [run.pk]
    run.refresh_from_db()
    assert run.status == "interrupted" and run.error["code"] == "worker_lost"
    assert CurationRun.objects.get(pk=fresh.pk).status == "running"
    resp = bclient.post(f"{BASE}/runs/{run.pk}/resume/")
    assert resp.status_code == 200 and resp.json()["status"] == "queued"


@pytest.mark.django_db
def test_url_to_the_servers_own_network_is_refused_by_default(bclient, data_dir):  # noqa: ANN001
    for url in ("http://127.0.0.1:8000/api/me/", "http://localhost/x.html", "http://10.0.0.1/x.html",
                "http://169.254.169.254/latest/meta-data/"):
        resp = bclient.post(f"{BASE}/sources/", {"kind": "url", "url": url}, format="json")
        assert resp.status_code >= 400 and resp.json()["code"] == "url_forbidden", (url, resp.json())
    assert DataSource.objects.count() == 0 and source_dirs(data_dir) == []


@pytest.mark.django_db
def test_url_import_fetches_a_page_from_a_real_server(bclient, data_dir, tmp_path, monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("STUDIO_SOURCE_URL_ALLOW_PRIVATE", "1")
    import functools
    import http.server
    import threading

    (tmp_path / "page.html").write_text("<html><body><article><h1>River</h1><p>The mill stood by the river "
                                        "for two hundred years.</p></article></body></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        resp = bclient.post(f"{BASE}/sources/", {"kind": "url", "url": f"{url}/page.html", "licence": "CC-BY-4.0"},
                            format="json")
        assert resp.status_code == 201, resp.json()
        src = resp.json()
        assert (src["kind"], src["domain"], src["documents"], src["origin"]) == ("url", "web", 1, f"{url}/page.html")
        missing = bclient.post(f"{BASE}/sources/", {"kind": "url", "url": f"{url}/nope.html"}, format="json")
        assert missing.status_code == 502 and missing.json()["code"] == "url_http_error"
    finally:
        server.shutdown()
    assert DataSource.objects.count() == 1
