"""The fast path of generation: prefill and single-token decoding steps as flat sequences of
tensor calls on a decoding copy of the weights, with a static cache written in place.

At a few tokens per step a small model's step costs little arithmetic next to the fixed cost of
each tensor operation (Python and the dispatcher: 2-15 us per call here), so this path is built
to call few operations per layer:

- the weights are transposed to ``(in, out)`` and concatenated (q/k/v in one matrix, gate/up in
  another), and every RMSNorm weight is folded into the rows of the matrix that follows it, so a
  norm is one ``1/rms`` per row (three small calls) instead of a norm kernel;
- the query/key columns of each head are reordered from the "rotate half" layout to interleaved
  pairs, so that rotary embedding is one complex multiplication for all q and k heads (dot products
  between queries and keys do not change when both are permuted the same way);
- attention of one new token is ``baddbmm`` (scores, scale and padding bias in one call), softmax
  and ``bmm`` over the cache's valid length, with the query heads of a key/value head as the rows
  of one matrix (no key/value repetition), and a padding bias computed once per generation;
- the prefill runs the prompts' real tokens only (left padding is skipped in the matmuls) and
  computes the logits of the last position only;
- batches of several rows use oneDNN matmuls on weights prepacked for that batch size when this
  torch has them (measured ~20% faster for 8 rows here than ``torch.mm``; slower for 1 row).

The maths is the model's (``tests/core/test_generate.py`` checks logits against the model's own
forward pass, and generations against transformers'); only float rounding differs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from training.core.model import Transformer

__all__ = ["DecodeWeights", "FlatCache", "prefill", "decode_step", "flat_decoding_applies", "projection_weights",
           "PACKED_MIN_BATCH"]

PACKED_MIN_BATCH = 4  # from this many rows on, oneDNN with prepacked weights (see module docstring)


def projection_weights(model: Transformer, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Layer ``i``'s ``(wq, wk, wv, wo, w1, w3, w2)`` as ``(out, in)`` matrices. Accepts the model's
    separate q/k/v projections or one fused ``wqkv`` projection (rows q, then k, then v)."""
    layer = model.layers[i]
    a, f = layer.attention, layer.feed_forward
    if hasattr(a, "wqkv"):
        cfg = model.cfg
        q, k = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        wq, wk, wv = a.wqkv.weight.split((q, k, k))
    else:
        wq, wk, wv = a.wq.weight, a.wk.weight, a.wv.weight
    if hasattr(f, "w13"):
        w1, w3 = f.w13.weight.chunk(2)
    else:
        w1, w3 = f.w1.weight, f.w3.weight
    return wq, wk, wv, a.wo.weight, w1, w3, f.w2.weight


def _projections(model: Transformer) -> list[torch.nn.Module]:
    out = []
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        for name in ("wq", "wk", "wv", "wqkv", "wo"):
            if hasattr(a, name):
                out.append(getattr(a, name))
        for name in ("w1", "w3", "w13", "w2"):
            if hasattr(f, name):
                out.append(getattr(f, name))
    return out


def flat_decoding_applies(model: Transformer) -> bool:
    """The flat path reads ``.weight`` of plain ``nn.Linear`` layers and of LoRA layers (whose
    ``weight`` is the merged ``W + s B A``); layers with any other forward or with hooks, and
    sharded (DTensor) parameters, go through the model's forward instead."""
    from training.core.lora import LoRALinear

    for lin in _projections(model):
        plain = (isinstance(lin, torch.nn.Linear) and type(lin).forward is torch.nn.Linear.forward
                 and lin.bias is None) or type(lin) is LoRALinear
        if not plain or lin._forward_hooks or lin._forward_pre_hooks:
            return False
    for norm in [model.norm] + [m for layer in model.layers for m in (layer.attention_norm, layer.ffn_norm)]:
        if norm._forward_hooks or norm._forward_pre_hooks:
            return False
    return (model.cfg.head_dim % 2 == 0 and all(type(p.data) is torch.Tensor for p in model.parameters()))


def _packing_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


