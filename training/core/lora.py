"""Low-rank adapters (LoRA, Hu et al. 2021) applied to a transformer from the outside.

:func:`apply_lora` replaces the targeted ``nn.Linear`` projections of every block (``wq``,
``wk``, ``wv``, ``wo`` of the attention; ``w1``, ``w2``, ``w3`` of the MLP) by
:class:`LoRALinear`: the base weight W is frozen, two small matrices A (r, in) and B (out, r) are
trained, and the layer computes ``x @ (W + (alpha / r) * B @ A).T``. B starts at zero, so the
adapted model starts exactly equal to the base. Every other parameter is frozen.

``LoRALinear.weight`` is the merged weight (a differentiable function of A and B), so the
model's fused training paths (q/k/v and gate/up concatenated into one matmul) work unchanged.
:func:`merge_lora` turns the adapted layers back into plain ``nn.Linear`` layers holding the
merged weight, and :func:`merged_state_dict` does the same on a state dict: policy checkpoints
and exports stay plain Transformers that every other tool loads.

>>> from training.core.config import ModelConfig
>>> from training.core.model import Transformer
>>> model = Transformer(ModelConfig.preset("tiny"))
>>> n = apply_lora(model, rank=4, alpha=8.0, targets=("wq", "wv"))
>>> n, sorted({name.rsplit(".", 1)[-1] for name, p in model.named_parameters() if p.requires_grad})
(4, ['lora_a', 'lora_b'])
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "merged_state_dict", "lora_parameters", "lora_scales", "has_lora",
           "ATTENTION_TARGETS", "MLP_TARGETS"]

ATTENTION_TARGETS = ("wq", "wk", "wv", "wo")
MLP_TARGETS = ("w1", "w2", "w3")


class LoRALinear(nn.Module):
    """``y = x @ (W + scale * B @ A).T`` with W frozen (``base_weight``) and A, B trainable."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if base.bias is not None:
            raise ValueError("LoRALinear adapts bias-free projections only")
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        out_features, in_features = base.weight.shape
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha = rank, float(alpha)
        self.scale = self.alpha / rank
        w = base.weight.detach()
        self.base_weight = nn.Parameter(w, requires_grad=False)  # (out, in), frozen
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, dtype=w.dtype, device=w.device))  # (r, in)
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, dtype=w.dtype, device=w.device))  # (out, r)
        if w.device.type != "meta":
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's Kaiming-uniform with a=sqrt(5)), B = 0."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.lora_a.uniform_(-bound, bound, generator=generator)
            self.lora_b.zero_()

    @property
    def weight(self) -> Tensor:
        """The merged weight ``W + scale * B @ A`` (out, in); differentiable in A and B."""
        return self.base_weight + (self.lora_b @ self.lora_a) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the merged weight (no gradient history)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=False, device=self.base_weight.device,
                        dtype=self.base_weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight)
        return lin

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def _targets(model: nn.Module, targets: Iterable[str]) -> list[tuple[nn.Module, str]]:
    wanted = set(targets)
    unknown = wanted - set(ATTENTION_TARGETS) - set(MLP_TARGETS)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose among {ATTENTION_TARGETS + MLP_TARGETS}")
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"expected a model with a `layers` ModuleList, got {type(model).__name__}")
    found: list[tuple[nn.Module, str]] = []
    for block in layers:
        for parent in (block.attention, block.feed_forward):
            for name in sorted(wanted):
                if isinstance(getattr(parent, name, None), (nn.Linear, LoRALinear)):
                    found.append((parent, name))
    return found


def apply_lora(model: nn.Module, rank: int, alpha: float = 16.0,
               targets: Iterable[str] = ATTENTION_TARGETS + MLP_TARGETS, *, seed: int = 0,
               trainable: Iterable[nn.Module] = ()) -> int:
    """Freeze ``model`` and put adapters on ``targets`` in every block; return how many layers were adapted.

    ``trainable`` lists modules that stay trainable besides the adapters (e.g. a reward model's
    scalar head). Adapter A matrices are drawn from a generator seeded with ``seed`` (one draw
    per layer, in block order), so the adapted model is reproducible. Apply it before FSDP.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    count = 0
    gen: torch.Generator | None = None
    for parent, name in _targets(model, targets):
        layer = getattr(parent, name)
        if isinstance(layer, LoRALinear):
            raise ValueError(f"{name} already has an adapter; merge_lora first")
        if gen is None and layer.weight.device.type != "meta":
            gen = torch.Generator(device=layer.weight.device).manual_seed(seed)
        setattr(parent, name, LoRALinear(layer, rank, alpha, generator=gen))
        count += 1
    return count


def has_lora(model: nn.Module) -> bool:
    """True when some layer of ``model`` carries an adapter."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter matrices (A and B of every adapted layer)."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by a plain ``nn.Linear`` with the merged weight (in place).

    The merged model computes the same outputs as the adapted one (up to float rounding) and has
    the state-dict keys of the original model. Parameters are left trainable. Returns ``model``.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@torch.no_grad()
def merged_state_dict(state: dict[str, Tensor], scales: dict[str, float]) -> dict[str, Tensor]:
    """A plain state dict from one of an adapted model: ``X.base_weight`` + ``X.lora_*`` → ``X.weight``.

    ``scales`` maps each adapted layer's prefix ``X`` to its ``alpha / rank`` (see
    :func:`lora_scales`). Tensors must be full (not sharded). Other keys pass unchanged.

    >>> sd = {"l.base_weight": torch.eye(2), "l.lora_a": torch.ones(1, 2), "l.lora_b": torch.ones(2, 1)}
    >>> merged_state_dict(sd, {"l": 0.5})["l.weight"].tolist()
    [[1.5, 0.5], [0.5, 1.5]]
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "base_weight":
            a, b = state[f"{prefix}.lora_a"], state[f"{prefix}.lora_b"]
            out[f"{prefix}.weight"] = value + (b @ a) * scales[prefix]
        elif leaf in ("lora_a", "lora_b"):
            continue
        else:
            out[key] = value
    return out


def lora_scales(model: nn.Module) -> dict[str, float]:
    """``{module name: alpha / rank}`` of every adapted layer (names as in the state dict)."""
    return {name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", ""): m.scale
            for name, m in model.named_modules() if isinstance(m, LoRALinear)}
