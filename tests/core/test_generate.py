"""Generation: KV cache against a no-cache reference, sampling options, streaming, chat."""

from __future__ import annotations

import pytest
import torch

from training.core.config import ModelConfig
from training.core.model import Transformer
from training.core.serve import (
    GenerationError, apply_repetition_penalty, chat, generate, sample_next, top_k_filter, top_p_filter,
)

V = 97


def make(seed: int = 0, **overrides) -> Transformer:
    # a large init_std gives peaked distributions, so greedy choices are far from ties
    cfg = ModelConfig(**{**dict(vocab_size=V, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                                init_std=0.3), **overrides})
    model = Transformer(cfg)
    model.init_weights(seed=seed)
    return model.eval()


@torch.no_grad()
def reference_greedy(model: Transformer, prompt: list[int], n: int, stop_ids=(), penalty: float = 1.0) -> list[int]:
    """Slow oracle: full forward over the whole sequence for every new token, no cache."""
    seq, out = list(prompt), []
    for _ in range(n):
        logits = model(torch.tensor([seq]))[0, -1]
        if penalty != 1.0:
            seen = torch.zeros(V, dtype=torch.bool)
            seen[torch.tensor(seq)] = True
            logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
        nxt = int(logits.argmax())
        if nxt in stop_ids:
            break
        seq.append(nxt)
        out.append(nxt)
    return out


PROMPTS = [[5, 17, 33, 2, 8, 40, 41], [9], [60, 61, 62, 3]]


def test_kv_cache_greedy_equals_no_cache_greedy_single_prompt():
    model = make()
    assert generate(model, [PROMPTS[0]], max_new_tokens=20) == [reference_greedy(model, PROMPTS[0], 20)]


def test_batch_of_different_lengths_equals_each_prompt_alone():
    model = make(1)
    batch = generate(model, PROMPTS, max_new_tokens=15)
    for prompt, out in zip(PROMPTS, batch):
        assert out == reference_greedy(model, prompt, 15)
        assert out == generate(model, [prompt], max_new_tokens=15)[0]


def test_top_k_1_sampling_equals_greedy():
    model = make(2)
    greedy = generate(model, PROMPTS, max_new_tokens=12)
    assert generate(model, PROMPTS, max_new_tokens=12, temperature=1.3, top_k=1, seed=5) == greedy


def test_stop_tokens_stop_each_row():
    model = make(3)
    free = generate(model, PROMPTS, max_new_tokens=12)
    stop = free[0][4]  # the fifth token of row 0 becomes a stop token
    stopped = generate(model, PROMPTS, max_new_tokens=12, stop_ids=[stop])
    for prompt, out, full in zip(PROMPTS, stopped, free):
        expected = full[:full.index(stop)] if stop in full else full
        assert out == expected == reference_greedy(model, prompt, 12, stop_ids=[stop])
    assert len(stopped[0]) <= 4


def test_repetition_penalty_is_the_ctrl_rule():
    logits = torch.tensor([[3.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert torch.equal(out, torch.tensor([[1.5, -4.0, 1.0, 0.5]]))
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_repetition_penalty_in_generation_matches_reference():
    model = make(4)
    out = generate(model, [PROMPTS[2]], max_new_tokens=15, repetition_penalty=1.8)[0]
    assert out == reference_greedy(model, PROMPTS[2], 15, penalty=1.8)
    assert out != generate(model, [PROMPTS[2]], max_new_tokens=15)[0]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.75))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(top_p_filter(probs.log(), 0.8))  # 0.5 + 0.3 reaches 0.8 exactly
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(top_p_filter(probs.log(), 0.1))  # always at least one token
    assert kept.tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_k_filter(probs.log(), 3)).sum() == 3


def test_sampling_follows_the_filtered_distribution():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits, temperature=1.0, top_p=0.75, generator=g)
    freq = torch.bincount(draws, minlength=4).float() / 4000
    assert freq[2] == 0 and freq[3] == 0
    assert abs(freq[0].item() - 0.5 / 0.8) < 0.03  # renormalised over the nucleus