class DecodeWeights:
    """The weights laid out for the flat path (see the module docstring), built once per model and
    kept until a parameter changes (``key``). About one extra copy of the block and output
    weights; batches of :data:`PACKED_MIN_BATCH` rows or more add a oneDNN-packed copy, built on
    first use."""

    def __init__(self, model: Transformer, key: tuple[Any, ...]) -> None:
        cfg = model.cfg
        H, Hk, D = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        half = D // 2
        perm = torch.stack((torch.arange(half), torch.arange(half) + half), 1).reshape(-1)  # 0, D/2, 1, D/2+1, ...

        def interleave(w: Tensor, heads: int) -> Tensor:  # (heads*D, C) rows -> interleaved pairs per head
            return w.view(heads, D, -1)[:, perm.to(w.device)].reshape(heads * D, -1)

        self.key = key
        self.cfg = cfg
        self.layers: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        with torch.no_grad():
            for i, layer in enumerate(model.layers):
                wq, wk, wv, wo, w1, w3, w2 = projection_weights(model, i)
                wqkv = torch.cat((interleave(wq, H), interleave(wk, Hk), wv)) * layer.attention_norm.weight
                w13 = torch.cat((w1, w3)) * layer.ffn_norm.weight
                self.layers.append((wqkv.t().contiguous(),  # (C, (H + 2Hk) D), attention norm folded in
                                    wo.t().contiguous(),  # (H D, C)
                                    w13.t().contiguous(),  # (C, 2F), ffn norm folded in
                                    w2.t().contiguous()))  # (F, C)
            self.output = (model.output.weight * model.norm.weight).t().contiguous()  # (C, V), final norm folded in
            self.embed = model.tok_embeddings.weight.detach()  # (V, C), not copied
            self.rot = torch.complex(model.rope_cos.float(), model.rope_sin.float())  # (S, D/2): e^(i angle)
        self.dtype = self.output.dtype
        self.derived: dict[Any, Any] = {}  # built from these weights on first use: packed copy, compiled steps

    def nbytes(self) -> int:
        """Bytes held by this copy (the unpacked matrices; a packed copy adds about as much)."""
        mats = [t for layer in self.layers for t in layer] + [self.output]
        return sum(t.numel() * t.element_size() for t in mats)

    def linears(self, batch: int) -> tuple[Any, list[tuple[Any, Any, Any, Any]], Any]:
        """``(linear, layers, output)`` for a step of ``batch`` rows: ``linear(x, w, residual=None)``
        computes ``residual + x @ w`` with whichever matrix layout is faster for that batch."""
        if (batch < PACKED_MIN_BATCH or self.dtype != torch.float32 or self.output.device.type != "cpu"
                or not _packing_available()):
            return _mm, self.layers, self.output
        packed = self.derived.get("onednn")
        if packed is None:
            try:
                with torch.no_grad():
                    pack = torch.ops.mkldnn._reorder_linear_weight
                    packed = ([tuple(pack(w.t().contiguous(), 8) for w in layer) for layer in self.layers],
                              pack(self.output.t().contiguous(), 8))
            except RuntimeError:  # this build cannot pack: stay on torch.mm
                packed = False
            self.derived["onednn"] = packed
        if packed is False:
            return _mm, self.layers, self.output
        return _onednn, packed[0], packed[1]


def _mm(x: Tensor, w: Tensor, residual: Tensor | None = None) -> Tensor:
    return torch.mm(x, w) if residual is None else torch.addmm(residual, x, w)


def _onednn(x: Tensor, w: Tensor, residual: Tensor | None = None) -> Tensor:
    if residual is None:
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, None, "add")


class FlatCache:
    """Static key/value cache of the flat path: ``k[i]``/``v[i]`` ``(B, n_kv_heads, max_len, head_dim)``
    (keys in the interleaved head layout of :class:`DecodeWeights`), written in place, and the
    attention bias ``(B * n_kv_heads, 1, max_len)``: ``-inf`` on left padding, 0 elsewhere. Prompts
    are left-aligned to the longest one, so every row writes its next token at the same slot."""

    def __init__(self, weights: DecodeWeights, batch: int, max_len: int, device: torch.device) -> None:
        cfg = weights.cfg
        Hk, D = cfg.kv_heads, cfg.head_dim
        shape = (batch, Hk, max_len, D)
        self.k = [torch.zeros(shape, dtype=weights.dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=weights.dtype, device=device) for _ in range(cfg.n_layers)]
        self.k3 = [t.view(batch * Hk, max_len, D) for t in self.k]  # the same memory, one matrix per (row, kv head)
        self.v3 = [t.view(batch * Hk, max_len, D) for t in self.v]
        self.bias = torch.zeros(batch, Hk, 1, max_len, dtype=weights.dtype, device=device)
        self.batch, self.max_len = batch, max_len


