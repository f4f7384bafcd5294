"""The transformer: parity with Hugging Face Llama, causality, encoder masking, gradients, meta init, KV cache."""

from __future__ import annotations

import pytest
import torch

from training.core.config import ModelConfig
from training.core.model import KVCache, Transformer, apply_rope, rope_tables

ATOL = 1e-4  # fp32 logits


def tiny(**overrides) -> ModelConfig:
    base = dict(vocab_size=211, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, rope_theta=1000.0,
                init_std=0.1)
    return ModelConfig(**{**base, **overrides})


def make(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    model.init_weights(seed=seed)
    with torch.no_grad():  # non-trivial norm weights so that a swapped norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
    return model.eval()


@pytest.mark.parametrize("n_kv_heads", [2, None], ids=["gqa", "mha"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_logits_match_transformers_llama(tmp_path, n_kv_heads, tie):
    transformers = pytest.importorskip("transformers")
    from training.core.interop.hf import export_hf

    model = make(tiny(n_kv_heads=n_kv_heads, tie_embeddings=tie))
    export_hf(model, None, tmp_path / "hf")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert ref.config.tie_word_embeddings == tie
    tokens = torch.randint(0, 211, (3, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(tokens), ref(tokens).logits
    assert ours.shape == theirs.shape == (3, 23, 211)
    assert (ours - theirs).abs().max().item() <= ATOL


def test_padded_batch_matches_transformers_with_positions(tmp_path):
    transformers = pytest.importorskip("transformers")
    from training.core.interop.hf import export_hf

    model = make(tiny())
    export_hf(model, None, tmp_path / "hf")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    tokens = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    with torch.no_grad():
        ours = model(tokens, attention_mask=mask)
        theirs = ref(tokens, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0)).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= ATOL


def test_left_padded_row_equals_unpadded_row():
    model = make(tiny())
    seq = torch.randint(0, 211, (1, 9), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.full((1, 5), 7), seq], dim=1)
    mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 9)], dim=1)
    with torch.no_grad():
        alone = model(seq)
        in_batch = model(padded, attention_mask=mask)
    assert (in_batch[:, 5:] - alone).abs().max().item() <= ATOL
    assert torch.isfinite(in_batch).all()


def test_rope_matches_rotate_half_formula():
    cos, sin = rope_tables(8, 10, 10000.0)
    x = torch.randn(2, 10, 3, 8)
    cos_full, sin_full = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]
    rotate_half = torch.cat([-x[..., 4:], x[..., :4]], -1)
    expected = x * cos_full + rotate_half * sin_full
    assert torch.allclose(apply_rope(x, cos[:, None], sin[:, None]), expected, atol=1e-6)
    # position 0 is the identity, and the rotation keeps norms
    assert torch.allclose(apply_rope(x, cos[:, None], sin[:, None])[:, 0], x[:, 0])
    assert torch.allclose(apply_rope(x, cos[:, None], sin[:, None]).norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_decoder_is_causal():
    model = make(tiny())
    tokens = torch.randint(0, 211, (2, 16), generator=torch.Generator().manual_seed(4))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 211
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :10], b[:, :10]) or (a[:, :10] - b[:, :10]).abs().max() <= 1e-6
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3  # the change is visible from position 10 on


def test_encoder_is_bidirectional_and_respects_padding():
    model = make(tiny(mode="encoder"))
    tokens = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(5))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 211
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3  # a later token changes the first output
    # right padding: what sits in padded positions must not change any real position's output
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[:, 8:] = 0
    with torch.no_grad():
        c = model(tokens, attention_mask=mask)
        d = model(changed, attention_mask=mask)
        alone = model(tokens[:, :8])
    assert (c[:, :8] - d[:, :8]).abs().max().item() <= 1e-6
    assert (c[:, :8] - alone).abs().max().item() <= ATOL
    assert torch.isfinite(c).all()


