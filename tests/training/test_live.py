"""Websockets of the training app: a run's event stream (who may follow it) and the chat
playground streaming tokens from the real model-serving worker, checked against the core's own
generation; feedback, reports and A/B votes."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from studio.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED
from training.consumers import ChatConsumer, RunEventsConsumer
from training.events import publish_run
from training.models import Checkpoint, Run

pytestmark = pytest.mark.django_db(transaction=True)


def run_socket(user, run_id: int, query: str = "") -> WebsocketCommunicator:  # noqa: ANN001
    comm = WebsocketCommunicator(RunEventsConsumer.as_asgi(), f"/ws/runs/{run_id}/{query}")
    comm.scope["user"] = user
    comm.scope["url_route"] = {"kwargs": {"run_id": run_id}}
    return comm


@pytest.fixture
def run_row(db):  # noqa: ANN001, ANN201
    return Run.objects.create(kind="pretrain", name="watched", status="running", total_steps=10)


async def test_run_stream_refuses_who_may_not_see_runs(make_user, run_row):  # noqa: ANN001
    from django.contrib.auth.models import AnonymousUser

    annotator = await sync_to_async(make_user)("annie", "annotator")
    builder = await sync_to_async(make_user)("bob", "builder")
    connected, code = await run_socket(AnonymousUser(), run_row.pk).connect()
    assert not connected and code == CLOSE_UNAUTHENTICATED
    connected, code = await run_socket(annotator, run_row.pk).connect()
    assert not connected and code == CLOSE_FORBIDDEN
    connected, code = await run_socket(builder, 987654).connect()  # no such run
    assert not connected and code == CLOSE_FORBIDDEN


async def test_run_stream_replays_history_then_follows(make_user, run_row):  # noqa: ANN001
    builder = await sync_to_async(make_user)("bob", "builder")
    await sync_to_async(publish_run)(run_row.pk, "run.metrics", {"points": [{"step": 1, "values": {"loss": 5.0}}]})
    other = await sync_to_async(Run.objects.create)(kind="pretrain", name="other", status="running")
    await sync_to_async(publish_run)(other.pk, "run.metrics", {"points": [{"step": 1, "values": {"loss": 9.0}}]})
    comm = run_socket(builder, run_row.pk, "?after=0")
    assert (await comm.connect())[0]
    first = await comm.receive_json_from(timeout=5)
    assert first["kind"] == "run.metrics" and first["payload"]["points"][0]["values"]["loss"] == 5.0
    await sync_to_async(publish_run)(run_row.pk, "run.metrics", {"points": [{"step": 2, "values": {"loss": 4.0}}]})
    live = await comm.receive_json_from(timeout=5)
    assert live["payload"]["points"][0]["step"] == 2 and live["payload"]["run"] == run_row.pk
    assert await comm.receive_nothing(timeout=0.6)  # the other run's events are not relayed
    await comm.disconnect()


# ---- chat -----------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_checkpoint(db, settings, tmp_path):  # noqa: ANN001, ANN201
    """A real checkpoint of a tiny decoder with a real (small) tokenizer, registered as a Checkpoint."""
    from training.core.checkpoint import save_checkpoint
    from training.core.config import ModelConfig
    from training.core.corpora import load_texts
    from training.core.model import Transformer
    from training.core.tokenizer import train_tokenizer
    from training.actions import corpus_cache_dir

    settings.DATA_DIR = tmp_path
    tok = train_tokenizer(load_texts("austen", corpus_cache_dir("austen"), limit=5), 300)
    run_dir = tmp_path / "runs" / "chat"
    tok.save(run_dir / "tokenizer")
    cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, dim=64, n_heads=4, n_kv_heads=2, max_seq_len=256)
    model = Transformer(cfg)
    model.init_weights(seed=3)
    path = save_checkpoint(run_dir, 1, model, None, config={"model": cfg.to_dict()})
    run = Run.objects.create(kind="pretrain", name="chatty", status="succeeded")
    return Checkpoint.objects.create(run=run, step=1, path=str(path))


@pytest.fixture
def serving():  # noqa: ANN201
    from training.serving import ServingClient

    yield ServingClient.instance()
    ServingClient.instance().close()
    ServingClient._instance = None


async def chat_socket(user) -> WebsocketCommunicator:  # noqa: ANN001
    comm = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    assert connected
    return comm


async def collect(comm: WebsocketCommunicator, cid: str) -> tuple[list[dict], dict]:
    messages = []
    while True:
        msg = await comm.receive_json_from(timeout=120)
        assert msg["id"] == cid
        messages.append(msg)
        if msg["type"] in ("done", "error"):
            return messages, msg


async def test_chat_streams_what_the_core_generates(make_user, tiny_checkpoint, serving):  # noqa: ANN001
    from training.core.cli import load_model_and_tokenizer
    from training.core.serve import chat

    user = await sync_to_async(make_user)("pat")  # any signed-in user may chat
    comm = await chat_socket(user)
    messages = [{"role": "user", "content": "Who is Mr. Darcy?"}]
    sampling = {"max_new_tokens": 24, "temperature": 0, "top_p": 1.0, "repetition_penalty": 1.0}
    await comm.send_json_to({"type": "generate", "id": "1", "model": f"checkpoint:{tiny_checkpoint.pk}",
                             "messages": messages, "sampling": sampling})
    stream, done = await collect(comm, "1")
    assert done["type"] == "done", done
    assert stream[0]["type"] == "started" and stream[0]["model"] == f"checkpoint:{tiny_checkpoint.pk}"
    pieces = [m["text"] for m in stream if m["type"] == "token"]
    model, tok = load_model_and_tokenizer(tiny_checkpoint.path)
    expected = chat(model, tok, messages, max_new_tokens=24, temperature=0.0)
    assert "".join(pieces).strip() == done["text"] == expected
    assert done["stats"]["tokens"] >= len(pieces) and done["stats"]["ttft_s"] > 0
    # a second request reuses the loaded model
    await comm.send_json_to({"type": "generate", "id": "2", "model": f"checkpoint:{tiny_checkpoint.pk}",
                             "messages": messages, "sampling": sampling})
    _, again = await collect(comm, "2")
    assert again["text"] == expected and again["stats"]["load_s"] == 0
    await comm.disconnect()


async def test_chat_stop_and_bad_requests(make_user, tiny_checkpoint, serving):  # noqa: ANN001
    user = await sync_to_async(make_user)("pat")
    comm = await chat_socket(user)
    await comm.send_json_to({"type": "generate", "id": "x", "model": "model:999", "messages": [{"role": "user", "content": "hi"}]})
    err = await comm.receive_json_from(timeout=10)
    assert err["type"] == "error" and "model:999" in err["detail"]
    await comm.send_json_to({"type": "generate", "id": "y", "model": f"checkpoint:{tiny_checkpoint.pk}", "messages": []})
    assert (await comm.receive_json_from(timeout=10))["type"] == "error"
    await comm.send_json_to({"type": "generate", "id": "z", "model": f"checkpoint:{tiny_checkpoint.pk}",
                             "messages": [{"role": "user", "content": "hi"}], "sampling": {"temperature": 99}})
    assert "temperature" in (await comm.receive_json_from(timeout=10))["detail"]
    # stop: ask for many tokens, stop right away
    await comm.send_json_to({"type": "generate", "id": "s", "model": f"checkpoint:{tiny_checkpoint.pk}",
                             "messages": [{"role": "user", "content": "Tell me everything."}],
                             "sampling": {"max_new_tokens": 200, "temperature": 1.0, "seed": 1}})
    assert (await comm.receive_json_from(timeout=30))["type"] == "started"
    await comm.send_json_to({"type": "stop", "id": "s"})
    stream, done = await collect(comm, "s")
    assert done["type"] == "done" and (done["stopped"] or done["stats"]["tokens"] < 200)
    await comm.disconnect()


async def test_chat_refuses_anonymous():
    from django.contrib.auth.models import AnonymousUser

    comm = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    comm.scope["user"] = AnonymousUser()
    connected, code = await comm.connect()
    assert not connected and code == CLOSE_UNAUTHENTICATED


def test_feedback_report_and_vote(client_for, make_user, tiny_checkpoint):  # noqa: ANN001
    from training.actions import ensure_smollm2
    from training.models import ChatFeedback, PreferenceVote

    smol = ensure_smollm2()
    user = make_user("pat")
    c = client_for(user)
    messages = [{"role": "user", "content": "Describe nurses."}]
    ref = f"checkpoint:{tiny_checkpoint.pk}"
    resp = c.post("/api/chat/feedback/", {"model": ref, "messages": messages, "response_text": "Nice.", "rating": 1},
                  format="json")
    assert resp.status_code == 201 and resp.json()["rating"] == 1
    resp = c.post("/api/chat/feedback/", {"model": ref, "messages": messages, "response_text": "All nurses are women.",
                                          "rating": -1, "report_category": "bias", "bias_kind": "gender",
                                          "report_text": "gender stereotype"}, format="json")
    assert resp.status_code == 201
    fb = ChatFeedback.objects.get(pk=resp.json()["id"])
    assert fb.report_category == "bias" and fb.model_name == "chatty @ step 1"
    from django.db import connection

    if "labeling_report" in connection.introspection.table_names():  # the moderators' queue
        from labeling.models import Report

        report = Report.objects.get(pk=fb.labeling_report_id)
        assert report.source == "playground" and report.category == "bias" and report.bias_kind == "gender"
        assert report.response_text == "All nurses are women." and report.prompt_messages == messages
    bad = c.post("/api/chat/feedback/", {"model": "checkpoint:0", "messages": messages, "response_text": "x"}, format="json")
    assert bad.status_code == 400 and bad.json()["code"] == "model_missing"
    if smol is not None:
        vote = c.post("/api/chat/votes/", {"messages": messages, "model_a": ref, "model_b": smol.ref, "response_a": "a",
                                           "response_b": "b", "vote": "b"}, format="json")
        assert vote.status_code == 201
        assert PreferenceVote.objects.get().vote == "b"
    assert c.post("/api/chat/votes/", {"messages": messages, "model_a": ref, "model_b": ref, "response_a": "a",
                                       "response_b": "b", "vote": "maybe"}, format="json").status_code == 400


def test_export_a_checkpoint_as_a_hugging_face_folder(client_for, builder, tiny_checkpoint, huey_immediate):  # noqa: ANN001
    from pathlib import Path

    from training.actions import chat_models
    from training.models import ModelArtifact

    c = client_for(builder)
    assert c.post(f"/api/checkpoints/{tiny_checkpoint.pk}/export/", {"format": "onnx"}, format="json").status_code == 400
    resp = c.post(f"/api/checkpoints/{tiny_checkpoint.pk}/export/", {"format": "hf"}, format="json")
    assert resp.status_code == 202, resp.json()
    art = ModelArtifact.objects.get(pk=resp.json()["id"])
    assert art.status == "ready", art.info
    folder = Path(art.path)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert art.ref in [m["ref"] for m in chat_models()]  # the export can be chatted with
    assert client_for(None).post(f"/api/checkpoints/{tiny_checkpoint.pk}/export/", {}, format="json").status_code == 401


def test_serving_cache_keeps_models_within_the_memory_budget(tiny_checkpoint, tmp_path):  # noqa: ANN001
    import shutil
    from pathlib import Path

    from training.serving import ModelCache

    run_dir = Path(tiny_checkpoint.path).parent.parent
    other = tmp_path / "copy"
    shutil.copytree(run_dir, other)
    first = ModelCache(budget_bytes=2**40)
    model, _, load_s = first.get(tiny_checkpoint.path)
    assert load_s > 0 and first.get(tiny_checkpoint.path)[2] == 0.0  # second use: already loaded
    size = first.models[tiny_checkpoint.path][2]
    assert size == 2 * sum(p.numel() * p.element_size() for p in model.parameters())  # + the decoding copy
    cache = ModelCache(budget_bytes=int(size * 1.5))  # room for one model only
    cache.get(tiny_checkpoint.path)
    cache.get(str(other))
    assert list(cache.models) == [str(other)]  # the least recently used one was dropped
