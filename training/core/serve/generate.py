"""Batched generation with a static KV cache, streaming and chat.

One prefill over the prompts, then one single-token step per new token. Only the last position's
logits are ever computed, the cache is preallocated once and written in place, and the loop
synchronises with Python once per step (to stream tokens and check stop tokens). Plain models run
the flat path of :mod:`training.core.serve.flat` on a decoding copy of their weights; models whose
layers compute something else (hooks, custom projections, sharded parameters) run their own forward.

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
from torch.optim.optimizer import register_optimizer_step_post_hook

from training.core.model import KVCache, Transformer
from training.core.serve.compiled import cache_bucket
from training.core.serve.flat import (
    DecodeWeights, FlatCache, decode_step, flat_decoding_applies, prefill, step_rotations,
)
from training.core.serve.sampling import apply_repetition_penalty, sample_next

if TYPE_CHECKING:
    from training.core.tokenizer import StudioTokenizer

__all__ = ["generate", "chat", "release_decode_weights", "GenerationError"]

TokenCallback = Callable[[int, int], Any]  # (row, token_id)


class GenerationError(ValueError):
    """Generation cannot run as asked; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f" (hint: {hint})" if hint else ""))


_optimizer_steps = 0  # optimizer steps taken in this process (any torch.optim optimizer)


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


# fused optimizers (AdamW(fused=True)) update parameters in place without bumping their version
# counters, so any optimizer step anywhere in the process invalidates the decoding copies
register_optimizer_step_post_hook(_count_optimizer_step)


def _params_key(model: Transformer) -> tuple[Any, ...]:
    """Changes whenever a parameter or buffer may have changed: storage and version counter of
    each, and the number of optimizer steps taken in the process (fused optimizers do not bump
    version counters). Writes through ``param.data`` bump nothing: call
    :func:`release_decode_weights` after those."""
    tensors = [*model.parameters(), *model.buffers()]
    return (_optimizer_steps, *((t.data_ptr(), t._version) for t in tensors))


def _decode_weights(model: Transformer) -> DecodeWeights:
    """The model's cached :class:`~training.core.serve.flat.DecodeWeights`, rebuilt if a parameter
    changed since."""
    key = _params_key(model)
    cached = model.__dict__.get("_decode_weights")
    if cached is None or cached.key != key:
        model.__dict__["_decode_weights"] = None  # free the old copy before building the new one
        cached = DecodeWeights(model, key)
        model.__dict__["_decode_weights"] = cached
    return cached


def release_decode_weights(model: Transformer) -> None:
    """Drop the decoding copy of the weights that :func:`generate` keeps on ``model``."""
    model.__dict__.pop("_decode_weights", None)


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
    compile: bool = False,
    prompt_lookup: int = 0,
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

    ``compile=True`` runs the decoding steps through ``torch.compile`` (see
    :mod:`training.core.serve.compiled`): tens of seconds of compilation for the first call with a
    given batch size and cache bucket, then faster steps; for long-lived processes. It needs a
    working C++ compiler; without one it raises :class:`GenerationError` before generating anything.
    Models that decode through their own forward (see above) ignore it.

    ``prompt_lookup=K`` (greedy decoding of one prompt) drafts up to ``K`` tokens per step by
    prompt lookup (the continuation of the latest earlier occurrence of the last 1-2 tokens in the
    prompt and output so far) and verifies them with one forward pass over the draft: the output
    is exactly the greedy output, in fewer passes when the text repeats itself.
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
    V = model.cfg.vocab_size
    if any(not 0 <= int(t) < V for p in prompts for t in p):
        raise GenerationError(f"prompt token ids must be in [0, {V})", "encode prompts with this model's tokenizer")
    B = len(prompts)
    lengths = [len(p) for p in prompts]
    longest = max(lengths)
    total = longest + max_new_tokens
    if total > model.cfg.max_seq_len:
        raise GenerationError(f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                              f"model's max_seq_len={model.cfg.max_seq_len}",
                              "shorten the prompt or ask for fewer new tokens")
    outputs: list[list[int]] = [[] for _ in range(B)]
    if prompt_lookup < 0:
        raise GenerationError(f"prompt_lookup must be >= 0, got {prompt_lookup}")
    if prompt_lookup and (B != 1 or temperature > 0 or repetition_penalty != 1.0 or compile):
        raise GenerationError("prompt_lookup drafts for greedy decoding of one prompt",
                              "use temperature=0, repetition_penalty=1, compile=False and a single prompt")
    if max_new_tokens == 0:
        return outputs
    if prompt_lookup and flat_decoding_applies(model):
        return [_lookup_generate(_decode_weights(model), list(prompts[0]), max_new_tokens, prompt_lookup,
                                 {int(s) for s in stop_ids}, on_token)]

    device = next(model.parameters()).device
    seen = None
    if repetition_penalty != 1.0:  # every prompt token counts as seen
        seen = torch.zeros(B, model.cfg.vocab_size, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, torch.as_tensor(list(p), dtype=torch.long, device=device)] = True
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stops = {int(s) for s in stop_ids}
    stop_tensor = torch.tensor(sorted(stops), dtype=torch.long, device=device) if stops else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    done_list = [False] * B

    step_fn = None
    if flat_decoding_applies(model):
        weights = _decode_weights(model)
        length = total
        if compile and max_new_tokens > 1:
            length = cache_bucket(total, model.cfg.max_seq_len)
            step_fn = _compiled_step(weights, B, length, device)
        flat_cache = FlatCache(weights, B, length, device)
        logits = prefill(weights, [list(p) for p in prompts], flat_cache)  # (B, V)
        rotations = step_rotations(weights, lengths, max_new_tokens - 1, device)  # (steps, B, 1, D/2)
        linears = weights.linears(B)
    else:
        weights = None
        cache = _model_prefill_cache(model, prompts, pad_id, total, device)
        logits = model.output(cache.last_hidden)
    slot = longest  # the cache slot of the next token (prompts are left-padded to the longest)
    for step in range(max_new_tokens):
        if seen is not None:
            logits = apply_repetition_penalty(logits.float(), seen, repetition_penalty)
        nxt = sample_next(logits.float(), temperature=temperature, top_k=top_k, top_p=top_p,
                          generator=generator)  # (B,)
        if stop_tensor is not None:
            done = done | torch.isin(nxt, stop_tensor)
            nxt = nxt.masked_fill(done, pad_id)
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
        if step_fn is not None:
            logits = step_fn(nxt, torch.tensor([slot], device=device), torch.view_as_real(rotations[step]),
                             flat_cache.bias, flat_cache.k, flat_cache.v)
        elif weights is not None:
            logits = decode_step(weights, nxt, flat_cache, slot, rotations[step], linears)  # (B, V)
        else:
            logits = model.output(model(nxt[:, None], kv_cache=cache, start_pos=slot, return_hidden=True)[:, 0])
        slot += 1
    return outputs


