"""A Llama-family transformer in one readable file (nanoGPT / gpt-fast style).

Decoder mode (``cfg.mode == "decoder"``): causal self-attention and a next-token head, the same
maths as Hugging Face ``LlamaForCausalLM`` (RMSNorm, rotary embeddings in the "rotate half"
layout, grouped-query attention, SwiGLU MLP), so weights move between the two without any
permutation (see :mod:`training.core.interop.hf`).

Encoder mode (``cfg.mode == "encoder"``): the same blocks with bidirectional attention that
respects a padding mask, and a masked-LM head (dense -> GELU -> RMSNorm -> vocabulary, with an
output bias).

Generation uses a static, preallocated :class:`KVCache`: ``forward(tokens, kv_cache=cache,
start_pos=p)`` writes the keys/values of ``tokens`` at positions ``p .. p+T-1`` and attends to
everything written before. Left-padded batches pass ``attention_mask`` on the prefill; the cache
remembers which slots are padding and gives every row its own rotary positions, so a padded row
computes what it would compute alone.

The model has no I/O. Distributed wrappers (FSDP, activation checkpointing, compile) are applied
from outside (``training.core.distributed``). It can be built on the meta device::

    >>> from training.core.config import ModelConfig
    >>> cfg = ModelConfig.preset("tiny")
    >>> with torch.device("meta"):
    ...     model = Transformer(cfg)
    >>> model = model.to_empty(device="cpu"); model.init_weights(seed=0)
    >>> model(torch.zeros(1, 5, dtype=torch.long)).shape
    torch.Size([1, 5, 1024])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.core.config import ModelConfig

__all__ = ["Transformer", "TransformerBlock", "Attention", "FeedForward", "RMSNorm", "MLMHead", "KVCache",
           "rope_tables", "apply_rope", "rope_rotate", "linear_cross_entropy", "IGNORE_INDEX"]


# --------------------------------------------------------------------------------------------
# Pure functions: rotary embeddings
# --------------------------------------------------------------------------------------------

def rope_tables(head_dim: int, max_seq_len: int, theta: float, device: torch.device | str | None = None
                ) -> tuple[Tensor, Tensor]:
    """Cosine and sine tables of rotary embeddings, each ``(max_seq_len, head_dim // 2)`` in fp32.

    Same numbers as Hugging Face Llama: ``inv_freq = 1 / theta ** (2i / head_dim)`` and angle
    ``pos * inv_freq``.

    >>> cos, sin = rope_tables(4, 3, 10000.0)
    >>> cos.shape, float(cos[0, 0]), round(float(sin[1, 0]), 4)
    (torch.Size([3, 2]), 1.0, 0.8415)
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    pos = torch.arange(max_seq_len, dtype=torch.int64, device=device).float()
    angles = torch.outer(pos, inv_freq)  # (S, D/2)
    return angles.cos(), angles.sin()


def rope_rotate(x: Tensor, cos: Tensor, sin: Tensor, sign: float = 1.0, out: Tensor | None = None) -> Tensor:
    """``x`` (..., D) rotated by +angle (``sign=1``) or -angle (``sign=-1``) in the "rotate half"
    layout, written straight into one output tensor (no autograd; see :func:`apply_rope`). ``out``:
    where to write (x's shape, any strides; e.g. a permuted view of the layout the next op wants)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-sign)  # x1 cos - x2 sin
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin, value=sign)  # x2 cos + x1 sin
    return out


class _Rope(torch.autograd.Function):
    """Rotary embedding with a hand-written backward (the transpose of a rotation is the rotation by
    the opposite angle). Autograd through slices and ``cat`` costs several full-size zero-filled
    buffers per call; this costs one, and is 3-8x faster on CPU."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor, sin: Tensor, order: tuple[int, ...] | None = None
                ) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        return rope_rotate(x, cos, sin, 1.0, out=_empty_in_order(x, order))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        return rope_rotate(grad, cos, sin, -1.0), None, None, None