@pytest.mark.parametrize("mode", ["decoder", "encoder"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_every_parameter_gets_a_gradient(mode, tie):
    model = make(tiny(mode=mode, tie_embeddings=tie)).train()
    tokens = torch.randint(0, 211, (2, 10), generator=torch.Generator().manual_seed(6))
    logits = model(tokens)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", ["decoder", "encoder"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_parameter_count_matches_config(mode, tie):
    cfg = tiny(mode=mode, tie_embeddings=tie)
    assert Transformer(cfg).num_params() == cfg.n_params()


def test_meta_device_init_equals_eager_init():
    cfg = tiny(tie_embeddings=True)
    eager = Transformer(cfg)
    eager.init_weights(seed=11)
    with torch.device("meta"):
        lazy = Transformer(cfg)
    assert all(p.is_meta for p in lazy.parameters())
    lazy = lazy.to_empty(device="cpu")
    lazy.init_weights(seed=11)
    assert lazy.output.weight is lazy.tok_embeddings.weight
    for (n1, a), (n2, b) in zip(eager.state_dict().items(), lazy.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b), n1
    assert torch.equal(eager.rope_cos, lazy.rope_cos) and torch.equal(eager.rope_sin, lazy.rope_sin)
    assert "rope_cos" not in eager.state_dict()  # rebuilt, never checkpointed
    tokens = torch.randint(0, 211, (1, 7))
    with torch.no_grad():
        assert torch.equal(eager(tokens), lazy(tokens))


def test_init_is_deterministic_and_scales_residual_projections():
    cfg = tiny(n_layers=8, init_std=0.02)
    a, b = Transformer(cfg), Transformer(cfg)
    a.init_weights(seed=3)
    b.init_weights(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    wq_std = a.layers[0].attention.wq.weight.std().item()
    wo_std = a.layers[0].attention.wo.weight.std().item()
    assert abs(wq_std - 0.02) < 0.003
    assert abs(wo_std - 0.02 / 4.0) < 0.001  # 1 / sqrt(2 * 8 layers)


def test_kv_cache_prefill_and_chunks_equal_full_forward():
    cfg = tiny()
    model = make(cfg)
    tokens = torch.randint(0, 211, (2, 20), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(cfg, 2, 32)
        parts = [model(tokens[:, :8], kv_cache=cache, start_pos=0),  # prefill
                 model(tokens[:, 8:13], kv_cache=cache, start_pos=8),  # a chunk with an offset (explicit mask)
                 *[model(tokens[:, i:i + 1], kv_cache=cache, start_pos=i) for i in range(13, 20)]]  # decode
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= ATOL


def test_kv_cache_with_left_padding_equals_each_row_alone():
    cfg = tiny()
    model = make(cfg)
    rows = [torch.randint(0, 211, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 9)]
    continuation = torch.randint(0, 211, (2, 4), generator=torch.Generator().manual_seed(8))
    tokens = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, 9 - len(r):] = r
        mask[i, 9 - len(r):] = True
    with torch.no_grad():
        cache = KVCache(cfg, 2, 16)
        model(tokens, attention_mask=mask, kv_cache=cache, start_pos=0)
        steps = [model(continuation[:, j:j + 1], kv_cache=cache, start_pos=9 + j) for j in range(4)]
        got = torch.cat(steps, dim=1)  # (2, 4, V)
        for i, r in enumerate(rows):
            alone = model(torch.cat([r, continuation[i]])[None])[0, -4:]
            assert (got[i] - alone).abs().max().item() <= ATOL


def test_sequence_longer_than_max_seq_len_is_a_clear_error():
    model = make(tiny(max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_return_hidden_gives_normed_states():
    model = make(tiny())
    tokens = torch.randint(0, 211, (1, 5))
    with torch.no_grad():
        h = model(tokens, return_hidden=True)
        assert h.shape == (1, 5, 64)
        assert torch.allclose(model.output(h), model(tokens), atol=1e-6)


# ---- the fused training loss ---------------------------------------------------------------

def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Oracle: plain fp32 cross-entropy over the non-ignored targets."""
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


@pytest.mark.parametrize("chunk", [3, 64, None])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_cross_entropy_equals_logits_then_cross_entropy(chunk, bias):
    from training.core.model import linear_cross_entropy

    g = torch.Generator().manual_seed(9)
    h = torch.randn(2, 13, 16, generator=g, requires_grad=True)
    w = (torch.randn(37, 16, generator=g) * 0.3).requires_grad_()
    b = torch.randn(37, generator=g, requires_grad=True) if bias else None
    t = torch.randint(0, 37, (2, 13), generator=g)
    t[0, :4] = -100
    ref = _lm_loss(torch.nn.functional.linear(h, w, b), t)
    ref_grads = torch.autograd.grad(ref * 2.5, [x for x in (h, w, b) if x is not None])
    got = linear_cross_entropy(h, w, t, b, chunk_size=chunk)
    grads = torch.autograd.grad(got * 2.5, [x for x in (h, w, b) if x is not None])
    assert abs(got.item() - ref.item()) <= 1e-5
    for a, r in zip(grads, ref_grads):
        assert (a - r).abs().max().item() <= 1e-5
    assert grads[0][0, :4].abs().max() == 0  # ignored positions get no gradient
    # every target ignored: 0, not NaN
    assert linear_cross_entropy(h, w, torch.full_like(t, -100)).item() == 0.0


@pytest.mark.parametrize("mode", ["decoder", "encoder"])
def test_targets_path_equals_logits_path_with_the_same_gradients(mode):
    cfg = tiny(mode=mode, tie_embeddings=mode == "encoder")
    a, b = make(cfg), make(cfg)
    b.load_state_dict(a.state_dict())
    tokens = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(10))
    targets = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(11))
    if mode == "encoder":  # masked LM: only a few positions are scored
        targets[:, ::3] = -100
        targets[:, 1::3] = -100
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    ref = _lm_loss(a(tokens, attention_mask=mask), targets)
    ref.backward()
    got = b(tokens, attention_mask=mask, targets=targets)
    got.backward()
    assert abs(got.item() - ref.item()) <= 1e-5
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert (pa.grad - pb.grad).abs().max().item() <= 1e-5, name
    with torch.no_grad():  # evaluation: same value, no gradient buffers
        assert abs(b(tokens, attention_mask=mask, targets=targets).item() - ref.item()) <= 1e-5


def test_fused_loss_under_bf16_autocast_is_close_to_fp32():
    model = make(tiny())
    tokens = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(12))
    targets = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(13))
    ref = model(tokens, targets=targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(tokens, targets=targets)
    got.backward()
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) <= 0.05 * ref.item()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_rmsnorm_training_backward_equals_autograd_of_the_formula():
    """The hand-written RMSNorm backward (training path) against autograd through Llama's formula."""
    from training.core.model import RMSNorm

    g = torch.Generator().manual_seed(3)
    norm = RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=g) * 0.3 + 1.0)
    x = (torch.randn(4, 7, 48, generator=g) * 2.0).requires_grad_()
    upstream = torch.randn(4, 7, 48, generator=g)
    norm(x).backward(upstream)
    got_x, got_w = x.grad.clone(), norm.weight.grad.clone()
    x.grad, w = None, norm.weight.detach().clone().requires_grad_()
    ref = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    ref.backward(upstream)
    assert torch.allclose(norm(x), ref, atol=1e-6, rtol=0)
    assert torch.allclose(got_x, x.grad, atol=1e-5, rtol=0)
    assert torch.allclose(got_w, w.grad, atol=1e-4, rtol=0)


@pytest.mark.parametrize("padded", [False, True], ids=["causal", "left-padded"])
def test_training_gradients_match_transformers_llama(tmp_path, monkeypatch, padded):
    """The training path (fused q/k/v + rotary, blocked causal attention, SwiGLU and RMSNorm
    backwards, fused loss) gives the gradients of transformers' LlamaForCausalLM on the same
    weights and batch."""
    transformers = pytest.importorskip("transformers")
    import training.core.model as model_module
    from training.core.interop.hf import export_hf

    monkeypatch.setattr(model_module, "BLOCK_ATTENTION_MIN_WORK", 0)  # the blocked attention at this size too
    monkeypatch.setattr(model_module, "ATTENTION_BLOCK", 8)  # several blocks, a partial last one

    model = make(tiny(tie_embeddings=False))
    export_hf(model, None, tmp_path / "hf")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    g = torch.Generator().manual_seed(5)
    tokens, targets = torch.randint(0, 211, (3, 19), generator=g), torch.randint(0, 211, (3, 19), generator=g)
    mask = torch.ones(3, 19, dtype=torch.long)
    if padded:
        mask[1, :4] = 0
        targets[1, :4] = -100
    model.train()
    loss = model(tokens, attention_mask=mask if padded else None, targets=targets)
    loss.backward()
    position_ids = (mask.cumsum(1) - 1).clamp_min(0)
    theirs = ref(input_ids=tokens, attention_mask=mask, position_ids=position_ids, labels=targets,
                 shift_labels=targets).loss
    theirs.backward()
    assert abs(loss.item() - theirs.item()) <= 1e-5
    names = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    hf_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        hf_name = names.get(name) or ("model." + name.replace("attention.w", "self_attn.")
                                      .replace("self_attn.q", "self_attn.q_proj").replace("self_attn.k", "self_attn.k_proj")
                                      .replace("self_attn.v", "self_attn.v_proj").replace("self_attn.o", "self_attn.o_proj")
                                      .replace("feed_forward.w1", "mlp.gate_proj").replace("feed_forward.w3", "mlp.up_proj")
                                      .replace("feed_forward.w2", "mlp.down_proj")
                                      .replace("attention_norm", "input_layernorm")
                                      .replace("ffn_norm", "post_attention_layernorm"))
        other = hf_params[hf_name].grad
        assert other is not None and (p.grad - other).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize("group", [1, 3], ids=["mha", "gqa"])
@pytest.mark.parametrize("T,block", [(1, 4), (37, 8), (64, 16), (20, 32)])
def test_block_causal_attention_equals_sdpa(group, T, block):
    """The CPU training attention (query blocks, stored probabilities, hand-written backward) gives
    the outputs and gradients of causal ``scaled_dot_product_attention`` with grouped heads."""
    import torch.nn.functional as F

    from training.core.model import _BlockCausalAttention

    B, Hk, D = 2, 2, 16
    H = Hk * group
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(B, h, T, D, generator=g).requires_grad_() for h in (H, Hk, Hk))
    upstream = torch.randn(B, H, T, D, generator=g)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=group > 1)
    ref_grads = torch.autograd.grad(ref, (q, k, v), upstream)

    def grouped(t: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) -> (B*Hk, T*G, D), rows (position, head)
        return t.reshape(B, Hk, group, T, D).transpose(2, 3).reshape(B * Hk, T * group, D)

    qg = grouped(q.detach()).requires_grad_()
    kg, vg = (t.detach().reshape(B * Hk, T, D).requires_grad_() for t in (k, v))
    out = _BlockCausalAttention.apply(qg, kg, vg, B, group, block)  # (B, T, H*D), heads in order
    grads = torch.autograd.grad(out, (qg, kg, vg), upstream.transpose(1, 2).reshape(B, T, H * D))
    assert (out - ref.detach().transpose(1, 2).reshape(B, T, H * D)).abs().max().item() <= 1e-5
    assert (grads[0] - grouped(ref_grads[0])).abs().max().item() <= 1e-5
    assert (grads[1] - ref_grads[1].reshape(B * Hk, T, D)).abs().max().item() <= 1e-5
    assert (grads[2] - ref_grads[2].reshape(B * Hk, T, D)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("n_kv_heads", [2, None], ids=["gqa", "mha"])
def test_block_attention_training_step_equals_flash_path(monkeypatch, n_kv_heads):
    """Loss and every gradient are the same through the blocked CPU attention (several blocks, a
    partial last one) and through ``scaled_dot_product_attention``; evaluation never takes it."""
    import training.core.model as model_module

    model = make(tiny(n_kv_heads=n_kv_heads)).train()
    g = torch.Generator().manual_seed(8)
    tokens, targets = torch.randint(0, 211, (2, 45), generator=g), torch.randint(0, 211, (2, 45), generator=g)
    monkeypatch.setattr(model_module, "ATTENTION_BLOCK", 8)
    monkeypatch.setattr(model_module, "BLOCK_ATTENTION_MIN_WORK", 0)  # a tiny batch takes it too
    calls = []
    original = model_module._BlockCausalAttention.apply
    monkeypatch.setattr(model_module._BlockCausalAttention, "apply", lambda *a: calls.append(1) or original(*a))
    loss = model(tokens, targets=targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert len(calls) == model.cfg.n_layers
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(model_module, "BLOCK_ATTENTION_MAX_SEQ", 0)  # every length: the flash kernel
    ref = model(tokens, targets=targets)
    ref.backward()
    assert len(calls) == model.cfg.n_layers
    assert abs(loss.item() - ref.item()) <= 1e-6
    for name, p in model.named_parameters():
        assert (p.grad - grads[name]).abs().max().item() <= 1e-6, name
    monkeypatch.setattr(model_module, "BLOCK_ATTENTION_MAX_SEQ", 1024)
    with torch.no_grad():
        model(tokens, targets=targets)
    assert len(calls) == model.cfg.n_layers
