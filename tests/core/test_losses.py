"""Losses against hand computation and against torch's cross-entropy; MLM masking statistics."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from training.core import losses
from training.core.losses import IGNORE_INDEX, lm_loss, mlm_loss, mlm_mask, perplexity


def _by_hand(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean of -log softmax(logits)[target] over non-ignored positions, with Python floats."""
    total, n = 0.0, 0
    for row, t in zip(logits.reshape(-1, logits.size(-1)).tolist(), targets.reshape(-1).tolist()):
        if t == IGNORE_INDEX:
            continue
        m = max(row)
        log_z = m + math.log(sum(math.exp(x - m) for x in row))
        total += log_z - row[t]
        n += 1
    return total / n


def test_lm_loss_matches_hand_and_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g) * 3  # (B, T, V)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    targets[0, 1] = targets[1, 4] = IGNORE_INDEX
    got = lm_loss(logits, targets)
    assert got.item() == pytest.approx(_by_hand(logits, targets), abs=1e-5)
    ref = F.cross_entropy(logits.view(-1, 7), targets.view(-1), ignore_index=IGNORE_INDEX)
    assert torch.allclose(got, ref, atol=1e-6)
    assert lm_loss(logits.view(-1, 7), targets.view(-1)).item() == pytest.approx(got.item(), abs=1e-7)


def test_lm_loss_gradient_matches_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, 11, generator=g, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    targets = torch.randint(0, 11, (3, 4), generator=g)
    targets[2] = IGNORE_INDEX
    lm_loss(a, targets).backward()
    F.cross_entropy(b.view(-1, 11), targets.view(-1)).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)
    assert a.grad[2].abs().max().item() == 0.0  # ignored positions get no gradient


def test_lm_loss_computes_in_fp32() -> None:
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 8, 50, generator=g) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 50, (2, 8), generator=g)
    got = lm_loss(logits, targets)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_by_hand(logits.float(), targets), abs=1e-5)


def test_lm_loss_all_ignored_is_zero_not_nan() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = lm_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.abs().sum().item() == 0.0


def _mlm_batch() -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(10, 1000, (64, 2048), generator=g)  # 131,072 positions
    special = [0, 1, 2, 3]
    specials_at = torch.rand(tokens.shape, generator=g) < 0.1
    tokens[specials_at] = torch.randint(0, 4, (int(specials_at.sum()),), generator=g)
    return tokens, special


@pytest.mark.parametrize("rate", [0.15, 0.3])
def test_mlm_mask_statistics(rate: float) -> None:
    tokens, special = _mlm_batch()
    mask_id, vocab = 4, 1000
    inputs, labels = mlm_mask(tokens, mask_id=mask_id, vocab_size=vocab, rate=rate, special_ids=special,
                              generator=torch.Generator().manual_seed(0))
    is_special = torch.isin(tokens, torch.tensor(special))
    selected = labels != IGNORE_INDEX
    # never selects special tokens; labels hold the original token where selected
    assert not (selected & is_special).any()
    assert torch.equal(labels[selected], tokens[selected])
    assert torch.equal(inputs[~selected], tokens[~selected])
    # about `rate` of the eligible positions (binomial std ~0.001 here; tolerance ~5 std)
    n_eligible = int((~is_special).sum())
    n_sel = int(selected.sum())
    assert abs(n_sel / n_eligible - rate) < 0.005
    masked = (inputs == mask_id) & selected
    unchanged = (inputs == tokens) & selected
    randomized = selected & ~masked & ~unchanged
    # 80 / 10 / 10 (std of each share < 0.003 for >17k selections; tolerance 0.015)
    assert abs(int(masked.sum()) / n_sel - 0.8) < 0.015
    assert abs(int(unchanged.sum()) / n_sel - 0.1) < 0.015  # includes ~0.1% random draws equal to the original
    assert abs(int(randomized.sum()) / n_sel - 0.1) < 0.015
    # random replacements are real, non-special, in-vocabulary tokens
    rnd = inputs[randomized]
    assert ((rnd >= 0) & (rnd < vocab)).all() and not torch.isin(rnd, torch.tensor(special + [mask_id])).any()


def test_mlm_mask_is_deterministic_and_seeded() -> None:
    tokens, special = _mlm_batch()
    tokens = tokens[:4]
    a = mlm_mask(tokens, mask_id=4, vocab_size=1000, special_ids=special, generator=torch.Generator().manual_seed(7))
    b = mlm_mask(tokens, mask_id=4, vocab_size=1000, special_ids=special, generator=torch.Generator().manual_seed(7))
    c = mlm_mask(tokens, mask_id=4, vocab_size=1000, special_ids=special, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mlm_mask_rejects_bad_rate() -> None:
    with pytest.raises(ValueError, match="0.15"):
        mlm_mask(torch.zeros(2, 2, dtype=torch.long), mask_id=1, vocab_size=8, rate=0.0)


def test_mlm_loss_scores_only_masked_positions() -> None:
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(5, 40, (2, 16), generator=g)
    inputs, labels = mlm_mask(tokens, mask_id=4, vocab_size=40, rate=0.5, generator=g)
    logits = torch.randn(2, 16, 40, generator=g)
    assert mlm_loss(logits, labels).item() == pytest.approx(_by_hand(logits, labels), abs=1e-5)
    # changing logits at unselected positions does not change the loss
    other = logits.clone()
    other[labels == IGNORE_INDEX] += 10 * torch.randn(int((labels == IGNORE_INDEX).sum()), 40, generator=g)
    assert mlm_loss(other, labels).item() == pytest.approx(mlm_loss(logits, labels).item(), abs=1e-6)


def test_perplexity() -> None:
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert math.isfinite(perplexity(1e6))


def test_docstring_examples() -> None:
    assert doctest.testmod(losses).failed == 0
