"""GGUF export -> GGUFReader -> import round trip, and the q/k permutation against transformers' loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.core.config import ModelConfig
from training.core.interop import InteropError
from training.core.interop.gguf import add_llama_hparams, export_gguf, import_gguf, permute_qk, read_gguf, unpermute_qk
from training.core.model import Transformer

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def tokenizer(austen_sample):
    from training.core.tokenizer import train_tokenizer

    return train_tokenizer(austen_sample, vocab_size=600)


def make(vocab: int, tie: bool, seed: int = 0) -> Transformer:
    cfg = ModelConfig(vocab_size=vocab, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                      rope_theta=5000.0, tie_embeddings=tie, init_std=0.1)
    model = Transformer(cfg)
    model.init_weights(seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
    return model.eval()


def assert_read_gguf_equals_gguf_reader(path) -> None:
    """Our fast reader against the gguf package's own: same metadata values, same tensors."""
    ours, ref = read_gguf(path), gguf.GGUFReader(str(path))
    assert set(ours.fields) == {k for k in ref.fields if not k.startswith("GGUF.")}
    for key, value in ours.fields.items():
        assert value == ref.fields[key].contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == b.shape.tolist(), a.name
        assert a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data), a.name


def test_permutation_is_llama_cpp_interleaving():
    # one head of size 4: rotate-half rows (x0, x1 | x2, x3) pair (x0, x2) and (x1, x3);
    # llama.cpp stores the pairs next to each other: rows 0, 2, 1, 3
    w = torch.arange(4.0)[:, None].repeat(1, 3)
    assert permute_qk(w, 1)[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]
    w = torch.randn(6 * 8, 5)
    assert torch.equal(unpermute_qk(permute_qk(w, 6), 6), w)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_f32_round_trip_reads_back_equal_tensors_and_logits(tmp_path, tokenizer, tie):
    model = make(tokenizer.vocab_size, tie)
    path = export_gguf(model, tokenizer, tmp_path / "model.gguf")
    assert_read_gguf_equals_gguf_reader(path)
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    tensors = {t.name: t for t in reader.tensors}
    assert ("output.weight" in tensors) == (not tie)
    assert len(tensors) == 2 * 9 + 2 + (0 if tie else 1)
    state = model.state_dict()
    emb = tensors["token_embd.weight"]
    assert emb.tensor_type == gguf.GGMLQuantizationType.F32 and list(emb.shape) == [64, tokenizer.vocab_size]
    assert np.array_equal(np.asarray(emb.data), state["tok_embeddings.weight"].numpy())
    q = torch.from_numpy(np.array(tensors["blk.1.attn_q.weight"].data))
    assert torch.equal(unpermute_qk(q, 4), state["layers.1.attention.wq.weight"])
    k = torch.from_numpy(np.array(tensors["blk.0.attn_k.weight"].data))
    assert torch.equal(unpermute_qk(k, 2), state["layers.0.attention.wk.weight"])

    again, tok2 = import_gguf(path)
    shape = lambda c: (c.vocab_size, c.dim, c.n_layers, c.n_heads, c.kv_heads, c.hidden_dim, c.max_seq_len,  # noqa
                       c.rope_theta, c.norm_eps, c.tie_embeddings)
    assert shape(again.cfg) == shape(model.cfg)
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    ids = torch.tensor([tokenizer.encode("Elizabeth walked to Netherfield in the rain.")])
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))
    # the tokenizer survives: same ids, same special tokens, same chat template
    text = "“Mr. Bennet,” said she, “have you heard that Netherfield Park is let at last?” 1811"
    assert tok2.encode(text) == tokenizer.encode(text)
    assert tok2.decode(tok2.encode(text)) == text
    assert (tok2.bos_id, tok2.eos_id, tok2.pad_id) == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    assert tok2.stop_ids == tokenizer.stop_ids
    messages = [{"role": "user", "content": "Hello"}]
    assert tok2.apply_chat_template(messages) == tokenizer.apply_chat_template(messages)
    assert tok2.encode(tokenizer.apply_chat_template(messages)) == tokenizer.encode_chat(messages)


def test_f16_export_rounds_weights_once(tmp_path, tokenizer):
    model = make(tokenizer.vocab_size, True, seed=1)
    path = export_gguf(model, tokenizer, tmp_path / "model-f16.gguf", dtype=torch.float16)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_v.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay fp32
    again, _ = import_gguf(path)
    w = model.layers[0].feed_forward.w2.weight
    assert torch.equal(again.layers[0].feed_forward.w2.weight, w.half().float())
    ids = torch.tensor([tokenizer.encode("Mr. Darcy")])
    with torch.no_grad():
        assert (again(ids) - model(ids)).abs().max().item() <= 5e-3


