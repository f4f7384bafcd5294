"""Optimizer construction and learning-rate schedules.

Weight decay applies only to matrices (``ndim >= 2``) that are not embeddings: norm weights,
biases and embedding tables (including an output head tied to them) are not decayed, as in
nanoGPT and Llama. The schedule is a pure function of the step (nanoGPT's ``get_lr``): linear
warmup, then a cosine from ``lr`` down to ``lr * min_lr_ratio`` at ``total_steps``.

>>> from training.core.config import OptimConfig
>>> cfg = OptimConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=10)
>>> [round(lr_at(s, cfg, total_steps=110), 6) for s in (0, 4, 10, 60, 110, 500)]
[9.1e-05, 0.000455, 0.001, 0.00055, 0.0001, 0.0001]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from training.core.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    Decayed: parameters with ``ndim >= 2`` that do not belong to an ``nn.Embedding``. Not
    decayed: everything else (norm weights, biases, embeddings and weights tied to them). Shared
    (tied) parameters appear once. Each group carries ``param_names`` for logging and tests.
    """
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    decay_names: list[str] = []
    no_decay_names: list[str] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():  # named_parameters already skips tied duplicates
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim >= 2 and id(p) not in embedding_ids:
            decay.append(p)
            decay_names.append(name)
        else:
            no_decay.append(p)
            no_decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "param_names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "param_names": no_decay_names},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with ``cfg``'s lr, betas, eps and weight decay.

    ``fused=None`` uses the fused kernel when every parameter is on CPU or CUDA (on CPU it is about
    5x faster than ``foreach``, see ``benchmarks/optim_step.py``) and ``foreach`` otherwise.
    """
    groups = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("the model has no trainable parameters; unfreeze some before building the optimizer")
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kwargs)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate at 0-based ``step``: linear warmup, cosine decay, then ``min_lr``.

    - ``step < warmup_steps``: ``lr * (step + 1) / (warmup_steps + 1)`` (never 0 at step 0);
    - ``warmup_steps <= step <= total_steps``: ``min_lr + 0.5 (1 + cos(pi r)) (lr - min_lr)`` with
      ``r = (step - warmup_steps) / (total_steps - warmup_steps)``;
    - ``step > total_steps``: ``min_lr``.

    >>> cfg = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=0)
    >>> [lr_at(s, cfg, total_steps=4) for s in range(5)]
    [1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0]
    """
    lr, min_lr, warmup = cfg.lr, cfg.lr * cfg.min_lr_ratio, cfg.warmup_steps
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= total_steps:
        return min_lr
    ratio = (step - warmup) / max(1, total_steps - warmup)  # in [0, 1)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (lr - min_lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` that sets every group's lr to ``lr_at(step)`` (call ``scheduler.step()`` after
    each optimizer step). Its ``state_dict`` holds the step count for exact resume."""
    return LambdaLR(optimizer, lambda step: lr_at(step, cfg, total_steps) / cfg.lr)
