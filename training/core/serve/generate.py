"""Batched generation with a static KV cache, streaming and chat.

One prefill over the (left-padded) prompts, then one single-token forward per step. Only the last
position's logits are ever computed, the cache is preallocated once, and the loop synchronises
with Python once per step (to stream tokens and check stop tokens).

>>> from training.core.config import ModelConfig
>>> from training.core.model import Transformer
>>> model = Transformer(ModelConfig.preset("tiny"))
>>> out = generate(model, [[1, 2, 3], [4]], max_new_tokens=5)
>>> [len(o) for o in out]
[5, 5]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from training.core.model import KVCache, Transformer, rope_rotate
from training.core.serve.sampling import apply_repetition_penalty, sample_next

if TYPE_CHECKING:
    from training.core.tokenizer import StudioTokenizer

__all__ = ["generate", "chat", "decode_step", "release_decode_weights", "GenerationError"]

TokenCallback = Callable[[int, int], Any]  # (row, token_id)


class GenerationError(ValueError):
    """Generation cannot run as asked; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f" (hint: {hint})" if hint else ""))


class _DecodeWeights:
    """The weights of a decoding step, laid out for one-row-at-a-time matmuls: q/k/v and gate/up
    concatenated, every matrix transposed to ``(in, out)`` and contiguous. With a handful of rows,
    ``x @ W_t`` streams the weights in the order the GEMM kernel reads them and is 1.3-1.5x faster
    here than ``F.linear(x, W)`` (``x @ W.T``), and two fused matmuls replace five.

    Built once and kept on the model (about one extra copy of the block and output weights);
    rebuilt when any parameter may have changed (``key``: storage and version counter of every
    parameter, and the number of optimizer steps taken in the process, since fused optimizers do
    not bump version counters). Writes through ``param.data`` bump nothing: call
    :func:`release_decode_weights` after those."""

    def __init__(self, model: Transformer, key: tuple[Any, ...]) -> None:
        self.key = key
        self.layers = []
        with torch.no_grad():
            for layer in model.layers:
                a, f = layer.attention, layer.feed_forward
                self.layers.append((
                    layer.attention_norm.weight,
                    torch.cat((a.wq.weight, a.wk.weight, a.wv.weight)).t().contiguous(),  # (C, (H+2Hk)*D)
                    a.wo.weight.t().contiguous(),  # (H*D, C)
                    layer.ffn_norm.weight,
                    torch.cat((f.w1.weight, f.w3.weight)).t().contiguous(),  # (C, 2F)
                    f.w2.weight.t().contiguous(),  # (F, C)
                ))
            self.output = model.output.weight.t().contiguous()  # (C, V)


_optimizer_steps = 0  # optimizer steps taken in this process (any torch.optim optimizer)


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


# fused optimizers (AdamW(fused=True)) update parameters in place without bumping their version
# counters, so any optimizer step anywhere in the process invalidates the decoding copies
register_optimizer_step_post_hook(_count_optimizer_step)


def _params_key(model: Transformer) -> tuple[Any, ...]:
    return (_optimizer_steps, *((p.data_ptr(), p._version) for p in model.parameters()))


def _flat_decoding_applies(model: Transformer) -> bool:
    """The flat step reads ``.weight`` of plain ``nn.Linear`` layers and of LoRA layers (whose
    ``weight`` is the merged ``W + s B A``); layers with any other forward or with hooks go through
    the model's forward instead."""
    from training.core.lora import LoRALinear

    for layer in model.layers:
        for lin in (layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.attention.wo,
                    layer.feed_forward.w1, layer.feed_forward.w2, layer.feed_forward.w3):
            plain = (isinstance(lin, torch.nn.Linear) and type(lin).forward is torch.nn.Linear.forward
                     and lin.bias is None) or type(lin) is LoRALinear
            if not plain or lin._forward_hooks or lin._forward_pre_hooks:
                return False
    return all(type(p.data) is torch.Tensor for p in model.parameters())  # not sharded (DTensor)


def _decode_weights(model: Transformer) -> _DecodeWeights:
    """The model's cached :class:`_DecodeWeights`, rebuilt if a parameter changed since."""
    key = _params_key(model)
    cached = model.__dict__.get("_decode_weights")
    if cached is None or cached.key != key:
        model.__dict__["_decode_weights"] = None  # free the old copy before building the new one
        cached = _DecodeWeights(model, key)
        model.__dict__["_decode_weights"] = cached
    return cached