def test_q8_0_tensors_are_dequantized(tmp_path, tokenizer):
    """Re-write our export with Q8_0 projections; import must equal gguf's own dequantization."""
    model = make(tokenizer.vocab_size, True, seed=2)
    src = gguf.GGUFReader(str(export_gguf(model, tokenizer, tmp_path / "f32.gguf")))
    writer = gguf.GGUFWriter(str(tmp_path / "q8.gguf"), arch="llama")
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    expected = {}
    for t in src.tensors:
        data = np.array(t.data)
        if data.ndim == 2:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(t.name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            expected[t.name] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_read_gguf_equals_gguf_reader(tmp_path / "q8.gguf")
    again, _ = import_gguf(tmp_path / "q8.gguf")
    assert torch.equal(again.layers[1].feed_forward.w1.weight, torch.from_numpy(expected["blk.1.ffn_gate.weight"]))
    wq = unpermute_qk(torch.from_numpy(expected["blk.0.attn_q.weight"]), 4)
    assert torch.equal(again.layers[0].attention.wq.weight, wq)
    for name, w in model.named_parameters():  # 8-bit blocks: error below 1% of the largest weight
        assert (again.get_parameter(name) - w).abs().max() <= w.abs().max() / 100, name


def test_transformers_reads_our_gguf_with_the_same_logits(tmp_path, tokenizer):
    """An independent check of the q/k permutation: transformers undoes it with its own code."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = make(tokenizer.vocab_size, False, seed=3)
    export_gguf(model, tokenizer, tmp_path / "ours.gguf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="ours.gguf",
                                                            dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode("Emma Woodhouse, handsome, clever, and rich")])
    with torch.no_grad():
        assert (model(ids) - ref(ids).logits).abs().max().item() <= 1e-4


def test_unsupported_files_are_clear_errors(tmp_path):
    with pytest.raises(InteropError, match="no GGUF file"):
        import_gguf(tmp_path / "missing.gguf")
    (tmp_path / "text.gguf").write_text("not a model at all")
    with pytest.raises(InteropError, match="not a GGUF file"):
        import_gguf(tmp_path / "text.gguf")
    with pytest.raises(InteropError, match="decoder"):
        export_gguf(Transformer(ModelConfig.preset("tiny", mode="encoder")), None, tmp_path / "enc.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "other.gguf"), arch="gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InteropError, match="architecture"):
        import_gguf(tmp_path / "other.gguf")


def _sentencepiece_gguf(path, texts, model: Transformer | None = None, tmp=None):
    """A real SentencePiece BPE model (Llama's settings: identity normalization, digits split, byte
    fallback) trained on ``texts``, written as llama.cpp's converter writes it: pieces, scores and
    token types under ``tokenizer.ggml.model = "llama"``, no merges. With ``model``, its weights too."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line for t in texts for line in t.splitlines() if line.strip()), model_writer=buf,
        model_type="bpe", vocab_size=700, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()
    pieces, scores = [sp.id_to_piece(i) for i in range(n)], [sp.get_score(i) for i in range(n)]
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else 6 if sp.is_byte(i)
             else 1 for i in range(n)]
    writer = gguf.GGUFWriter(str(path), arch="llama")
    tensors = []
    if model is not None:
        src = read_gguf(export_gguf(model, None, tmp / "weights.gguf"))
        tensors = [(t.name, np.array(t.data)) for t in src.tensors]
        add_llama_hparams(writer, model.cfg)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(True)
    for name, data in tensors:
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sp


def test_sentencepiece_gguf_tokenizer_matches_sentencepiece_and_transformers(tmp_path, austen_sample):
    """A SentencePiece ('llama') GGUF tokenizer encodes real text as sentencepiece itself does and as
    transformers' GGUF loader does, and decodes back to the text (bytes outside the vocabulary go
    through <0xXX> pieces)."""
    import transformers

    from training.core.interop.gguf import tokenizer_from_gguf

    model = make(700, tie=True)
    sp = _sentencepiece_gguf(tmp_path / "sp.gguf", austen_sample[:12], model, tmp_path)
    imported, tok = import_gguf(tmp_path / "sp.gguf")
    assert tok is not None and tok.vocab_size == 700
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    for name, p in model.state_dict().items():
        assert torch.equal(imported.state_dict()[name], p), name
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    held_out = austen_sample[20][:3000]
    samples = [held_out, "  Two  spaces, a tab\tand a newline\n", "Café déjà vu — 1815 ✓ 🎉", "\n\nEmma."]
    for text in samples:
        ids = tok.encode(text)
        assert ids == sp.encode(text), text
        if not text.startswith(" "):  # transformers' Metaspace adds no ▁ before a leading space (loses it)
            assert ids == ref.encode(text, add_special_tokens=False), text
        assert tok.decode(ids) == sp.decode(ids) == text
    assert tok.encode("Emma", add_bos=True) == [1] + sp.encode("Emma")
    assert tok.encode("<s>Emma</s>") == [1] + sp.encode("Emma") + [2]  # control tokens written in the text
    assert tokenizer_from_gguf(read_gguf(tmp_path / "sp.gguf")).encode(held_out) == sp.encode(held_out)
    with pytest.raises(InteropError, match="SentencePiece"):
        export_gguf(imported, tok, tmp_path / "again.gguf")
