"""AdamW step time on CPU: for-loop vs foreach vs fused, on the parameters of the "small" model.

Prints each implementation's time per step and its ratio to the for-loop reference measured in
the same run, with the same threads. Usage: ``python benchmarks/optim_step.py [--preset small]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from training.core.config import ModelConfig, OptimConfig
from training.core.model import Transformer
from training.core.optim import param_groups


def time_steps(model: torch.nn.Module, cfg: OptimConfig, steps: int, **impl: bool) -> float:
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **impl)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()  # allocate state
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(args.preset))
    n = sum(p.numel() for p in model.parameters())
    cfg = OptimConfig()
    impls = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    best = {k: float("inf") for k in impls}
    for _ in range(args.repeats):  # interleave to spread machine noise over all implementations
        for name, kw in impls.items():
            best[name] = min(best[name], time_steps(model, cfg, args.steps, **kw))
    print(f"AdamW step, preset={args.preset} ({n / 1e6:.1f}M params), threads={torch.get_num_threads()}")
    for name, t in best.items():
        print(f"  {name:9s} {t * 1e3:8.1f} ms/step  speedup vs for-loop x{best['for-loop'] / t:.2f}")


if __name__ == "__main__":
    main()