def release_decode_weights(model: Transformer) -> None:
    """Drop the decoding copy of the weights that :func:`generate` keeps on ``model``."""
    model.__dict__.pop("_decode_weights", None)


def decode_step(model: Transformer, tokens: torch.Tensor, cache: KVCache, pos: int,
                weights: _DecodeWeights | None = None) -> torch.Tensor:
    """One decoding step: final-normed hidden states ``(B, C)`` of ``tokens`` ``(B, 1)`` at ``pos``.

    The same maths as ``model(tokens, kv_cache=cache, start_pos=pos, return_hidden=True)``
    (tests check they agree), written as a flat sequence of functional calls on the transposed,
    fused weights of :class:`_DecodeWeights`: no module dispatch, fused RMSNorm kernels, one matmul
    for q/k/v and one for gate/up, residual adds fused into the output matmuls (``addmm``), rotary
    on q and k in one call, and attention of each KV head's query group as one SDPA "sequence"
    (no key/value repetition). At a few tokens per step this is what makes small models decode fast.
    """
    cfg = model.cfg
    w = weights if weights is not None else _decode_weights(model)
    B = tokens.shape[0]
    H, Hk, D, C, Fh = cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.dim, cfg.hidden_dim
    G, eps = H // Hk, cfg.norm_eps
    cache.prepare(pos, 1, None)
    dtype = model.tok_embeddings.weight.dtype
    if cache.positions is None:
        cos, sin = model.rope_cos[pos:pos + 1], model.rope_sin[pos:pos + 1]  # (1, D/2)
    else:
        rows = cache.positions[:, 0]
        cos, sin = model.rope_cos[rows][:, None], model.rope_sin[rows][:, None]  # (B, 1, D/2)
    cos, sin = cos.to(dtype), sin.to(dtype)
    mask, end = cache.mask, pos + 1
    h = model.tok_embeddings.weight[tokens[:, 0]]  # (B, C)
    for i, (attn_norm, wqkv, wo, ffn_norm, w13, w2) in enumerate(w.layers):
        x = F.rms_norm(h, (C,), attn_norm, eps)
        qkv = torch.mm(x, wqkv).view(B, H + 2 * Hk, D)
        qk = rope_rotate(qkv[:, :H + Hk], cos, sin, 1.0)  # (B, H + Hk, D): q heads then k heads
        cache.k[i][:, :, pos] = qk[:, H:]
        cache.v[i][:, :, pos] = qkv[:, H + Hk:]
        q = qk[:, :H].view(B, Hk, G, D)  # the G query heads of a KV head as one sequence of G queries
        y = F.scaled_dot_product_attention(q, cache.k[i][:, :, :end], cache.v[i][:, :, :end],
                                           attn_mask=mask)  # (B, Hk, G, D)
        h = torch.addmm(h, y.reshape(B, H * D), wo)
        gu = torch.mm(F.rms_norm(h, (C,), ffn_norm, eps), w13)  # (B, 2F)
        h = torch.addmm(h, F.silu(gu[:, :Fh]) * gu[:, Fh:], w2)
    return F.rms_norm(h, (C,), model.norm.weight, eps)  # (B, C)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_ids: Iterable[int] = (),
    on_token: TokenCallback | None = None,
    seed: int | None = None,
    pad_id: int = 0,
) -> list[list[int]]:
    """Continue each prompt (a list of token ids) and return the new tokens of each.

    ``temperature=0`` is greedy decoding; otherwise tokens are sampled from the softmax at that
    temperature, restricted to the ``top_k`` most likely and to the ``top_p`` nucleus.
    ``repetition_penalty`` (> 1 discourages) applies to every token of the prompt and of the
    output so far. A row stops at the first token in ``stop_ids`` (which is not returned) or
    after ``max_new_tokens``. ``on_token(row, token_id)`` is called for every returned token, in
    order, as soon as it is chosen. ``seed`` makes sampling reproducible.

    Prompts of different lengths are left-padded (``pad_id``; masked, so its value is irrelevant)
    and every row gets its own rotary positions, so a row generates what it would alone.
    """
    if model.cfg.mode != "decoder":
        raise GenerationError("generation needs a decoder model", "this model was built with mode='encoder'")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationError("every prompt needs at least one token", "start prompts with the bos token")
    if max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0 or (top_p is not None and not 0.0 < top_p <= 1.0) or repetition_penalty <= 0:
        raise GenerationError("invalid sampling settings",
                              "use temperature >= 0, 0 < top_p <= 1 and repetition_penalty > 0")
    B = len(prompts)
    lengths = [len(p) for p in prompts]
    longest = max(lengths)
    total = longest + max_new_tokens
    if total > model.cfg.max_seq_len:
        raise GenerationError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                              f"model's max_seq_len={model.cfg.max_seq_len}",
                              "shorten the prompt or ask for fewer new tokens")
    outputs: list[list[int]] = [[] for _ in range(B)]
    if max_new_tokens == 0:
        return outputs

    param = next(model.parameters())
    device = param.device
    tokens = torch.full((B, longest), pad_id, dtype=torch.long)
    mask = torch.zeros(B, longest, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, longest - len(p):] = True
    tokens, mask = tokens.to(device), mask.to(device)
    cache = KVCache(model.cfg, B, total, device=device, dtype=param.dtype)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, model.cfg.vocab_size, dtype=torch.bool, device=device)
        seen.scatter_(1, tokens, mask)
    stops = {int(s) for s in stop_ids}
    stop_tensor = torch.tensor(sorted(stops), dtype=torch.long, device=device) if stops else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    done_list = [False] * B

    flat = _flat_decoding_applies(model)
    weights = _decode_weights(model) if flat else None
    hidden = model(tokens, attention_mask=None if bool(mask.all()) else mask, kv_cache=cache, start_pos=0,
                   return_hidden=True)[:, -1]  # (B, C): the last position only
    pos = longest
    for step in range(max_new_tokens):
        logits = (torch.mm(hidden, weights.output) if weights is not None else model.output(hidden)).float()  # (B, V)
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)  # (B,)
        if stop_tensor is not None:
            done = done | torch.isin(nxt, stop_tensor)
        nxt = nxt.masked_fill(done, pad_id) if stop_tensor is not None else nxt
        chosen = nxt.tolist()
        finished = done.tolist() if stop_tensor is not None else done_list
        for i in range(B):
            if done_list[i]:
                continue
            if finished[i]:
                done_list[i] = True
                continue
            outputs[i].append(chosen[i])
            if on_token is not None:
                on_token(i, chosen[i])
        if all(done_list) or step == max_new_tokens - 1:
            break
        if seen is not None:
            seen.scatter_(1, nxt[:, None], ~done[:, None])
        if weights is not None:
            hidden = decode_step(model, nxt[:, None], cache, pos, weights)  # (B, C)
        else:
            hidden = model(nxt[:, None], kv_cache=cache, start_pos=pos, return_hidden=True)[:, 0]
        pos += 1
    return outputs