def test_seeded_sampling_is_reproducible():
    model = make(5)
    a = generate(model, PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    b = generate(model, PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    c = generate(model, PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=124)
    assert a == b
    assert a != c


def test_streaming_callback_sees_every_token_in_order():
    model = make(6)
    seen: list[tuple[int, int]] = []
    out = generate(model, PROMPTS, max_new_tokens=9, on_token=lambda row, tok: seen.append((row, tok)))
    for row in range(len(PROMPTS)):
        assert [t for r, t in seen if r == row] == out[row]
    assert len(seen) == sum(len(o) for o in out)


def test_greedy_equals_transformers_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    from training.core.interop.hf import export_hf

    model = make(7)
    export_hf(model, None, tmp_path / "hf")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    prompt = PROMPTS[0]
    with torch.no_grad():
        theirs = ref.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                              pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    assert generate(model, [prompt], max_new_tokens=16) == [theirs]


def test_bad_requests_are_clear_errors():
    model = make()
    with pytest.raises(GenerationError, match="max_seq_len"):
        generate(model, [[1] * 120], max_new_tokens=20)
    with pytest.raises(GenerationError, match="at least one token"):
        generate(model, [[]], max_new_tokens=2)
    with pytest.raises(GenerationError, match="decoder"):
        generate(make(mode="encoder"), [[1]], max_new_tokens=2)


def test_chat_uses_the_chat_template_and_stops_at_end_of_turn(austen_sample):
    from training.core.tokenizer import train_tokenizer

    tok = train_tokenizer(austen_sample, vocab_size=400)
    model = make(8, vocab_size=tok.vocab_size)
    messages = [{"role": "user", "content": "Who is Mr. Darcy?"}]
    prompt_ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True))
    expected = reference_greedy(model, prompt_ids, 12, stop_ids=tok.stop_ids)
    pieces: list[str] = []
    reply = chat(model, tok, messages, max_new_tokens=12, on_text=pieces.append)
    assert reply == tok.decode(expected, skip_special_tokens=True).strip()
    assert "".join(pieces).strip() == reply