def _inv_rms(h: Tensor, eps: Tensor, dim: int) -> Tensor:
    """``1 / sqrt(mean(h^2) + eps)`` per row, ``(N, 1)``, in three small calls."""
    n = torch.linalg.vector_norm(h, dim=-1, keepdim=True, dtype=torch.float32)
    return torch.addcmul(eps, n, n, value=1.0 / dim).rsqrt_()


def _normed(h: Tensor, eps: Tensor, dim: int) -> Tensor:
    """RMSNorm of ``h`` without its weight (folded into the next matrix), in ``h``'s dtype."""
    r = _inv_rms(h, eps, dim)
    return torch.mul(h, r) if h.dtype == torch.float32 else (h.float() * r).to(h.dtype)


def _rotate(qkv: Tensor, rot: Tensor, heads: int, D: int) -> Tensor:
    """The first ``heads`` heads of ``qkv`` (N, (heads + ...) * D), interleaved layout, rotated by
    ``rot`` (N, 1, D/2) complex: (N, heads, D) in fp32."""
    n = qkv.shape[0]
    x = qkv.view(n, -1, D // 2, 2)
    if x.dtype != torch.float32:
        x = x.float()
    return torch.view_as_real(torch.view_as_complex(x).narrow(1, 0, heads) * rot).view(n, heads, D)


def prefill(weights: DecodeWeights, prompts: list[list[int]], cache: FlatCache, start: int = 0,
            every_position: bool = False) -> Tensor:
    """Run the prompts (of any lengths, real tokens only) through the model, fill the cache (left
    padded to the longest prompt) and set its padding bias; returns the logits of each prompt's
    last token ``(B, V)``, or with ``every_position`` of every token ``(N, V)`` (rows in prompt order).

    ``start > 0`` extends a cache that holds ``start`` tokens per row (prompts of one length, no
    padding; positions ``start ..``): the verification pass of prompt-lookup decoding."""
    cfg = weights.cfg
    H, Hk, D, C, Fh = cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.dim, cfg.hidden_dim
    device = cache.bias.device
    B = len(prompts)
    lengths = [len(p) for p in prompts]
    T = max(lengths)
    padded = min(lengths) != T
    if padded and start:
        raise ValueError("extending a cache needs new tokens of one length per row")
    end = start + T
    tokens = torch.tensor([t for p in prompts for t in p], dtype=torch.long, device=device)  # (N,) real tokens
    N = tokens.shape[0]
    positions = torch.cat([torch.arange(start, start + n, device=device) for n in lengths])  # (N,) rotary pos.
    rot = weights.rot.index_select(0, positions)[:, None]  # (N, 1, D/2)
    eps = torch.full((1,), cfg.norm_eps, device=device)
    lengths_t = torch.tensor(lengths, device=device)
    if padded:  # where each real token sits in the (B, T) left-padded layout of the cache
        rows = torch.repeat_interleave(torch.arange(B, device=device), lengths_t)  # (N,)
        slots = positions + (T - lengths_t).repeat_interleave(lengths_t)  # (N,)
        flat = rows * T + slots  # (N,) index into B*T
        valid = torch.arange(T, device=device)[None, :] >= (T - lengths_t)[:, None]  # (B, T)
        cache.bias[..., :T].masked_fill_(~valid[:, None, None, :], float("-inf"))
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        mask = (valid[:, None, None, :] & causal) | torch.eye(T, dtype=torch.bool, device=device)  # (B, 1, T, T)
    elif start:  # new token j sees the cache and the new tokens up to itself
        mask = torch.arange(end, device=device)[None, :] <= torch.arange(start, end, device=device)[:, None]
    h = weights.embed.index_select(0, tokens)  # (N, C)
    for i, (wqkv, wo, w13, w2) in enumerate(weights.layers):
        qkv = torch.mm(_normed(h, eps, C), wqkv)  # (N, (H + 2Hk) D)
        qk = _rotate(qkv, rot, H + Hk, D)  # (N, H + Hk, D)
        v = qkv.view(N, H + 2 * Hk, D).narrow(1, H + Hk, Hk)  # (N, Hk, D)
        q, k = qk.narrow(1, 0, H), qk.narrow(1, H, Hk)
        if padded:
            cache.k[i][rows, :, slots] = k.to(cache.k[i].dtype)
            cache.v[i][rows, :, slots] = v
            qp = torch.zeros(B * T, H, D, dtype=wqkv.dtype, device=device).index_copy_(0, flat, q.to(wqkv.dtype))
            qp = qp.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        else:
            cache.k[i][:, :, start:end] = k.view(B, T, Hk, D).transpose(1, 2)
            cache.v[i][:, :, start:end] = v.view(B, T, Hk, D).transpose(1, 2)
            qp = q.to(wqkv.dtype).view(B, T, H, D).transpose(1, 2)
        y = F.scaled_dot_product_attention(qp, cache.k[i][:, :, :end], cache.v[i][:, :, :end],
                                           attn_mask=mask if padded or start else None,
                                           is_causal=not (padded or start), enable_gqa=H != Hk)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B * T, H * D)
        if padded:
            y = y.index_select(0, flat)  # (N, H D)
        h = torch.addmm(h, y, wo)
        gu = torch.mm(_normed(h, eps, C), w13)  # (N, 2F)
        h = torch.addmm(h, F.silu(gu.narrow(1, 0, Fh)).mul_(gu.narrow(1, Fh, Fh)), w2)
    if not every_position:
        h = h.index_select(0, torch.cumsum(lengths_t, 0) - 1)  # (B, C): each prompt's last token
    return torch.mm(_normed(h, eps, C), weights.output)  # (B or N, V)


