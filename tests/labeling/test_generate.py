"""Candidate generation from a studio model through the ML core (a tiny exported model)."""

from __future__ import annotations

import json

import pytest

from labeling import actions
from labeling.models import Item, Response
from labeling.tasks import generate_candidates

pytestmark = pytest.mark.django_db

TEXTS = ["It is a truth universally acknowledged, that a single man in possession of a good fortune, "
         "must be in want of a wife."] * 20 + ["The weather is fine today and the garden is green."] * 20


@pytest.fixture
def tiny_model_dir(tmp_path):  # noqa: ANN001, ANN201
    import torch

    from training.core.checkpoint import export_model
    from training.core.config import ModelConfig
    from training.core.model import Transformer
    from training.core.tokenizer import train_tokenizer

    tok = train_tokenizer(TEXTS, vocab_size=320)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=128)
    folder = tmp_path / "tiny"
    export_model(Transformer(cfg), folder)
    tok.save(folder)
    return folder


def test_generate_candidates_makes_pairs(builder, tiny_model_dir):  # noqa: ANN001
    project = actions.create_project(builder, name="gen")
    actions.import_jsonl(project, builder, "\n".join(json.dumps({"prompt": f"Tell me about day {i}."}) for i in range(2)))
    assert Item.objects.filter(project=project).count() == 0  # prompts only
    models = [{"path": str(tiny_model_dir), "name": "tiny-a"}, {"path": str(tiny_model_dir), "name": "tiny-b"}]
    result = generate_candidates(project.pk, models, k=1, max_new_tokens=8, temperature=1.0, top_p=None, seed=3)
    assert result["responses"] == 4
    responses = Response.objects.filter(prompt__project=project)
    assert {r.source_kind for r in responses} == {"checkpoint"}
    assert {r.model_name for r in responses} == {"tiny-a", "tiny-b"}
    assert all(r.metadata["path"] == str(tiny_model_dir) for r in responses)
    # the same seed reproduces the same text
    again = generate_candidates(project.pk, models[:1], k=1, max_new_tokens=8, temperature=1.0, top_p=None, seed=3,
                                prompt_ids=[responses[0].prompt_id])
    assert again["responses"] == 1
    texts = list(Response.objects.filter(prompt_id=responses[0].prompt_id, model_name="tiny-a")
                 .values_list("text", flat=True))
    assert texts[0] == texts[1]
    assert Item.objects.filter(project=project).count() == result["items"] + again["items"]
    for item in Item.objects.filter(project=project):
        shown = item.shown_responses()
        assert len(shown) == 2 and shown[0].text != shown[1].text


def test_generate_endpoint_validates_and_queues(client_for, builder, annotator, tiny_model_dir, settings):  # noqa: ANN001
    project = actions.create_project(builder, name="gen-api")
    c = client_for(builder)
    resp = c.post(f"/api/labeling/projects/{project.pk}/generate/", {"models": [{"path": "/no/such", "name": "x"}]},
                  format="json")
    assert resp.status_code == 400 and "does not exist" in resp.json()["detail"]
    assert client_for(annotator).post(f"/api/labeling/projects/{project.pk}/generate/", {}, format="json").status_code == 403
    resp = c.post(f"/api/labeling/projects/{project.pk}/generate/",
                  {"models": [{"path": str(tiny_model_dir), "name": "tiny"}], "k": 1, "max_new_tokens": 4},
                  format="json")
    assert resp.status_code == 202 and resp.json()["queued"] is True
