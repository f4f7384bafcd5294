"""Optimizer groups, decoupled weight decay and the warmup + cosine schedule, checked by hand."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from torch import nn

from training.core import optim
from training.core.config import ConfigError, ModelConfig, OptimConfig
from training.core.optim import build_optimizer, build_scheduler, lr_at, param_groups


class Toy(nn.Module):
    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 8, bias=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 20, bias=False)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        if tie:
            self.head.weight = self.emb.weight


@pytest.mark.parametrize("tie", [False, True])
def test_param_groups_split(tie: bool) -> None:
    decay, no_decay = param_groups(Toy(tie), weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    if tie:  # the head is the embedding table: not decayed, listed once
        assert decay["param_names"] == ["proj.weight"]
    else:
        assert decay["param_names"] == ["proj.weight", "head.weight"]
    assert no_decay["param_names"] == ["emb.weight", "proj.bias", "norm.weight", "norm.bias"]
    assert len({id(p) for g in (decay, no_decay) for p in g["params"]}) == len(decay["params"]) + len(no_decay["params"])


def test_param_groups_on_transformer() -> None:
    model_mod = pytest.importorskip("training.core.model")
    for tie in (True, False):
        cfg = ModelConfig.preset("tiny", tie_embeddings=tie)
        model = model_mod.Transformer(cfg)
        decay, no_decay = param_groups(model, 0.1)
        per_layer = {"attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
                     "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight"}
        expected = {f"layers.{i}.{n}" for i in range(cfg.n_layers) for n in per_layer}
        if not tie:
            expected.add("output.weight")
        assert set(decay["param_names"]) == expected
        assert "tok_embeddings.weight" in no_decay["param_names"]
        assert all(n.endswith("norm.weight") or n == "tok_embeddings.weight" for n in no_decay["param_names"])
        n_opt = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
        assert n_opt == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("fused", [True, False])
def test_decoupled_weight_decay_by_hand(fused: bool) -> None:
    """With zero gradients Adam's update is 0, so one step only applies p <- p * (1 - lr * wd)."""
    torch.manual_seed(0)
    model = Toy(tie=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = OptimConfig(lr=0.01, weight_decay=0.5, warmup_steps=0)
    opt = build_optimizer(model, cfg, fused=fused)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        factor = 1 - 0.01 * 0.5 if n in ("proj.weight", "head.weight") else 1.0
        assert torch.allclose(p.detach(), before[n] * factor, atol=1e-7), n


def test_fused_and_foreach_agree() -> None:
    torch.manual_seed(0)
    a, b = Toy(tie=True), Toy(tie=True)
    b.load_state_dict(a.state_dict())
    cfg = OptimConfig(lr=1e-2, warmup_steps=0)
    oa, ob = build_optimizer(a, cfg, fused=True), build_optimizer(b, cfg, fused=False)
    assert oa.defaults["fused"] and ob.defaults["foreach"]
    x = torch.randint(0, 20, (4, 6))
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m.head(m.norm(m.proj(m.emb(x)))).square().mean().backward()
            o.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), n


def test_lr_schedule_values_by_hand() -> None:
    cfg = OptimConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=10)
    total = 110
    assert lr_at(0, cfg, total) == pytest.approx(1e-3 / 11)
    assert lr_at(9, cfg, total) == pytest.approx(1e-3 * 10 / 11)
    assert lr_at(10, cfg, total) == pytest.approx(1e-3)  # peak right after warmup
    assert lr_at(35, cfg, total) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert lr_at(60, cfg, total) == pytest.approx(5.5e-4)  # half way: mean of lr and min_lr
    assert lr_at(110, cfg, total) == pytest.approx(1e-4)
    assert lr_at(10_000, cfg, total) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg, total) for s in range(total + 1)]
    assert all(x < y for x, y in zip(lrs[:10], lrs[1:11]))  # warmup increases
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))  # then never increases


def test_schedule_edge_cases() -> None:
    const = OptimConfig(lr=2e-4, min_lr_ratio=1.0, warmup_steps=0)
    assert {lr_at(s, const, 50) for s in range(60)} == {2e-4}
    short = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=10)
    assert lr_at(5, short, total_steps=8) == pytest.approx(6 / 11)  # warmup longer than the run
    assert lr_at(10, short, total_steps=8) == 0.0


def test_scheduler_drives_optimizer_lr() -> None:
    model = Toy(tie=False)
    cfg = OptimConfig(lr=1e-3, warmup_steps=3)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=20)
    for step in range(25):
        assert all(g["lr"] == pytest.approx(lr_at(step, cfg, 20)) for g in opt.param_groups), step
        opt.step()
        sched.step()
    # resume: a fresh scheduler loaded from the state continues at the same step
    opt2 = build_optimizer(model, cfg)
    sched2 = build_scheduler(opt2, cfg, total_steps=20)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_at(25, cfg, 20))


def test_optim_config_validation() -> None:
    with pytest.raises(ConfigError) as e:
        OptimConfig(min_lr_ratio=1.5)
    assert e.value.field == "min_lr_ratio"
    with pytest.raises(ConfigError, match="betas"):
        OptimConfig(betas=(0.9, 1.0))
    assert OptimConfig.from_dict({"betas": [0.8, 0.9]}).betas == (0.8, 0.9)


def test_no_trainable_parameters_is_an_error() -> None:
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig())


def test_docstring_examples() -> None:
    assert doctest.testmod(optim).failed == 0