def _empty_in_order(x: Tensor, order: tuple[int, ...] | None) -> Tensor | None:
    """An uninitialised tensor of ``x``'s shape whose memory is laid out in dimension order ``order``
    (``x.permute(order)`` of it is contiguous); None for plain contiguous."""
    if order is None:
        return None
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return torch.empty([x.shape[d] for d in order], dtype=x.dtype, device=x.device).permute(inverse)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, order: tuple[int, ...] | None = None) -> Tensor:
    """Rotate ``x`` (B, T, H, D) by the angles in ``cos``/``sin`` (T, 1, D/2) or (B, T, 1, D/2).

    "Rotate half" layout (the first half of the head pairs with the second half): the formula
    ``x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)`` of Hugging Face Llama (equal up to
    float rounding: the kernels may fuse a multiply-add). ``order``: the memory layout of the result
    as a dimension order (``out.permute(order)`` is contiguous), so that attention gets its
    (B, H, T, D)-style operand without another copy; None: contiguous like ``x``. The extra
    dimensions of ``x`` (any number between batch/time and the head dimension) are fine.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if torch.compiler.is_compiling():  # the compiler fuses the plain formula into one kernel
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Rope.apply(x, cos, sin, order)
    return rope_rotate(x, cos, sin, 1.0, out=_empty_in_order(x, order))


# --------------------------------------------------------------------------------------------
# Fused output projection + cross-entropy
# --------------------------------------------------------------------------------------------

IGNORE_INDEX = -100


class _LinearCrossEntropy(torch.autograd.Function):
    """``sum(cross_entropy(h @ W.T + b, targets))`` computed chunk by chunk, never holding the full
    (N, V) logits. The gradients are computed in the forward pass, chunk by chunk, while each
    chunk's logits are hot in cache (softmax - one-hot, then two matmuls), and only scaled in
    backward. Math in fp32 whatever the dtype of ``h``."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                chunk: int) -> Tensor:  # type: ignore[override]
        need = ctx.needs_input_grad
        grad_h = torch.empty_like(h) if need[0] else None  # (N, C)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need[1] else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if bias is not None and need[2] \
            else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start:start + chunk], targets[start:start + chunk]  # (c, C), (c,)
            logits = (F.linear(hc, weight, bias)).float()  # (c, V)
            picked = logits.gather(1, tc[:, None])  # (c, 1) logits of the targets
            top = logits.amax(-1, keepdim=True)  # (c, 1)
            probs = logits.sub_(top).exp_()  # in place: unnormalised softmax, 4 passes in all
            norm = probs.sum(-1, keepdim=True)  # with logsumexp + softmax it would be 7
            total += (norm.log() + top - picked).sum()  # log-sum-exp - target logit
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            probs.div_(norm)  # softmax
            probs.scatter_add_(1, tc[:, None], torch.full_like(picked, -1.0))  # - one-hot
            g = probs.to(h.dtype)  # d(sum loss)/d(logits), (c, V)
            if grad_h is not None:
                torch.mm(g, weight, out=grad_h[start:start + chunk])
            if grad_w is not None:
                grad_w.addmm_(g.t().to(torch.float32) if g.dtype != torch.float32 else g.t(), hc.float())
            if grad_b is not None:
                grad_b += probs.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = None if bool(grad == 1.0) else grad  # the usual case (loss.backward()) costs nothing
        out = []
        for t, dtype in ((grad_h, None), (grad_w, ctx.dtypes[0]), (grad_b, ctx.dtypes[1])):
            if t is not None:
                t = t if scale is None else t * scale.to(t.dtype)
                t = t if dtype is None else t.to(dtype)
            out.append(t)
        return out[0], out[1], out[2], None, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None, *,
                         ignore_index: int = IGNORE_INDEX, chunk_size: int | None = None) -> Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``targets``, fused and chunked.

    Equals ``lm_loss(F.linear(hidden, weight, bias), targets)`` (fp32 math; 0 when every target is
    ignored) without materializing the (N, V) logits, and scores only the non-ignored rows (a
    masked-LM batch projects 15% of its positions onto the vocabulary, not all of them).
    ``hidden`` (..., C), ``targets`` (...).

    >>> h, w, t = torch.randn(6, 8), torch.randn(11, 8), torch.tensor([1, 2, 3, -100, 5, 6])
    >>> ref = F.cross_entropy(h @ w.T, t)
    >>> bool(torch.allclose(linear_cross_entropy(h, w, t), ref, atol=1e-5))
    True
    """
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, C)
    t = targets.reshape(-1)  # (N,)
    keep = t != ignore_index
    count = keep.sum()
    if int(count) != t.numel():  # score the kept rows only
        index = keep.nonzero().squeeze(1)
        h, t = h.index_select(0, index), t.index_select(0, index)
    if chunk_size is None:  # about 2M logits (8 MB) per chunk: large matmuls, cache-sized buffers
        chunk_size = max(128, (1 << 21) // weight.shape[0])
    device = h.device.type
    if torch.is_autocast_enabled(device):  # run the matmuls in the autocast dtype, explicitly
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device_type=device, enabled=False):
            total = _LinearCrossEntropy.apply(h.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                                              t, chunk_size)
    else:
        total = _LinearCrossEntropy.apply(h, weight, bias, t, chunk_size)
    return total / count.clamp(min=1)


# --------------------------------------------------------------------------------------------
# Causal attention in query blocks (CPU training on short sequences)
# --------------------------------------------------------------------------------------------

class _BlockCausalAttention(torch.autograd.Function):
    """Causal softmax attention computed ``block`` query positions at a time with batched matmuls,
    keeping the (causal part of the) probabilities for the backward pass.

    ``q`` (N, T*G, D) holds the G query heads that share one key/value head, rows ordered
    (position, head): a block of positions is one contiguous row range, and one matmul serves the
    whole group without repeating keys/values. ``k``, ``v`` (N, T, D). Block ``i`` multiplies by the
    keys ``0 .. end_i`` only, so the masked upper triangle costs little; the backward pass
    reuses the stored probabilities instead of recomputing them (what a flash kernel does to save
    memory). fwd + bwd on one CPU thread, 2048 tokens of 6 heads (2 key/value heads) of 64, against
    the flash kernel of ``scaled_dot_product_attention``: T=64 14.5 vs 15.9 ms, T=256 27 vs 43 ms,
    T=512 46 vs 86 ms, T=1024 81 vs 127 ms. Costs ``N * G * T * (T + block) / 2`` floats of saved
    probabilities (at T=1024 about as much as the MLP's activations), hence the sequence limit in
    :func:`_use_block_attention`.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, batch: int, group: int,  # type: ignore[override]
                block: int) -> Tensor:
        N, TG, D = q.shape
        B, Hk, G, T = batch, N // batch, group, TG // group
        scale = 1.0 / math.sqrt(D)
        out = torch.empty(B, T, Hk, G, D, dtype=q.dtype, device=q.device)  # the layout the output projection reads
        probs = []
        for r0 in range(0, T, block):
            r1 = min(T, r0 + block)
            rows = slice(r0 * G, r1 * G)
            s = torch.baddbmm(torch.empty(N, (r1 - r0) * G, r1, dtype=q.dtype, device=q.device), q[:, rows],
                              k[:, :r1].transpose(1, 2), beta=0.0, alpha=scale)  # (N, b*G, r1) scores
            causal = torch.ones(r1 - r0, r1 - r0, dtype=torch.bool, device=q.device).triu_(1)  # future keys
            s.view(N, r1 - r0, G, r1)[..., r0:r1].masked_fill_(causal[:, None, :], float("-inf"))
            p = torch.softmax(s, dim=-1)
            y = torch.bmm(p, v[:, :r1])  # (N, b*G, D); contiguous results keep bmm one batched call
            out[:, r0:r1].copy_(y.view(B, Hk, r1 - r0, G, D).transpose(1, 2))
            probs.append(p)
        ctx.save_for_backward(q, k, v, out, *probs)
        ctx.shape, ctx.block, ctx.scale = (B, Hk, T, G, D), block, scale
        return out.view(B, T, Hk * G * D)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        q, k, v, out, *probs = ctx.saved_tensors
        (B, Hk, T, G, D), block, scale = ctx.shape, ctx.block, ctx.scale
        N = B * Hk
        grad = grad.view(B, T, Hk, G, D)
        dot = torch.linalg.vecdot(grad, out).transpose(1, 2).reshape(N, T * G)  # sum_j p_ij dp_ij = dO_i . O_i
        grad = grad.transpose(1, 2).reshape(N, T * G, D)  # rows (position, head), like q
        dq, dk, dv = [], torch.zeros_like(k), torch.zeros_like(v)
        for i, r0 in enumerate(range(0, T, block)):
            r1 = min(T, r0 + block)
            rows = slice(r0 * G, r1 * G)
            p, g = probs[i], grad[:, rows]  # (N, b*G, r1), (N, b*G, D)
            dv[:, :r1] += torch.bmm(p.transpose(1, 2), g)
            ds = torch.bmm(g, v[:, :r1].transpose(1, 2)).sub_(dot[:, rows, None]).mul_(p)  # d(scores) / scale
            dq.append(torch.bmm(ds, k[:, :r1]))
            dk[:, :r1] += torch.bmm(ds.transpose(1, 2), q[:, rows])
        return torch.cat(dq, dim=1).mul_(scale), dk.mul_(scale), dv, None, None, None