@pytest.mark.parametrize("batch", [1, 3, 6])
def test_flat_prefill_and_decode_steps_equal_the_model_forward(batch):
    """The flat path (reordered, norm-folded weight copy, static cache, real-token prefill, oneDNN
    matmuls from 4 rows on where available) gives the logits of the model's own full forward pass
    over each row alone, at the prompt's last token and at every decoded token."""
    from training.core.serve.flat import DecodeWeights, FlatCache, decode_step, prefill, step_rotations

    model = make(9)
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(0, V, (7 - 2 * (i % 3),), generator=g).tolist() for i in range(batch)]
    steps = torch.randint(0, V, (batch, 5), generator=g)
    longest = max(len(p) for p in prompts)
    weights = DecodeWeights(model, key=())
    cache = FlatCache(weights, batch, longest + 5, torch.device("cpu"))
    rotations = step_rotations(weights, [len(p) for p in prompts], 5, torch.device("cpu"))
    with torch.inference_mode():
        got = prefill(weights, prompts, cache)
        for j in range(6):
            ref = torch.stack([model(torch.tensor([p + steps[i, :j].tolist()]))[0, -1] for i, p in enumerate(prompts)])
            assert got.shape == ref.shape == (batch, V)
            assert (got - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
            if j < 5:
                got = decode_step(weights, steps[:, j], cache, longest + j, rotations[j])


def test_decoding_weights_follow_weight_changes():
    """generate keeps a transposed copy of the weights for decoding; changing the weights (an
    optimizer step, a load) must rebuild it, and release_decode_weights drops it."""
    from training.core.serve.generate import release_decode_weights

    model = make(2)
    before = generate(model, [PROMPTS[0]], max_new_tokens=12)
    assert before == [reference_greedy(model, PROMPTS[0], 12)]
    assert model.__dict__.get("_decode_weights") is not None
    with torch.no_grad():
        other = make(3)
        model.load_state_dict(other.state_dict())  # in place: same storages, new versions
    after = generate(model, [PROMPTS[0]], max_new_tokens=12)
    assert after == [reference_greedy(other, PROMPTS[0], 12)] and after != before
    release_decode_weights(model)
    assert model.__dict__.get("_decode_weights") is None


def test_layers_with_their_own_forward_decode_through_the_model():
    """A projection whose module computes more than ``x @ W.T`` (an adapter) must not be bypassed
    by the flat decoding step."""

    class Scaled(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2.0 * super().forward(x)

    model = make(4)
    ref = make(4)
    for m in (model, ref):
        old = m.layers[0].feed_forward.w2
        new = Scaled(old.in_features, old.out_features, bias=False)
        new.weight = old.weight
        m.layers[0].feed_forward.w2 = new
    with torch.no_grad():
        ref.layers[0].feed_forward.w2 = torch.nn.Linear(ref.cfg.hidden_dim, ref.cfg.dim, bias=False)
        ref.layers[0].feed_forward.w2.weight.copy_(2.0 * model.layers[0].feed_forward.w2.weight)
    assert generate(model, [PROMPTS[2]], max_new_tokens=10) == [reference_greedy(ref, PROMPTS[2], 10)]


def test_lora_adapted_model_decodes_with_its_merged_weights():
    from training.core.lora import apply_lora

    model = make(5)
    apply_lora(model, rank=4, alpha=8.0, seed=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    out = generate(model, [PROMPTS[0]], max_new_tokens=12)
    assert out == [reference_greedy(model, PROMPTS[0], 12)]
    with torch.no_grad():  # an update of the adapters alone is seen by the next generate
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.mul_(-1.0)
    assert generate(model, [PROMPTS[0]], max_new_tokens=12) == [reference_greedy(model, PROMPTS[0], 12)]


def test_decoding_weights_follow_fused_optimizer_steps():
    """Fused AdamW updates parameters without bumping their version counters; the next generate
    must still decode with the updated weights."""
    model = make(6)
    tokens = torch.tensor([PROMPTS[0] + [1, 2, 3]])
    generate(model, [PROMPTS[0]], max_new_tokens=4)  # builds the decoding copy
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    for _ in range(3):
        model(tokens[:, :-1], targets=tokens[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    assert generate(model, [PROMPTS[0]], max_new_tokens=12) == [reference_greedy(model, PROMPTS[0], 12)]


@pytest.mark.slow
def test_compiled_decoding_generates_what_eager_decoding_generates():
    """compile=True (inductor, static cache bucket) gives the eager outputs, with padding, stop
    tokens and sampling; the compiled step is reused by the next call of the same shape."""
    model = make(10)
    eager = generate(model, PROMPTS, max_new_tokens=15)
    assert generate(model, PROMPTS, max_new_tokens=15, compile=True) == eager
    steps = model.__dict__["_decode_weights"].derived
    compiled = steps[("compiled", 3, 64)]
    stop = eager[0][3]
    assert (generate(model, PROMPTS, max_new_tokens=12, stop_ids=[stop], compile=True)
            == generate(model, PROMPTS, max_new_tokens=12, stop_ids=[stop]))
    assert (generate(model, PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3, compile=True)
            == generate(model, PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3))
    assert steps[("compiled", 3, 64)] is compiled  # same shape bucket: no new compilation


def test_compiled_decoding_without_a_compiler_is_a_clear_error(monkeypatch):
    from training.core.serve import compiled

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    model = make(11)
    monkeypatch.setattr(compiled.torch, "compile", lambda module, **kw: broken)
    streamed: list[tuple[int, int]] = []
    with pytest.raises(GenerationError, match="compile=False"):
        generate(model, PROMPTS, max_new_tokens=5, compile=True, on_token=lambda r, t: streamed.append((r, t)))
    assert streamed == []  # nothing was generated before the error
    assert generate(model, PROMPTS, max_new_tokens=5) == [reference_greedy(model, p, 5) for p in PROMPTS]


def test_prompt_lookup_decoding_is_exactly_greedy_in_fewer_passes(monkeypatch):
    """prompt_lookup=K drafts from earlier occurrences and verifies each draft in one pass: the
    output is the greedy output (with stop tokens and streaming), and a text that repeats itself
    takes fewer passes than tokens."""
    import importlib

    gen_module = importlib.import_module("training.core.serve.generate")
    passes = []
    real_prefill = gen_module.prefill
    monkeypatch.setattr(gen_module, "prefill", lambda *a, **kw: passes.append(1) or real_prefill(*a, **kw))
    fewer = 0
    for seed in range(4):
        model = make(seed, vocab_size=16)  # a small vocabulary: greedy text soon repeats itself
        prompt = [3, 7, 1, 3, 7, 2, 3, 7]
        greedy = generate(model, [prompt], max_new_tokens=40)
        passes.clear()
        streamed: list[int] = []
        out = generate(model, [prompt], max_new_tokens=40, prompt_lookup=6, on_token=lambda r, t: streamed.append(t))
        assert out == greedy and streamed == out[0]
        fewer += len(passes) < 40
        stop = greedy[0][10]
        assert (generate(model, [prompt], max_new_tokens=40, prompt_lookup=6, stop_ids=[stop])
                == generate(model, [prompt], max_new_tokens=40, stop_ids=[stop]))
    assert fewer >= 2  # drafts were accepted
    with pytest.raises(GenerationError, match="one prompt"):
        generate(make(), PROMPTS, max_new_tokens=4, prompt_lookup=3)
    with pytest.raises(GenerationError, match="greedy"):
        generate(make(), [PROMPTS[0]], max_new_tokens=4, prompt_lookup=3, temperature=0.7)
