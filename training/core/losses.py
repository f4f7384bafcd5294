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


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float = 0.0,
) -> torch.Tensor:
    """Pairwise reward-model loss (Bradley–Terry), as TRL's ``RewardTrainer`` computes it.

    ``mean(-log sigmoid(r_chosen - r_rejected - margin))`` over the pairs, plus
    ``center_rewards_coefficient * mean((r_chosen + r_rejected) ** 2)`` which keeps the rewards
    centred on zero (Eisenstein et al. 2023). ``chosen_rewards``, ``rejected_rewards`` and
    ``margin`` are (N,); ``margin=None`` means 0. Computed in fp32.

    >>> round(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).item(), 4)  # -log sigmoid(1)
    0.3133
    >>> round(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0])).item(), 4)  # ln 2
    0.6931
    """
    diff = chosen_rewards.float() - rejected_rewards.float()  # (N,)
    if margin is not None:
        diff = diff - margin.float()
    loss = -F.logsigmoid(diff).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * (chosen_rewards.float() + rejected_rewards.float()).pow(2).mean()
    return loss


# --------------------------------------------------------------------------------------------
# Preference and RL objectives (DPO, PPO)
# --------------------------------------------------------------------------------------------

def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true (over ``dim``, or over everything); 0 where nothing is kept.

    >>> masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([True, True, False]))
    tensor(1.5000)
    """
    m = mask.to(values.dtype)
    if dim is None:
        return (values * m).sum() / m.sum().clamp(min=1)
    return (values * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalize ``values`` to unit variance (and zero mean when ``shift_mean``) over the masked entries.

    Masked-out entries come back as 0.

    >>> masked_whiten(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([True, True, False]))
    tensor([-1.,  1.,  0.])
    """
    m = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Log-probability of each target token: ``log_softmax(logits)[..., target]``, 0 where ignored.

    ``logits`` (..., V) any float dtype (computed in fp32), ``targets`` (...). Targets are already
    aligned with the logits (the logits at position t score ``targets[t]``).

    >>> token_logprobs(torch.zeros(1, 2, 4), torch.tensor([[3, -100]]))
    tensor([[-1.3863,  0.0000]])
    """
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, logp, torch.zeros_like(logp))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last dimension, in fp32.

    >>> round(entropy_from_logits(torch.zeros(4)).item(), 4)  # uniform over 4: ln 4
    1.3863
    """
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct preference optimization losses per pair, and the implicit rewards.

    Inputs (B,) are sequence log-probabilities of the answers (sums over answer tokens; for IPO
    pass per-token means). With ``h = (π_c − π_r) − (ref_c − ref_r)``:

    * ``sigmoid`` (DPO): ``−(1−ε)·log σ(β h) − ε·log σ(−β h)`` (ε = ``label_smoothing``)
    * ``hinge`` (SLiC): ``max(0, 1 − β h)``
    * ``ipo``: ``(h − 1/(2β))²``

    Returns ``(losses, chosen_rewards, rejected_rewards)``, each (B,), where the implicit rewards
    are ``β (π − ref)`` of each answer (detached).

    >>> z = torch.zeros(1)
    >>> losses, rc, rr = dpo_loss(z, z, z, z, beta=0.1)
    >>> round(losses.item(), 4)  # -log(1/2)
    0.6931
    """
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)  # (B,)
    logits = logits.float()
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; use 'sigmoid', 'ipo' or 'hinge'")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).float().detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).float().detach()
    return losses, chosen_rewards, rejected_rewards


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ ref) from the sampled tokens' log-probabilities (Schulman's k1/k3).

    ``k1 = log π − log ref`` (unbiased, can be negative per token);
    ``k3 = (ref/π − 1) − log(ref/π)`` (unbiased, never negative, lower variance).

    >>> lp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    >>> kl_estimate(lp, ref, "k1")
    tensor([1.])
    >>> round(kl_estimate(lp, ref, "k3").item(), 4)  # e^-1 - 1 + 1
    0.3679
    """
    log_ratio = logprobs.float() - ref_logprobs.float()  # log π/ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over response tokens (Schulman et al. 2016).

    ``rewards``, ``values`` (B, T) per response token; ``mask`` (B, T) true for real tokens
    (a row's tokens come first, padding after). Backwards in time:
    ``δ_t = r_t + γ V_{t+1} − V_t`` and ``A_t = δ_t + γ λ A_{t+1}``, where ``V`` and ``A`` past a
    row's last token are 0 (the episode ends there). Returns ``(advantages, returns)`` with
    ``returns = advantages + values``; both 0 where masked.

    >>> r, v, m = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2, dtype=torch.bool)
    >>> adv, ret = gae_advantages(r, v, m, gamma=1.0, lam=1.0)
    >>> adv  # A_1 = 1 - 0.25; A_0 = 0 + 0.25 - 0.5 + 0.75
    tensor([[0.5000, 0.7500]])
    """
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    T = rewards.shape[1]
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        next_values = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * m


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    *, cliprange: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate: ``mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))`` with ``ρ = exp(logπ − logπ_old)``.

    All inputs (B, T); means over ``mask``. Returns the loss and detached statistics:
    ``clipfrac`` (share of tokens where the clipped term is the larger), ``approxkl``
    (``½·mean((logπ − logπ_old)²)``) and ``ratio`` (mean ρ).

    >>> lp, old, adv = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -1.0]])
    >>> loss, stats = ppo_policy_loss(lp, old, adv, torch.ones(1, 2, dtype=torch.bool))
    >>> loss.item(), stats["clipfrac"].item()
    (0.0, 0.0)
    """
    log_ratio = logprobs.float() - old_logprobs.float()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approxkl": 0.5 * masked_mean(log_ratio ** 2, mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
    *, cliprange_value: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``½·mean(max((V − R)², (V_clip − R)²))`` with
    ``V_clip = V_old + clip(V − V_old, −ε, ε)``. Returns the loss and ``{"clipfrac"}``.

    >>> v, old, ret = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]])
    >>> loss, stats = ppo_value_loss(v, old, ret, torch.ones(1, 1, dtype=torch.bool), cliprange_value=0.5)
    >>> loss.item()  # max((1-2)^2, (0.5-2)^2) / 2
    1.125
    """
    values, old_values, returns = values.float(), old_values.float(), returns.float()
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask)}
    return loss, stats