def chat(model: Transformer, tokenizer: "StudioTokenizer", messages: list[dict[str, Any]], *,
         max_new_tokens: int = 128, stop_ids: Iterable[int] | None = None, on_text: Callable[[str], Any] | None = None,
         **sampling: Any) -> str:
    """Answer a conversation: render ``messages`` with the tokenizer's chat template (generation
    prompt added), generate until an end-of-turn token, and return the decoded reply.

    ``stop_ids`` defaults to the tokenizer's ``stop_ids`` (eos and end-of-turn tokens).
    ``on_text(piece)`` streams the reply as text. Other keywords go to :func:`generate`.
    """
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = tokenizer.encode(prompt)
    stops = list(tokenizer.stop_ids if stop_ids is None else stop_ids)
    callback = None
    if on_text is not None:
        produced: list[int] = []
        emitted = [""]

        def callback(row: int, token: int) -> None:  # decode the whole reply so multi-byte characters stay whole
            produced.append(token)
            text = tokenizer.decode(produced, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                return
            on_text(text[len(emitted[0]):])
            emitted[0] = text

    out = generate(model, [ids], max_new_tokens=max_new_tokens, stop_ids=stops, on_token=callback,
                   pad_id=tokenizer.pad_id, **sampling)[0]
    return tokenizer.decode(out, skip_special_tokens=True).strip()
