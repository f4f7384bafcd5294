"""Sampling maths as pure functions over a batch of next-token logits ``(B, V)``.

>>> logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
>>> top_k_filter(logits, 2)
tensor([[2., 1., -inf, -inf]])
>>> apply_repetition_penalty(logits, torch.tensor([[True, False, False, True]]), 2.0)
tensor([[ 1.0000,  1.0000,  0.5000, -2.0000]])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_repetition_penalty", "top_k_filter", "top_p_filter", "sample_next"]


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL / Hugging Face repetition penalty: for tokens already ``seen`` (B, V) bool, a positive
    logit is divided by ``penalty`` and a negative one multiplied by it (``penalty > 1`` discourages
    repeats). Other logits are unchanged."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row (ties with the k-th are kept), others become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches ``p``
    (at least one token per row); others become -inf."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # probability mass strictly before each token
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: Tensor, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Next token ids ``(B,)`` from logits ``(B, V)``: argmax when ``temperature == 0``, otherwise a
    draw from ``softmax(logits / temperature)`` restricted by ``top_k`` and ``top_p``."""
    if temperature <= 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