ATTENTION_BLOCK = 32  # query positions per block (T=256, D=64, fwd+bwd: 16 and 32 equal, 64: +10%, 128: +25%)
BLOCK_ATTENTION_MAX_SEQ = 1024  # longer sequences: the flash kernel (its memory does not grow with T^2)
# less work (B * H * T^2 * D) than this: the flash kernel, one call, wins over the blocks' per-call costs
# (measured: 2x64 tokens of 4 heads of 32: 0.76 vs 0.46 ms; 4x128: 2.19 vs 2.33 ms; 2x128 of 6x64: 2.4 vs 3.0 ms)
BLOCK_ATTENTION_MIN_WORK = 1 << 23


def _use_block_attention(q: Tensor, B: int, T: int, H: int, D: int) -> bool:
    """Training on CPU in fp32 with plain causal attention on a short sequence but not a tiny
    batch (see :class:`_BlockCausalAttention`); everything else goes through
    ``scaled_dot_product_attention``."""
    return (q.device.type == "cpu" and q.dtype == torch.float32 and T <= BLOCK_ATTENTION_MAX_SEQ
            and B * H * T * T * D >= BLOCK_ATTENTION_MIN_WORK
            and torch.is_grad_enabled() and q.requires_grad and type(q) is torch.Tensor
            and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu"))


# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------

class KVCache:
    """Static, preallocated key/value cache for generation.

    ``k[i]``/``v[i]`` hold layer ``i``'s keys and values, ``(B, n_kv_heads, max_len, head_dim)``.
    ``valid`` (B, max_len) marks real tokens (None while no padding was ever given), and
    ``next_pos`` (B,) is the rotary position the next real token of each row gets.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if max_len > cfg.max_seq_len:
            raise ValueError(f"KV cache length {max_len} exceeds the model's max_seq_len={cfg.max_seq_len}; "
                             "generate fewer tokens or use a shorter prompt")
        shape = (batch_size, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.batch_size, self.max_len = batch_size, max_len
        self.valid: Tensor | None = None
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        # per-forward scratch, set by Transformer.forward before the layers run
        self.positions: Tensor | None = None  # (B, T) rotary positions of the current tokens, or None
        self.mask: Tensor | None = None  # (B, 1, T, end) bool, or None when plain causal suffices
        self.is_causal = False

    def reset(self) -> None:
        """Forget everything (buffers are reused, not reallocated)."""
        self.valid = None
        self.next_pos.zero_()

    def prepare(self, start_pos: int, T: int, attention_mask: Tensor | None) -> None:
        """Record validity/positions of ``T`` new tokens at ``start_pos`` and build the attention mask."""
        end = start_pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache is full: writing up to position {end} but max_len={self.max_len}; "
                             "allocate a larger cache")
        device = self.next_pos.device
        if T == 1 and attention_mask is None and self.valid is not None:  # decoding a padded batch
            self.valid[:, start_pos] = True
            self.positions = self.next_pos[:, None].clone()  # (B, 1)
            self.next_pos += 1
            self.mask = self.valid[:, None, None, :end]  # (B, 1, 1, end); the new token is valid
            self.is_causal = False
            return
        if attention_mask is not None and self.valid is None and not bool(attention_mask.all()):
            self.valid = torch.zeros(self.batch_size, self.max_len, dtype=torch.bool, device=device)
            self.valid[:, :start_pos] = True
        if self.valid is None:  # no padding anywhere: shared positions, plain causal attention
            self.positions = None
            self.next_pos.fill_(end)
            self.mask = None
            self.is_causal = T > 1
            if start_pos > 0 and T > 1:  # causal with an offset needs an explicit mask
                q = torch.arange(start_pos, end, device=device)[:, None]
                self.mask = (torch.arange(end, device=device)[None, :] <= q)[None, None]  # (1, 1, T, end)
                self.is_causal = False
            return
        new = (attention_mask.to(torch.bool) if attention_mask is not None
               else torch.ones(self.batch_size, T, dtype=torch.bool, device=device))  # (B, T)
        self.valid[:, start_pos:end] = new
        steps = new.long().cumsum(1)  # (B, T)
        self.positions = (self.next_pos[:, None] + steps - 1).clamp_min(0)  # (B, T)
        self.next_pos += steps[:, -1]
        q = torch.arange(start_pos, end, device=device)[:, None]  # (T, 1)
        k = torch.arange(end, device=device)[None, :]  # (1, end)
        causal = k <= q  # (T, end)
        self.mask = (self.valid[:, None, None, :end] & causal) | (k == q)  # (B, 1, T, end); self always visible
        self.is_causal = False


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

class _RMSNorm(torch.autograd.Function):
    """fp32 RMSNorm with a hand-written backward: 3 passes forward and 6 backward over (N, C)
    instead of autograd's chain through pow / mean / rsqrt / mul (about 1.4x faster on CPU).
    ``dx = rstd * (g w - x_hat * mean(g w * x_hat))``, ``dw = sum_n g * x_hat``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float) -> Tensor:  # type: ignore[override]
        dim = x.shape[-1]
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(dim).add_(eps).rsqrt_()  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return torch.mul(x, rstd).mul_(weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        dim = x.shape[-1]
        x_hat = x * rstd
        gw = grad * weight
        mean_dot = torch.linalg.vecdot(gw, x_hat).unsqueeze(-1).div_(dim)  # (..., 1)
        grad_x = torch.addcmul(gw, x_hat, mean_dot, value=-1.0).mul_(rstd)
        grad_w = x_hat.mul_(grad).reshape(-1, dim).sum(0)
        return grad_x, grad_w, None


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in fp32 like Llama: ``w * x / sqrt(mean(x^2) + eps)``."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32 and not torch.compiler.is_compiling():
            if not torch.is_grad_enabled():  # one fused kernel, same numbers
                return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
            if type(self.weight) is nn.Parameter and type(x) is torch.Tensor:  # not under FSDP's DTensors
                return _RMSNorm.apply(x, self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary embeddings through ``F.scaled_dot_product_attention``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, *, mask: Tensor | None, is_causal: bool,
                kv_cache: KVCache | None = None, layer: int = 0, start_pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        H, Hk, D = self.n_heads, self.n_kv_heads, self.head_dim
        if torch.is_grad_enabled():
            # training: one matmul for q, k and v (one backward matmul instead of three plus two adds)
            w = torch.cat((self.wq.weight, self.wk.weight, self.wv.weight))  # (H*D + 2*Hk*D, C)
            q, k, v = F.linear(x, w).split((H * D, Hk * D, Hk * D), dim=-1)
        else:  # inference: no weight copy per call
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        if kv_cache is None and mask is None and is_causal and _use_block_attention(q, B, T, H, D):
            G = H // Hk  # query heads per key/value head; head h = j * G + g uses key/value head j
            cos5, sin5 = cos[..., None, :], sin[..., None, :]  # (T, 1, 1, D/2) or (B, T, 1, 1, D/2)
            # rotary written straight into the layouts attention wants: q (B, Hk, T, G, D), k (B, Hk, T, 1, D)
            q = apply_rope(q.view(B, T, Hk, G, D), cos5, sin5, order=(0, 2, 1, 3, 4))
            k = apply_rope(k.view(B, T, Hk, 1, D), cos5, sin5, order=(0, 2, 1, 3, 4))
            q = q.permute(0, 2, 1, 3, 4).reshape(B * Hk, T * G, D)  # views, no copies
            k = k.permute(0, 2, 1, 3, 4).reshape(B * Hk, T, D)
            v = v.view(B, T, Hk, D).transpose(1, 2).reshape(B * Hk, T, D)  # (B*Hk, T, D)
            return self.wo(_BlockCausalAttention.apply(q, k, v, B, G, ATTENTION_BLOCK))  # (B, T, C)
        q = apply_rope(q.view(B, T, H, D), cos, sin).transpose(1, 2)  # (B, H, T, D)
        k = apply_rope(k.view(B, T, Hk, D), cos, sin).transpose(1, 2)  # (B, Hk, T, D)
        v = v.view(B, T, Hk, D).transpose(1, 2)  # (B, Hk, T, D)
        if kv_cache is not None:
            end = start_pos + T
            kv_cache.k[layer][:, :, start_pos:end] = k
            kv_cache.v[layer][:, :, start_pos:end] = v
            k = kv_cache.k[layer][:, :, :end]  # (B, Hk, end, D)
            v = kv_cache.v[layer][:, :, :end]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                           enable_gqa=H != Hk)  # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * D))  # (B, T, C)


class _SwiGLU(torch.autograd.Function):
    """``silu(x W1^T) * (x W3^T)`` from the concatenated ``W13 = [W1; W3]`` with a hand-written
    backward that writes the gate and up gradients straight into one (N, 2F) buffer (autograd
    would build both, then concatenate them) and keeps only ``x`` and the projections."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w13: Tensor) -> Tensor:  # type: ignore[override]
        gu = F.linear(x, w13)  # (..., 2F)
        half = gu.shape[-1] // 2
        ctx.save_for_backward(x, w13, gu)
        return F.silu(gu[..., :half]).mul_(gu[..., half:])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        x, w13, gu = ctx.saved_tensors
        half = gu.shape[-1] // 2
        gate, up = gu[..., :half], gu[..., half:]
        grad_gu = torch.empty_like(gu)
        torch.mul(F.silu(gate), grad, out=grad_gu[..., half:])  # d/d(up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gu[..., :half])  # d/d(gate)
        flat = grad_gu.reshape(-1, gu.shape[-1])  # (N, 2F)
        need_x, need_w = ctx.needs_input_grad
        grad_x = torch.mm(flat, w13).view(x.shape) if need_x else None
        grad_w = torch.mm(flat.t(), x.reshape(-1, x.shape[-1])) if need_w else None  # frozen (LoRA base): skipped
        return grad_x, grad_w


class FeedForward(nn.Module):
    """SwiGLU MLP: ``w2(silu(w1 x) * w3 x)`` (w1 gate, w3 up, w2 down)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():  # training: gate and up projections in one matmul
            w13 = torch.cat((self.w1.weight, self.w3.weight))  # (2F, C)
            if (not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type)
                    and x.dtype == w13.dtype and type(x) is torch.Tensor and type(w13) is torch.Tensor):
                return self.w2(_SwiGLU.apply(x, w13))
            gate, up = F.linear(x, w13).chunk(2, dim=-1)
        else:
            gate, up = self.w1(x), self.w3(x)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, *, mask: Tensor | None = None, is_causal: bool = True,
                kv_cache: KVCache | None = None, start_pos: int = 0) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask=mask, is_causal=is_causal,
                               kv_cache=kv_cache, layer=self.layer_id, start_pos=start_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class MLMHead(nn.Module):
    """Masked-LM transform before the vocabulary projection: dense -> GELU -> RMSNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.dim, cfg.dim, bias=True)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(F.gelu(self.dense(x)))


class Transformer(nn.Module):
    """Llama-family transformer; decoder (causal LM) or encoder (masked LM) by ``cfg.mode``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlm_head = MLMHead(cfg) if cfg.mode == "encoder" else None
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=cfg.mode == "encoder")
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device=self.tok_embeddings.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)  # (S, D/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        if self.tok_embeddings.weight.device.type != "meta":
            self.init_weights()

    # ---- initialisation -------------------------------------------------------------------

    def reset_rope(self) -> None:
        """Recompute the rotary tables in place (after ``to_empty`` or a device move)."""
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta,
                               device=self.rope_cos.device)
        with torch.no_grad():
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Deterministic initialisation: normal(0, init_std) for embeddings and projections, the
        residual output projections (``wo``, ``w2``) scaled by ``1/sqrt(2 * n_layers)``, ones for
        norms and zeros for biases. ``seed=None`` uses the global RNG (what FSDP/DTensor expect)."""
        self.reset_rope()
        self.tie_weights()
        gens: dict[torch.device, torch.Generator] = {}

        def normal_(t: Tensor, std: float) -> None:
            if seed is None:
                nn.init.normal_(t, 0.0, std)
                return
            if t.device not in gens:
                gens[t.device] = torch.Generator(device=t.device).manual_seed(seed)
            nn.init.normal_(t, 0.0, std, generator=gens[t.device])

        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        normal_(self.tok_embeddings.weight, std)
        for layer in self.layers:
            a, f = layer.attention, layer.feed_forward
            for lin in (a.wq, a.wk, a.wv, f.w1, f.w3):
                normal_(lin.weight, std)
            normal_(a.wo.weight, out_std)
            normal_(f.w2.weight, out_std)
            layer.attention_norm.reset_parameters()
            layer.ffn_norm.reset_parameters()
        self.norm.reset_parameters()
        if self.mlm_head is not None:
            normal_(self.mlm_head.dense.weight, std)
            nn.init.zeros_(self.mlm_head.dense.bias)
            self.mlm_head.norm.reset_parameters()
        if not self.cfg.tie_embeddings:
            normal_(self.output.weight, std)
        if self.output.bias is not None:
            nn.init.zeros_(self.output.bias)

    def tie_weights(self) -> None:
        """Make ``output.weight`` the embedding matrix again when ``cfg.tie_embeddings`` (``to_empty``
        and some conversions replace parameters one by one and lose the tie)."""
        if self.cfg.tie_embeddings and self.output.weight is not self.tok_embeddings.weight:
            self.output.weight = self.tok_embeddings.weight

    def num_params(self) -> int:
        """Number of distinct parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    # ---- forward --------------------------------------------------------------------------

    def forward(self, tokens: Tensor, *, attention_mask: Tensor | None = None, kv_cache: KVCache | None = None,
                start_pos: int = 0, return_hidden: bool = False, targets: Tensor | None = None) -> Tensor:
        """Logits ``(B, T, V)`` for ``tokens`` ``(B, T)``, or the final-normed hidden states
        ``(B, T, C)`` when ``return_hidden`` (for the encoder: before the MLM head).

        ``attention_mask`` (B, T): 1 for real tokens, 0 for padding. Decoder: padded keys are hidden
        and rotary positions count real tokens only (so left padding is harmless). Encoder: padded
        keys are hidden from every query. ``kv_cache``/``start_pos``: incremental decoding.

        ``targets`` (B, T), ``-100`` where not scored: return the mean cross-entropy (fp32 scalar)
        instead of logits, through :func:`linear_cross_entropy` (the fast training path: equal to
        ``lm_loss(model(tokens), targets)`` but the (B, T, V) logits are never stored, and a
        masked-LM batch runs its head on the masked positions only).
        """
        B, T = tokens.shape
        h = self.tok_embeddings(tokens)  # (B, T, C)
        mask, is_causal = None, self.cfg.mode == "decoder"
        if kv_cache is not None:
            if self.cfg.mode != "decoder":
                raise ValueError("the KV cache is for decoder models; encoder models attend bidirectionally")
            kv_cache.prepare(start_pos, T, attention_mask)
            mask, is_causal = kv_cache.mask, kv_cache.is_causal
            if kv_cache.positions is None:
                cos = self.rope_cos[start_pos:start_pos + T, None]  # (T, 1, D/2)
                sin = self.rope_sin[start_pos:start_pos + T, None]
            else:
                cos = self.rope_cos[kv_cache.positions][:, :, None]  # (B, T, 1, D/2)
                sin = self.rope_sin[kv_cache.positions][:, :, None]
        else:
            if start_pos + T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {start_pos + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}; "
                                 "truncate the input or build the model with a larger max_seq_len")
            cos = self.rope_cos[start_pos:start_pos + T, None]  # (T, 1, D/2)
            sin = self.rope_sin[start_pos:start_pos + T, None]
            if attention_mask is not None and not bool(attention_mask.all()):
                mask, cos, sin = self._padding_mask(attention_mask.to(torch.bool), start_pos)
                is_causal = False
        for layer in self.layers:
            h = layer(h, cos, sin, mask=mask, is_causal=is_causal, kv_cache=kv_cache, start_pos=start_pos)
        h = self.norm(h)  # (B, T, C)
        if targets is not None:
            if return_hidden or kv_cache is not None:
                raise ValueError("targets cannot be combined with return_hidden or a KV cache")
            return self._loss(h, targets)
        if return_hidden:
            return h
        if self.mlm_head is not None:
            h = self.mlm_head(h)
        return self.output(h)  # (B, T, V)

    def _loss(self, h: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of the scored positions (targets != -100), head applied to those only."""
        flat_h, flat_t = h.reshape(-1, h.shape[-1]), targets.reshape(-1)  # (N, C), (N,)
        keep = flat_t != IGNORE_INDEX
        if int(keep.sum()) != flat_t.numel():
            index = keep.nonzero().squeeze(1)
            flat_h, flat_t = flat_h.index_select(0, index), flat_t.index_select(0, index)
        if self.mlm_head is not None:
            flat_h = self.mlm_head(flat_h)
        return linear_cross_entropy(flat_h, self.output.weight, flat_t, self.output.bias)

    def _padding_mask(self, valid: Tensor, start_pos: int) -> tuple[Tensor, Tensor, Tensor]:
        """Attention mask (B, 1, T, T) and rotary tables for a padded batch without a cache."""
        T = valid.shape[1]
        eye = torch.eye(T, dtype=torch.bool, device=valid.device)  # a query always sees itself: no empty rows
        if self.cfg.mode == "encoder":
            mask = valid[:, None, None, :] | eye  # (B, 1, T, T)
            cos = self.rope_cos[start_pos:start_pos + T, None]
            sin = self.rope_sin[start_pos:start_pos + T, None]
            return mask, cos, sin
        causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
        mask = (valid[:, None, None, :] & causal) | eye  # (B, 1, T, T)
        pos = (valid.long().cumsum(1) - 1).clamp_min(0) + start_pos  # (B, T): real tokens count from 0
        return mask, self.rope_cos[pos][:, :, None], self.rope_sin[pos][:, :, None]