def step_rotations(weights: DecodeWeights, lengths: list[int], steps: int, device: torch.device) -> Tensor:
    """Rotary factors of the tokens decoded after prompts of ``lengths``: ``(steps, B, 1, D/2)``
    (row ``b``'s ``s``-th new token sits at position ``lengths[b] + s``)."""
    pos = torch.tensor(lengths, device=device)[None, :] + torch.arange(steps, device=device)[:, None]  # (S, B)
    return weights.rot[pos][:, :, None]


def decode_step(weights: DecodeWeights, tokens: Tensor, cache: FlatCache, slot: int, rot: Tensor,
                linears: tuple[Any, Any, Any] | None = None) -> Tensor:
    """One decoding step: logits ``(B, V)`` of the tokens ``(B,)`` written at cache ``slot``, with
    rotary factors ``rot`` ``(B, 1, D/2)`` (one row of :func:`step_rotations`)."""
    cfg = weights.cfg
    H, Hk, D, C, Fh = cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.dim, cfg.hidden_dim
    G = H // Hk
    B = tokens.shape[0]
    end = slot + 1
    lin, layers, output = linears if linears is not None else weights.linears(B)
    eps = torch.full((1,), cfg.norm_eps, device=tokens.device)
    bias = cache.bias.view(B * Hk, 1, -1).narrow(2, 0, end)  # (B Hk, 1, end)
    scale = D ** -0.5
    h = weights.embed.index_select(0, tokens)  # (B, C)
    for i, (wqkv, wo, w13, w2) in enumerate(layers):
        qkv = lin(_normed(h, eps, C), wqkv)  # (B, (H + 2Hk) D)
        qk = _rotate(qkv, rot, H + Hk, D)  # (B, H + Hk, D)
        cache.k[i].select(2, slot).copy_(qk.narrow(1, H, Hk))
        cache.v[i].select(2, slot).copy_(qkv.view(B, H + 2 * Hk, D).narrow(1, H + Hk, Hk))
        q = qk.narrow(1, 0, H).to(h.dtype).reshape(B * Hk, G, D)  # a KV head's G query heads as G rows
        s = torch.baddbmm(bias, q, cache.k3[i].narrow(1, 0, end).transpose(1, 2), alpha=scale)  # (B Hk, G, end)
        y = torch.bmm(torch.softmax(s, -1), cache.v3[i].narrow(1, 0, end))  # (B Hk, G, D)
        h = lin(y.view(B, H * D), wo, h)
        gu = lin(_normed(h, eps, C), w13)  # (B, 2F)
        h = lin(F.silu(gu.narrow(1, 0, Fh)).mul_(gu.narrow(1, Fh, Fh)), w2, h)
    return lin(_normed(h, eps, C), output)  # (B, V)
