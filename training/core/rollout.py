"""Rollouts for RLHF: prompts → sampled responses (KV-cache generation) → padded batches → scores.

The pieces PPO needs, each a plain function:

- :func:`encode_prompts` turns ``{prompt}`` / ``{messages}`` records into prompt token ids;
- :func:`sample_responses` continues a batch of prompts with
  :func:`training.core.serve.generate` (one prefill, then one cached token per step) and cuts
  each response after its first stop token, which stays part of the response (stopping is an
  action the policy learns);
- :func:`pack` lays prompt + response rows out right-padded and records where each response
  starts, :func:`response_view` gathers per-response-token tensors ``(B, R, …)`` from
  per-position ones (the logits at position t score token t+1);
- :func:`score_responses` scores with a reward model or a rule-based reward and applies the
  missing-EOS penalty.

>>> rows = pack([[1, 2], [3]], [[7, 8, 9], [6]], pad_id=0)
>>> rows["input_ids"].tolist(), rows["starts"].tolist(), rows["mask"].tolist()
([[1, 2, 7, 8, 9], [3, 6, 0, 0, 0]], [1, 0], [[True, True, True], [True, False, False]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn as nn

from training.core.serve import generate
from training.core.serve.generate import release_decode_weights

__all__ = ["encode_prompts", "sample_responses", "pack", "response_view", "score_responses"]

Record = dict[str, Any]


def encode_prompts(records: list[Record], tokenizer: Any, *, max_prompt_len: int
                   ) -> tuple[list[list[int]], list[str], list[str]]:
    """``(prompt_ids, prompt_texts, problems)`` for PPO prompt records.

    ``{"prompt": str}`` is encoded as text (after the bos token, as preference records are);
    ``{"prompt": [messages]}`` or ``{"messages": [...]}`` goes through the chat template with the
    generation header (a trailing assistant turn is dropped: it is what the policy must write).
    Prompts keep their last ``max_prompt_len`` tokens; records without a usable prompt are
    skipped and reported in ``problems``.
    """
    ids_out: list[list[int]] = []
    texts: list[str] = []
    problems: list[str] = []
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    for i, rec in enumerate(records):
        prompt = rec.get("prompt", rec.get("messages"))
        try:
            if isinstance(prompt, str) and prompt.strip():
                text, ids = prompt, bos + tokenizer.encode(prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
                messages = list(prompt)
                if messages[-1].get("role") == "assistant":
                    messages = messages[:-1]
                if not messages:
                    raise ValueError("the conversation holds only an assistant turn")
                text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
                ids = tokenizer.encode(text)
            else:
                raise ValueError("needs a non-empty 'prompt' (text or messages) or 'messages'")
        except ValueError as e:
            problems.append(f"record {i + 1}: {e}")
            continue
        ids_out.append(ids[-max_prompt_len:])
        texts.append(text)
    return ids_out, texts, problems


def sample_responses(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                     temperature: float, top_k: int = 0, top_p: float = 1.0, stop_ids: Sequence[int] = (),
                     seed: int | None = None, pad_id: int = 0) -> list[list[int]]:
    """Sampled continuations of ``prompts``, each ending at (and including) its first stop token.

    Rows run to ``max_new_tokens`` in the generator and are cut here, so that the stop token the
    policy chose is part of its response (the generator itself drops stop tokens).
    """
    # The generator keeps a decoding copy of the weights and rebuilds it after optimizer steps; the
    # policy changes every PPO step anyway, so drop the copy explicitly: a rollout must sample from
    # the policy as it is now (tests/core/test_ppo.py checks this after an optimizer step).
    release_decode_weights(model)  # type: ignore[arg-type]
    out = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature,  # type: ignore[arg-type]
                   top_k=top_k or None, top_p=top_p if top_p < 1.0 else None, seed=seed, pad_id=pad_id)
    stops = set(int(s) for s in stop_ids)
    responses = []
    for row in out:
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        responses.append(row if cut is None else row[:cut + 1])
    return responses


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + response`` rows.

    Returns ``input_ids`` (B, T), ``attention_mask`` (B, T), ``starts`` (B,) = the position whose
    logits score the first response token (prompt length - 1), ``lengths`` (B,) and ``mask``
    (B, R) marking real response tokens (R = the longest response). A row without response
    tokens keeps one (masked) position so shapes stay valid.
    """
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    T = max(len(r) for r in rows)
    R = max(1, max(len(r) for r in responses))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        attn[i, :len(row)] = 1
    lengths = torch.tensor([len(r) for r in responses], dtype=torch.long)
    mask = torch.arange(R)[None, :] < lengths[:, None]  # (B, R)
    return {"input_ids": ids, "attention_mask": attn, "starts": torch.tensor([len(p) - 1 for p in prompts]),
            "lengths": lengths, "mask": mask}


def response_view(x: torch.Tensor, starts: torch.Tensor, R: int) -> torch.Tensor:
    """Rows of ``x`` (B, T, …) at positions ``starts + [0, R)``: (B, R, …) (positions past T are clamped)."""
    idx = (starts[:, None] + torch.arange(R, device=x.device)[None, :]).clamp(max=x.shape[1] - 1)  # (B, R)
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx[..., None].expand(-1, -1, *x.shape[2:]))


def score_responses(prompt_texts: Sequence[str], responses: Sequence[Sequence[int]], tokenizer: Any, *,
                    stop_ids: Sequence[int], missing_eos_penalty: float = 0.0,
                    reward_fn: Callable[[str, str], float] | None = None,
                    reward_model: nn.Module | None = None, batch: dict[str, torch.Tensor] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, has_eos)`` (B,) for the responses.

    With ``reward_fn`` the decoded response text (special tokens skipped) is scored with its
    prompt; with ``reward_model`` the packed ``batch`` (prompt + response, right-padded) is scored
    at each row's last real token. Responses that never emit a stop token lose
    ``missing_eos_penalty``.
    """
    stops = set(int(s) for s in stop_ids)
    has_eos = torch.tensor([bool(r) and int(r[-1]) in stops for r in responses])
    if reward_fn is not None:
        texts = [tokenizer.decode(list(r), skip_special_tokens=True) for r in responses]
        scores = torch.tensor([float(reward_fn(p, t)) for p, t in zip(prompt_texts, texts)], dtype=torch.float32)
    elif reward_model is not None and batch is not None:
        with torch.no_grad():
            scores = reward_model(batch["input_ids"], attention_mask=batch["attention_mask"]).float().cpu()
    else:
        raise ValueError("score_responses needs reward_fn, or reward_model with the packed batch")
    scores = scores - missing_eos_penalty * (~has_eos).float()
    return scores, has_eos