def _draft(seq: list[int], k: int, max_ngram: int = 2) -> list[int]:
    """Prompt lookup: the (up to ``k``) tokens that followed the first earlier occurrence of the
    last ``n`` tokens of ``seq`` (``n = max_ngram .. 1``, the longest that occurs), as in
    transformers' prompt lookup. (The latest occurrence drafted 1 token at a time in a run of
    repeats: 18 verification passes for 32 SmolLM2 tokens instead of 8.)"""
    for n in range(min(max_ngram, len(seq) - 1), 0, -1):
        tail = seq[-n:]
        for i in range(len(seq) - n):
            if seq[i:i + n] == tail:
                return seq[i + n:i + n + k]
    return []


def _lookup_generate(weights: DecodeWeights, prompt: list[int], max_new_tokens: int, k: int, stops: set[int],
                     on_token: TokenCallback | None) -> list[int]:
    """Greedy decoding of one prompt with prompt-lookup drafts verified by one pass each: the
    pass over ``[last token] + draft`` gives the greedy token after each of them; the draft is
    kept up to the first disagreement, and the model's own token there comes next. Cache slots
    written for rejected draft tokens are overwritten by the next pass (attention never reads
    past the slots written by the current pass)."""
    device = weights.embed.device
    cache = FlatCache(weights, 1, len(prompt) + max_new_tokens, device)
    seq, out = list(prompt), []

    def emit(tokens: list[int]) -> bool:  # True when generation is over
        for token in tokens:
            if token in stops:
                return True
            out.append(token)
            seq.append(token)
            if on_token is not None:
                on_token(0, token)
            if len(out) == max_new_tokens:
                return True
        return False

    nxt = int(prefill(weights, [prompt], cache)[0].argmax())
    while not emit([nxt]):
        draft = _draft(seq, min(k, max_new_tokens - len(out)))
        slot = len(seq) - 1  # the cache slot of nxt
        greedy = prefill(weights, [[nxt] + draft], cache, start=slot, every_position=True).argmax(-1).tolist()
        n = 0
        while n < len(draft) and greedy[n] == draft[n]:
            n += 1
        if emit(draft[:n]):
            break
        nxt = greedy[n]
    return out


def _compiled_step(weights: DecodeWeights, batch: int, length: int, device: torch.device) -> Any:
    """The compiled step for this shape (compiled and run once on first use); a compiler failure
    is a :class:`GenerationError` that says how to do without."""
    from training.core.serve.compiled import compiled_step

    try:
        return compiled_step(weights, batch, length, device)
    except Exception as e:  # noqa: BLE001 - compiler errors come in many types
        raise GenerationError(f"compiled decoding is unavailable here: {type(e).__name__}: {str(e)[:300]}",
                              "use compile=False (the default eager path needs no compiler)") from e


def _model_prefill_cache(model: Transformer, prompts: Sequence[Sequence[int]], pad_id: int, total: int,
                         device: torch.device) -> KVCache:
    """Prefill through the model's own forward (the path for models the flat path does not apply
    to): a :class:`KVCache` holding the left-padded prompts, with ``last_hidden`` (B, C) set."""
    B, longest = len(prompts), max(len(p) for p in prompts)
    tokens = torch.full((B, longest), pad_id, dtype=torch.long)
    mask = torch.zeros(B, longest, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, longest - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, longest - len(p):] = True
    tokens, mask = tokens.to(device), mask.to(device)
    cache = KVCache(model.cfg, B, total, device=device, dtype=next(model.parameters()).dtype)
    hidden = model(tokens, attention_mask=None if bool(mask.all()) else mask, kv_cache=cache, start_pos=0,
                   return_hidden=True)
    cache.last_hidden = hidden[:, -1]  # type: ignore[attr-defined]
    return cache


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
