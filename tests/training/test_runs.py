"""Runs through the API with real child processes (Huey in immediate mode): config validation with
field errors, missing inputs refused with the reason, tokenizer and pretraining runs that finish,
metrics recorded and paged, a crashing child reported with its log, cancel/resume rules, lost
workers marked interrupted."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.training.conftest import TINY_PRETRAIN
from training import actions
from training.models import Checkpoint, MetricPoint, Run

pytestmark = pytest.mark.django_db


def post(client, url, body):  # noqa: ANN001, ANN201
    return client.post(url, body, format="json")


# ---- validation ------------------------------------------------------------------------------------

def test_invalid_model_shape_is_a_field_error(client_for, builder, trained_tokenizer, austen_dataset):  # noqa: ANN001
    cfg = json.loads(json.dumps(TINY_PRETRAIN))
    cfg["model"]["n_heads"] = 5  # 64 is not divisible by 5
    resp = post(client_for(builder), "/api/runs/", {"kind": "pretrain", "config": cfg, "dataset": austen_dataset.pk,
                                                    "tokenizer": trained_tokenizer.pk})
    assert resp.status_code == 400
    body = resp.json()
    assert body["code"] == "invalid_config"
    assert "config.model.n_heads" in body["fields"]
    assert "divisible" in body["fields"]["config.model.n_heads"][0]
    assert body["hint"]
    assert not Run.objects.filter(kind="pretrain").exists()


@pytest.mark.parametrize("change,field", [
    ({"steps": 0}, "config.steps"),
    ({"learning_rate": 1}, "config.learning_rate"),
    ({"data": {"seq_len": 4096}}, "config.data.seq_len"),
    ({"optim": {"lr": -1.0}}, "config.optim.lr"),
    ({"out_dir": "/tmp/elsewhere"}, "config.out_dir"),
    ({"data": {"dataset_dir": "/etc"}}, "config.data.dataset_dir"),
    ({"model": {"preset": "huge"}}, "config.model.preset"),
    ({"model": {"preset": "tiny", "vocab_size": 100}}, "config.model.vocab_size"),
])
def test_bad_settings_name_their_field(client_for, builder, trained_tokenizer, austen_dataset, change, field):  # noqa: ANN001
    cfg = {**json.loads(json.dumps(TINY_PRETRAIN)), **change}
    resp = post(client_for(builder), "/api/runs/", {"kind": "pretrain", "config": cfg, "dataset": austen_dataset.pk,
                                                    "tokenizer": trained_tokenizer.pk})
    assert resp.status_code == 400, resp.json()
    assert field in resp.json()["fields"], resp.json()


def test_missing_dataset_and_tokenizer_are_refused_with_the_reason(client_for, builder, data_dir, austen_dataset):  # noqa: ANN001
    c = client_for(builder)
    resp = post(c, "/api/runs/", {"kind": "tokenizer", "dataset": 424242})
    assert resp.status_code == 400 and resp.json()["code"] == "dataset_missing"
    assert "424242" in resp.json()["detail"] and resp.json()["fields"]["dataset"]
    resp = post(c, "/api/runs/", {"kind": "pretrain", "dataset": austen_dataset.pk, "config": TINY_PRETRAIN})
    assert resp.status_code == 400 and resp.json()["code"] == "tokenizer_missing"
    resp = post(c, "/api/runs/", {"kind": "pretrain", "dataset": austen_dataset.pk, "tokenizer": 999, "config": TINY_PRETRAIN})
    assert resp.status_code == 400 and resp.json()["code"] == "tokenizer_missing"
    resp = post(c, "/api/runs/", {"kind": "distill", "dataset": austen_dataset.pk})
    assert resp.status_code == 400 and resp.json()["code"] == "kind_not_launchable"
    resp = post(c, "/api/runs/", {"kind": "tokenizer", "dataset": austen_dataset.pk, "config": {"vocab_size": 10}})
    assert resp.status_code == 400 and "config.vocab_size" in resp.json()["fields"]
    assert not Run.objects.exists()


def test_only_builders_launch_runs(client_for, annotator, data_dir):  # noqa: ANN001
    resp = post(client_for(annotator), "/api/runs/", {"kind": "tokenizer", "dataset": 1})
    assert resp.status_code == 403


# ---- datasets ---------------------------------------------------------------------------------------------

def test_upload_txt_and_jsonl_datasets(client_for, builder, data_dir):  # noqa: ANN001
    from django.core.files.uploadedfile import SimpleUploadedFile

    c = client_for(builder)
    resp = c.post("/api/datasets/upload/", {"file": SimpleUploadedFile("notes.txt", "Emma Woodhouse, handsome.".encode()),
                                            "name": "notes"}, format="multipart")
    assert resp.status_code == 201, resp.json()
    assert resp.json()["documents"] == 1 and resp.json()["source"] == {"kind": "upload", "filename": "notes.txt"}
    lines = "\n".join(json.dumps({"text": f"document {i}"}) for i in range(5)).encode()
    resp = c.post("/api/datasets/upload/", {"file": SimpleUploadedFile("docs.jsonl", lines), "name": "notes"},
                  format="multipart")
    assert resp.status_code == 201 and resp.json()["documents"] == 5 and resp.json()["version"] == 2
    resp = c.post("/api/datasets/upload/", {"file": SimpleUploadedFile("bad.jsonl", b'{"text": "ok"}\n{"txt": 1}\n')},
                  format="multipart")
    assert resp.status_code == 400 and resp.json()["fields"]["file"] == ['line 2 has no "text" string']


def test_corpus_import_records_lineage(client_for, builder, data_dir):  # noqa: ANN001
    resp = post(client_for(builder), "/api/datasets/", {"corpus": "austen", "limit": 3})
    assert resp.status_code == 201
    ds = resp.json()
    assert ds["documents"] == 3 and ds["source"]["kind"] == "corpus" and ds["source"]["name"] == "austen"
    with open(f"{ds['path']}/documents.jsonl") as f:
        assert len(f.readlines()) == 3
    assert post(client_for(builder), "/api/datasets/", {"corpus": "nope"}).status_code == 400


# ---- real runs ---------------------------------------------------------------------------------------------

def test_tokenizer_run_registers_the_tokenizer(trained_tokenizer, client_for, builder):  # noqa: ANN001
    assert trained_tokenizer.vocab_size <= 320
    assert trained_tokenizer.chars_per_token > 1.5  # BPE compresses English text
    resp = post(client_for(builder), f"/api/tokenizers/{trained_tokenizer.pk}/tokenize/",
                {"text": "It is a truth universally acknowledged."})
    assert resp.status_code == 200
    out = resp.json()
    assert out["round_trip"] and "".join(out["pieces"]) == "It is a truth universally acknowledged."


def test_pretraining_run_records_metrics_checkpoints_and_events(client_for, builder, trained_tokenizer, austen_dataset,
                                                                 django_capture_on_commit_callbacks):  # noqa: ANN001
    from studio.models import Event

    c = client_for(builder)
    with django_capture_on_commit_callbacks(execute=True):
        resp = post(c, "/api/runs/", {"kind": "pretrain", "name": "tiny", "config": TINY_PRETRAIN,
                                      "dataset": austen_dataset.pk, "tokenizer": trained_tokenizer.pk})
    assert resp.status_code == 201, resp.json()
    run = Run.objects.get(pk=resp.json()["id"])
    assert run.status == "succeeded", (run.error, run.log_path.read_text()[-3000:])
    assert run.current_step == run.total_steps == 6 and run.attempt == 1 and run.exit_code == 0
    assert run.config["model"]["vocab_size"] == trained_tokenizer.vocab_size  # taken from the tokenizer
    steps = list(MetricPoint.objects.filter(run=run, kind="train").values_list("step", flat=True))
    assert steps == [1, 2, 3, 4, 5, 6]
    assert MetricPoint.objects.filter(run=run, kind="eval").count() == 2
    train = MetricPoint.objects.filter(run=run, kind="train").first().values
    for name in ("loss", "lr", "grad_norm", "throughput(tps)"):
        assert isinstance(train[name], float)
    assert list(Checkpoint.objects.filter(run=run).values_list("step", flat=True)) == [3, 6]
    kinds = list(Event.objects.filter(group=f"run.{run.pk}").values_list("kind", flat=True))
    assert "run.metrics" in kinds and "run.checkpoint" in kinds and kinds.count("run.started") == 2  # prepare, pretrain
    # paged metrics API, and the thinned history
    page = c.get(f"/api/runs/{run.pk}/metrics/?kind=train&limit=4").json()
    assert page["count"] == 6 and [p["step"] for p in page["results"]] == [1, 2, 3, 4]
    thin = c.get(f"/api/runs/{run.pk}/metrics/?max_points=3").json()
    assert [p["step"] for p in thin["results"] if p["kind"] == "train"][-1] == 6
    assert len([p for p in thin["results"] if p["kind"] == "train"]) <= 3
    assert c.get(f"/api/runs/{run.pk}/metrics/?after_step=4&kind=train").json()["count"] == 2
    # the run page renders its charts, checkpoints and log
    page = c.get(f"/runs/{run.pk}/")
    assert page.status_code == 200 and b"chart-loss" in page.content and b"step_000006" in page.content
    assert "pretrain" in c.get(f"/api/runs/{run.pk}/log/").json()["text"]
    # finished runs cannot be cancelled nor resumed, but can be cloned
    assert post(c, f"/api/runs/{run.pk}/cancel/", {}).json()["code"] == "run_not_active"
    assert post(c, f"/api/runs/{run.pk}/resume/", {}).json()["code"] == "run_not_resumable"
    with django_capture_on_commit_callbacks(execute=False):
        clone = post(c, f"/api/runs/{run.pk}/clone/", {"name": "again"})
    assert clone.status_code == 201 and clone.json()["cloned_from"] == run.pk
    assert clone.json()["config"] == run.config


def test_crashing_child_fails_the_run_with_reason_and_log(builder, trained_tokenizer, austen_dataset,
                                                          django_capture_on_commit_callbacks):  # noqa: ANN001
    from pathlib import Path

    (Path(trained_tokenizer.path) / "tokenizer.json").write_text("{ not json")  # corrupted after training
    with django_capture_on_commit_callbacks(execute=True):
        run = actions.do_create_run(builder, kind="pretrain", config=TINY_PRETRAIN, dataset=austen_dataset.pk,
                                    tokenizer=trained_tokenizer.pk)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "failed"
    assert run.error["code"] in ("child_crashed", "invalid_input")
    assert run.error["detail"] and run.error["hint"]
    assert "tokenizer" in run.error["log_tail"].lower()
    assert run.exit_code not in (0, None)


def test_cancel_a_queued_run(client_for, builder, trained_tokenizer, austen_dataset,
                             django_capture_on_commit_callbacks):  # noqa: ANN001
    with django_capture_on_commit_callbacks(execute=False):  # not enqueued: stays queued
        run = actions.do_create_run(builder, kind="pretrain", config=TINY_PRETRAIN, dataset=austen_dataset.pk,
                                    tokenizer=trained_tokenizer.pk)
    resp = post(client_for(builder), f"/api/runs/{run.pk}/cancel/", {})
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    from training.tasks import run_job

    assert run_job.call_local(run.pk) is None  # a worker picking it up later does nothing
    assert Run.objects.get(pk=run.pk).status == "cancelled"


def test_lost_workers_leave_runs_interrupted(builder, austen_dataset):  # noqa: ANN001
    import socket

    dead = Run.objects.create(kind="tokenizer", name="dead worker", status="running", dataset=austen_dataset,
                              worker=f"{socket.gethostname()}:999999", heartbeat_at=timezone.now())
    stale = Run.objects.create(kind="tokenizer", name="silent worker", status="running", dataset=austen_dataset,
                               worker="elsewhere:1", heartbeat_at=timezone.now() - timedelta(minutes=10))
    alive = Run.objects.create(kind="tokenizer", name="busy", status="running", dataset=austen_dataset,
                               worker="elsewhere:2", heartbeat_at=timezone.now())
    marked = actions.mark_lost_runs(this_worker_starting=True)
    assert sorted(marked) == sorted([dead.pk, stale.pk])
    for r in (dead, stale):
        r.refresh_from_db()
        assert r.status == "interrupted" and r.error["code"] == "worker_lost"
    alive.refresh_from_db()
    assert alive.status == "running"


def test_presets_are_valid_configs(trained_tokenizer):  # noqa: ANN001
    tok = trained_tokenizer
    for name, preset in actions.PRETRAIN_PRESETS.items():
        resolved = actions.resolve_pretrain_config(preset["config"], tok)
        assert resolved["steps"] == preset["config"]["steps"], name


@pytest.mark.slow
def test_two_process_run_goes_through_torchrun(builder, trained_tokenizer, austen_dataset,
                                               django_capture_on_commit_callbacks):  # noqa: ANN001
    with django_capture_on_commit_callbacks(execute=True):
        run = actions.do_create_run(builder, kind="pretrain", name="fsdp", config={**TINY_PRETRAIN, "steps": 4},
                                    dataset=austen_dataset.pk, tokenizer=trained_tokenizer.pk, nproc=2, threads=1)
    run = Run.objects.get(pk=run.pk)
    log = run.log_path.read_text()
    assert run.status == "succeeded", (run.error, log[-3000:])
    assert "torch.distributed.run --nproc_per_node=2" in log
    first = MetricPoint.objects.filter(run=run, kind="train").first().values
    assert first["throughput/global(tps)"] == pytest.approx(2 * first["throughput(tps)"])
    assert run.summary["tokens"] == 4 * 2 * 32 * 2  # steps × ranks × seq_len × micro-batch


def test_gpus_are_assigned_from_the_pool(monkeypatch, austen_dataset):  # noqa: ANN001
    monkeypatch.setenv("STUDIO_GPUS", "0,1,2")
    busy = Run.objects.create(kind="pretrain", name="busy", status="running", dataset=austen_dataset,
                              config={"device": "cuda"}, summary={"assigned_gpus": "0"})
    Run.objects.create(kind="pretrain", name="manual", status="running", dataset=austen_dataset,
                       config={"device": "cuda"}, gpus="2")
    one = Run(kind="pretrain", name="one", dataset=austen_dataset, config={"device": "cuda"}, nproc=1)
    two = Run(kind="pretrain", name="two", dataset=austen_dataset, config={"device": "cuda"}, nproc=2)
    cpu = Run(kind="pretrain", name="cpu", dataset=austen_dataset, config={"device": "cpu"}, nproc=2)
    assert actions.assign_gpus(one) == "1"
    assert actions.assign_gpus(two) is None  # only GPU 1 is free: wait
    assert actions.assign_gpus(cpu) == ""
    busy.status = "succeeded"
    busy.save()
    assert actions.assign_gpus(two) == "0,1"
    assert actions.run_gpus(busy) == "0"
    monkeypatch.setenv("STUDIO_GPUS", "")
    assert actions.assign_gpus(two) == ""  # not managed: the run sees every GPU


def test_waiting_for_gpus_keeps_the_run_queued(monkeypatch, builder, trained_tokenizer, austen_dataset,
                                               django_capture_on_commit_callbacks):  # noqa: ANN001
    from training.tasks import run_job

    monkeypatch.setenv("STUDIO_GPUS", "0")
    Run.objects.create(kind="pretrain", name="holder", status="running", dataset=austen_dataset,
                       config={"device": "cuda"}, gpus="0")
    with django_capture_on_commit_callbacks(execute=False):
        run = actions.do_create_run(builder, kind="pretrain", config={**TINY_PRETRAIN, "device": "cuda"},
                                    dataset=austen_dataset.pk, tokenizer=trained_tokenizer.pk)
    assert run_job.call_local(run.pk) == "waiting"
    assert Run.objects.get(pk=run.pk).status == "queued"
    with pytest.raises(Exception) as err:
        actions.do_create_run(builder, kind="pretrain", config={**TINY_PRETRAIN, "device": "cuda"},
                              dataset=austen_dataset.pk, tokenizer=trained_tokenizer.pk, nproc=2)
    assert "nproc" in err.value.fields
