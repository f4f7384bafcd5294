"""Hugging Face folders: import weights saved by transformers, export folders transformers loads."""

from __future__ import annotations

import json

import pytest
import torch

from training.core.config import ModelConfig
from training.core.interop import InteropError
from training.core.interop.hf import export_hf, import_hf
from training.core.model import Transformer

transformers = pytest.importorskip("transformers")

ATOL = 1e-4


def random_llama(tie: bool, n_kv_heads: int) -> "transformers.LlamaForCausalLM":
    config = transformers.LlamaConfig(
        vocab_size=173, hidden_size=48, intermediate_size=112, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=n_kv_heads, max_position_embeddings=96, rope_theta=20000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norms so that a mis-mapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
    return model


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("n_kv_heads", [2, 6], ids=["gqa", "mha"])
def test_import_of_a_transformers_checkpoint_gives_the_same_logits(tmp_path, tie, n_kv_heads):
    ref = random_llama(tie, n_kv_heads)
    ref.save_pretrained(tmp_path / "ref")
    model, tokenizer = import_hf(tmp_path / "ref")
    assert tokenizer is None  # no tokenizer.json in that folder
    cfg = model.cfg
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.hidden_dim) == (48, 3, 6, n_kv_heads, 112)
    assert cfg.rope_theta == 20000.0 and cfg.norm_eps == 1e-6 and cfg.tie_embeddings == tie
    assert (model.output.weight is model.tok_embeddings.weight) == tie
    tokens = torch.randint(0, 173, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(tokens) - ref(tokens).logits).abs().max().item() <= ATOL


def test_export_folder_loads_in_transformers_with_tokenizer_and_chat_template(tmp_path, austen_sample):
    from training.core.tokenizer import train_tokenizer

    tok = train_tokenizer(austen_sample, vocab_size=500)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=64, tie_embeddings=True))
    model.init_weights(seed=0)
    folder = export_hf(model, tok, tmp_path / "export")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = "It is a truth universally acknowledged."
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    messages = [{"role": "user", "content": "Hello"}]
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        tok.apply_chat_template(messages)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.generation_config.eos_token_id in (tok.eos_id, [tok.eos_id, *[i for i in tok.stop_ids
                                                                           if i != tok.eos_id]])
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= ATOL
    # and back: import gives the same model and tokenizer
    again, tok2 = import_hf(folder)
    assert tok2 is not None and tok2.encode(text) == tok.encode(text) and tok2.chat_template == tok.chat_template
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def test_export_is_atomic_and_replaces_an_old_folder(tmp_path):
    model = Transformer(ModelConfig.preset("tiny", vocab_size=128, max_seq_len=32))
    target = tmp_path / "out"
    export_hf(model, None, target)
    (target / "stale.txt").write_text("old")
    export_hf(model, None, target)
    assert not (target / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left

    class Broken:  # a tokenizer whose save fails half way: the old export must survive
        bos_id, eos_id, pad_id, stop_ids = 0, 1, 0, [1]

        def save(self, folder):
            raise OSError("disk full")

    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(OSError):
        export_hf(model, Broken(), target)  # type: ignore[arg-type]
    assert (target / "model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unsupported_models_are_clear_errors(tmp_path):
    with pytest.raises(InteropError, match="decoder"):
        export_hf(Transformer(ModelConfig.preset("tiny", mode="encoder")), None, tmp_path / "enc")
    ref = random_llama(True, 2)
    ref.save_pretrained(tmp_path / "biased")
    config = json.loads((tmp_path / "biased" / "config.json").read_text())
    config["attention_bias"] = True
    (tmp_path / "biased" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InteropError, match="attention_bias"):
        import_hf(tmp_path / "biased")
    with pytest.raises(InteropError, match="config.json"):
        import_hf(tmp_path / "nothing-here")


def test_sharded_checkpoint_and_bf16_export(tmp_path):
    ref = random_llama(False, 2)
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model, _ = import_hf(tmp_path / "sharded")
    tokens = torch.randint(0, 173, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(tokens) - ref(tokens).logits).abs().max().item() <= ATOL
    export_hf(model, None, tmp_path / "bf16", dtype=torch.bfloat16)
    half, _ = import_hf(tmp_path / "bf16", dtype=torch.bfloat16)
    assert half.layers[0].attention.wq.weight.dtype == torch.bfloat16
    assert torch.equal(half.layers[0].attention.wq.weight, model.layers[0].attention.wq.weight.bfloat16())
