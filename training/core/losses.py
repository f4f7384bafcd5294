"""Training objectives as pure functions.

``lm_loss`` is next-token cross-entropy (targets are already shifted by the data pipeline),
``mlm_mask`` builds BERT-style masked-LM inputs (the 80/10/10 rule) and ``mlm_loss`` scores the
masked positions. All losses compute in fp32 whatever the logits dtype.

>>> import torch
>>> logits = torch.zeros(1, 3, 5)            # uniform over 5 tokens
>>> round(lm_loss(logits, torch.tensor([[1, 2, -100]])).item(), 4)  # ln 5
1.6094
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not ``ignore_index``.

    ``logits`` (B, T, V) or (N, V), any float dtype (upcast to fp32); ``targets`` (B, T) or (N,).
    Returns a scalar; 0.0 (with a gradient of zeros) when every target is ignored, instead of NaN.
    The sum / count form avoids a host sync, so it is safe under ``torch.compile``.
    """
    V = logits.size(-1)
    flat_logits = logits.reshape(-1, V).float()  # (N, V)
    flat_targets = targets.reshape(-1)  # (N,)
    total = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index, reduction="sum")
    count = (flat_targets != ignore_index).sum().clamp(min=1)
    return total / count


def mlm_mask(
    tokens: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    rate: float = 0.15,
    special_ids: Iterable[int] = (),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-LM corruption (BERT's 80/10/10 rule).

    Each position that is not a special token is selected with probability ``rate``. Of the
    selected positions 80% become ``mask_id``, 10% a random non-special token and 10% stay
    unchanged. Returns ``(inputs, labels)``, both shaped like ``tokens``: ``labels`` holds the
    original token at selected positions and -100 elsewhere.

    Random draws come from ``generator`` (on its own device) so that a seeded generator gives the
    same masks on CPU and GPU.

    >>> g = torch.Generator().manual_seed(0)
    >>> inputs, labels = mlm_mask(torch.arange(10, 20).repeat(4, 1), mask_id=1, vocab_size=32, generator=g)
    >>> bool(((labels == -100) | (labels == torch.arange(10, 20))).all())
    True
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"mlm rate must be in (0, 1), got {rate!r}; 0.15 is the usual value")
    special = sorted({int(i) for i in special_ids} | {int(mask_id)})
    device = tokens.device
    rng_device = generator.device if generator is not None else device

    def uniform() -> torch.Tensor:
        return torch.rand(tokens.shape, generator=generator, device=rng_device).to(device)

    is_special = torch.isin(tokens, torch.tensor(special, device=device, dtype=tokens.dtype))
    selected = (uniform() < rate) & ~is_special  # (B, T)
    draw = uniform()
    to_mask = selected & (draw < 0.8)
    to_random = selected & (draw >= 0.8) & (draw < 0.9)  # the last 10% stay unchanged

    allowed = torch.ones(vocab_size, dtype=torch.bool, device=rng_device)
    allowed[torch.tensor([i for i in special if 0 <= i < vocab_size], dtype=torch.long, device=rng_device)] = False
    allowed_ids = allowed.nonzero().squeeze(1)  # (V',) ids a random replacement may take
    pick = torch.randint(len(allowed_ids), tokens.shape, generator=generator, device=rng_device)
    random_tokens = allowed_ids[pick].to(device=device, dtype=tokens.dtype)

    inputs = torch.where(to_mask, torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(to_random, random_tokens, inputs)
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return inputs, labels


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy on the masked positions only (``labels`` from :func:`mlm_mask`, no shift).

    ``logits`` (B, T, V), ``labels`` (B, T). Same as :func:`lm_loss`; named for clarity in loops.
    """
    return lm_loss(logits, labels, ignore_index=ignore_index)


def perplexity(loss: float) -> float:
    """``exp(loss)``, capped so that an exploding loss gives a large number, not an overflow.

    >>> round(perplexity(math.log(5.0)), 6)
    5.0
    """
    return math.exp(min(float(loss), 700.0))
