"""Optional compiled decoding step: ``generate(..., compile=True)``.

The flat step of :mod:`training.core.serve.flat`, written for ``torch.compile`` with a static
cache shape: attention runs over the whole (bucketed) cache length with the not-yet-written slots
masked inside the graph, the slot is a tensor, so one compiled graph serves every step of every
generation with the same batch size and cache bucket. Compiled with inductor's freezing (the
weights become constants, prepacked for its GEMM templates), max-autotune (its C++ GEMM
micro-kernels compete with the library ones per shape) and the C++ wrapper (no Python between the
kernels). Compiling takes tens of seconds per (batch, bucket) and needs a C++ compiler; the graphs
are kept on the model's decoding copy, so a long-lived process (the studio's server) pays once.
Measured warm on the 2-CPU development machine (small preset, 1 thread): batch 1 2.9 vs 3.5-4.0 ms
per step eager, batch 8 6.4 vs 8.2 ms (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.core.serve.flat import DecodeWeights, FlatCache

__all__ = ["compiled_step", "cache_bucket", "COMPILE_OPTIONS"]

COMPILE_OPTIONS = {"freezing": True, "max_autotune": True, "cpp_wrapper": True, "autotune_num_choices_displayed": 0}


def cache_bucket(total: int, max_seq_len: int) -> int:
    """The static cache length a compiled step uses for ``total`` positions: the next power of two
    from 64 on (few distinct shapes, so few compilations), at most ``max_seq_len``."""
    bucket = 64
    while bucket < total:
        bucket *= 2
    return max(total, min(bucket, max_seq_len))


class _Step(nn.Module):
    """One decoding step over a static cache; the decoding copy's matrices as (frozen) parameters
    (the same storage, not copies)."""

    def __init__(self, weights: DecodeWeights) -> None:
        super().__init__()
        self.cfg = weights.cfg
        # contiguous (out, in) matrices under F.linear: the form inductor's freezing prepacks for its
        # GEMM templates (transposed views of the (in, out) copy are not prepacked: measured slower)
        self.mats = nn.ParameterList(nn.Parameter(t.t().contiguous(), requires_grad=False)
                                     for layer in weights.layers for t in layer)
        self.output = nn.Parameter(weights.output.t().contiguous(), requires_grad=False)
        self.embed = nn.Parameter(weights.embed, requires_grad=False)

    def forward(self, tokens: Tensor, slot: Tensor, rot: Tensor, bias: Tensor, k: list[Tensor],
                v: list[Tensor]) -> Tensor:
        """Logits (B, V) of ``tokens`` (B,) written at ``slot`` (1,); ``rot`` (B, 1, D/2, 2): the
        cosines and sines of their rotary angles; ``bias`` (B, Hk, 1, L): the padding bias."""
        cfg = self.cfg
        H, Hk, D, Fh = cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.hidden_dim
        G, eps = H // Hk, cfg.norm_eps
        B, L = tokens.shape[0], k[0].shape[2]
        future = torch.arange(L, device=tokens.device) > slot  # (L,) slots not written yet
        bias = bias.view(B, Hk, 1, L).masked_fill(future, float("-inf"))
        h = self.embed[tokens]  # (B, C)
        cos, sin = rot.unbind(-1)  # (B, 1, D/2) each (real arithmetic: inductor fuses it, complex it does not)

        def normed(x: Tensor) -> Tensor:
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

        for i in range(cfg.n_layers):
            wqkv, wo, w13, w2 = self.mats[4 * i:4 * i + 4]
            qkv = F.linear(normed(h), wqkv)  # (B, (H + 2Hk) D)
            pairs = qkv.float().view(B, H + 2 * Hk, D // 2, 2)[:, :H + Hk]  # interleaved (re, im) pairs
            a, b = pairs[..., 0], pairs[..., 1]
            qk = torch.stack((a * cos - b * sin, a * sin + b * cos), -1).reshape(B, H + Hk, D).to(qkv.dtype)
            k[i].index_copy_(2, slot, qk[:, H:, None])
            v[i].index_copy_(2, slot, qkv.view(B, H + 2 * Hk, D)[:, H + Hk:, None])
            q = qk[:, :H].reshape(B, Hk, G, D)
            s = torch.matmul(q, k[i].transpose(-1, -2)) * D ** -0.5 + bias  # (B, Hk, G, L)
            y = torch.matmul(s.softmax(-1), v[i])  # (B, Hk, G, D)
            h = h + F.linear(y.reshape(B, H * D), wo)
            gu = F.linear(normed(h), w13)
            h = h + F.linear(F.silu(gu[:, :Fh]) * gu[:, Fh:], w2)
        return F.linear(normed(h), self.output)  # (B, V)


def compiled_step(weights: DecodeWeights, batch: int, length: int, device: torch.device) -> Any:
    """The compiled step for ``batch`` rows and a cache of ``length`` slots, kept on ``weights``
    (rebuilt with them when the model's parameters change). The first call for a shape compiles it
    and runs it once on a scratch cache, so that compilation, or its failure (raised as is, nothing
    kept), happens before any token is generated."""
    key = ("compiled", batch, length)
    step = weights.derived.get(key)
    if step is None:
        module = weights.derived.get("step module")
        if module is None:  # one module (one copy of the matrices) for all shapes
            module = weights.derived["step module"] = _Step(weights).eval()
        step = _Compiled(torch.compile(module, fullgraph=True, dynamic=False))
        scratch = FlatCache(weights, batch, length, device)
        rot = torch.view_as_real(weights.rot[:1, None].expand(batch, 1, -1).contiguous())
        step(torch.zeros(batch, dtype=torch.long, device=device), torch.zeros(1, dtype=torch.long, device=device),
             rot, scratch.bias, scratch.k, scratch.v)
        weights.derived[key] = step
    return step


class _Compiled:
    """A compiled step that compiles (and recompiles, should a guard ever fail) under
    :data:`COMPILE_OPTIONS`, set around each call. (Passed as ``torch.compile(options=...)``
    instead, freezing did not prepack the weights for the GEMM templates here, and the step was
    slower than eager.)"""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(COMPILE_OPTIONS):
            return self.fn(*args)
