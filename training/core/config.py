"""Typed, serializable run configuration for the ML core.

Every run is one frozen dataclass tree, validated when it is built, saved with every checkpoint
and rebuilt with ``from_dict``. Validation errors are :class:`ConfigError` and name the field and
the fix, so that the studio can show them inline next to the form field.

>>> ModelConfig.preset("tiny").n_params() > 0
True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar

T = TypeVar("T", bound="BaseConfig")


class ConfigError(ValueError):
    """A configuration value is invalid. ``field`` names it, ``hint`` says how to fix it."""

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        self.field = field
        self.message = message
        self.hint = hint
        super().__init__(f"{field}: {message}" + (f" (hint: {hint})" if hint else ""))

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "detail": self.message, "hint": self.hint}


def _require(cond: bool, field: str, message: str, hint: str = "") -> None:
    if not cond:
        raise ConfigError(field, message, hint)


@dataclass(frozen=True)
class BaseConfig:
    """Shared (de)serialization: nested dataclasses become dicts and back; unknown keys are errors."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        data = dict(data or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                unknown[0],
                f"unknown setting for {cls.__name__}",
                f"valid settings: {', '.join(sorted(known))}",
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            sub = _nested_config_type(cls, name)
            if sub is not None and isinstance(value, dict):
                try:
                    value = sub.from_dict(value)
                except ConfigError as e:
                    raise ConfigError(f"{name}.{e.field}", e.message, e.hint) from None
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as e:  # wrong types that dataclasses itself rejects
            raise ConfigError(cls.__name__, str(e)) from None

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


def _nested_config_type(cls: type, name: str) -> type[BaseConfig] | None:
    default = next((f for f in fields(cls) if f.name == name), None)
    if default is None:
        return None
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        inst = default.default_factory()  # type: ignore[misc]
        if isinstance(inst, BaseConfig):
            return type(inst)
    return None


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig(BaseConfig):
    """Shape of a Llama-family transformer.

    ``mode="decoder"``: causal self-attention and a next-token head (pretraining, chat).
    ``mode="encoder"``: bidirectional attention and a masked-LM head on the same blocks.
    """

    vocab_size: int = 8192
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: same as n_heads (plain multi-head attention)
    ffn_dim: int | None = None  # None: Llama rule, about 8/3 * dim rounded up to multiple_of
    multiple_of: int = 64
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    mode: Literal["decoder", "encoder"] = "decoder"
    init_std: float = 0.02

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # about 1M parameters: unit tests
        "tiny": dict(vocab_size=1024, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256,
                     tie_embeddings=True),
        # about 20M parameters: the CPU demo and CPU benchmarks
        "small": dict(vocab_size=8192, dim=384, n_layers=6, n_heads=6, n_kv_heads=2, max_seq_len=512),
        "125m": dict(vocab_size=32000, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, max_seq_len=2048),
        "1b": dict(vocab_size=32000, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
                   max_seq_len=2048, rope_theta=500000.0),
        "7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
                   max_seq_len=4096),
    }

    def __post_init__(self) -> None:
        _require(isinstance(self.vocab_size, int) and self.vocab_size > 0, "vocab_size",
                 f"must be a positive integer, got {self.vocab_size!r}",
                 "use the tokenizer's vocabulary size")
        _require(isinstance(self.dim, int) and self.dim > 0, "dim", f"must be positive, got {self.dim!r}")
        _require(isinstance(self.n_layers, int) and self.n_layers > 0, "n_layers",
                 f"must be positive, got {self.n_layers!r}")
        _require(isinstance(self.n_heads, int) and self.n_heads > 0, "n_heads",
                 f"must be positive, got {self.n_heads!r}")
        _require(self.dim % self.n_heads == 0, "n_heads",
                 f"dim={self.dim} is not divisible by n_heads={self.n_heads}",
                 f"pick n_heads among the divisors of {self.dim}, e.g. {_divisors_hint(self.dim)}")
        _require((self.dim // self.n_heads) % 2 == 0, "n_heads",
                 f"head size dim/n_heads={self.dim // self.n_heads} must be even for rotary embeddings",
                 "use fewer heads or a wider model")
        kv = self.kv_heads
        _require(kv > 0 and self.n_heads % kv == 0, "n_kv_heads",
                 f"n_heads={self.n_heads} is not divisible by n_kv_heads={kv}",
                 f"pick n_kv_heads among the divisors of {self.n_heads}, e.g. {_divisors_hint(self.n_heads)}")
        _require(self.max_seq_len > 0, "max_seq_len", "must be positive")
        _require(self.ffn_dim is None or self.ffn_dim > 0, "ffn_dim", "must be positive or null")
        _require(self.mode in ("decoder", "encoder"), "mode",
                 f"must be 'decoder' or 'encoder', got {self.mode!r}")
        _require(self.norm_eps > 0, "norm_eps", "must be positive")
        _require(self.rope_theta > 0, "rope_theta", "must be positive")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden width: explicit ``ffn_dim`` or Llama's 2/3 * 4 * dim rounded up."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        hidden = int(2 * (4 * self.dim) / 3)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def n_params(self, include_embeddings: bool = True) -> int:
        """Parameter count computed from the shape (matches ``sum(p.numel())`` of the model)."""
        d, h, L = self.dim, self.hidden_dim, self.n_layers
        attn = d * d + 2 * d * (self.kv_heads * self.head_dim) + d * d
        mlp = 3 * d * h
        per_layer = attn + mlp + 2 * d
        emb = self.vocab_size * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        total = L * per_layer + d + (emb + head if include_embeddings else 0)
        if self.mode == "encoder":
            total += d * d + d + d + self.vocab_size  # MLM head transform + its norm + output bias
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L d T."""
        n = self.n_params(include_embeddings=False) + (0 if self.tie_embeddings else self.vocab_size * self.dim)
        return 6.0 * n + 12.0 * self.n_layers * self.dim * seq_len

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in cls.PRESETS:
            raise ConfigError("preset", f"unknown model preset {name!r}",
                              f"choose one of: {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})


def _divisors_hint(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0 and d <= 64)


# --------------------------------------------------------------------------------------------
# Optimizer and data
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OptimConfig(BaseConfig):
    """AdamW with linear warmup then cosine decay to ``lr * min_lr_ratio``.

    Weight decay applies only to matrices that are not embeddings (see ``training.core.optim``).
    ``grad_clip`` is the max global gradient norm (0 disables clipping).
    """

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _require(isinstance(self.lr, (int, float)) and self.lr > 0, "lr",
                 f"must be a positive number, got {self.lr!r}", "typical values are 1e-4 to 1e-3")
        _require(isinstance(self.min_lr_ratio, (int, float)) and 0.0 <= self.min_lr_ratio <= 1.0,
                 "min_lr_ratio", f"must be between 0 and 1, got {self.min_lr_ratio!r}",
                 "0.1 decays to a tenth of lr; 1.0 keeps lr constant after warmup")
        _require(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps",
                 f"must be a non-negative integer, got {self.warmup_steps!r}")
        _require(isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0, "weight_decay",
                 f"must be >= 0, got {self.weight_decay!r}", "0.1 is the usual value for pretraining")
        _require(isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                 and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas),
                 "betas", f"must be two numbers in [0, 1), got {self.betas!r}", "e.g. [0.9, 0.95]")
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        _require(isinstance(self.eps, (int, float)) and self.eps > 0, "eps", f"must be positive, got {self.eps!r}")
        _require(isinstance(self.grad_clip, (int, float)) and self.grad_clip >= 0, "grad_clip",
                 f"must be >= 0, got {self.grad_clip!r}", "use 0 to disable clipping, 1.0 is usual")

    @property
    def min_lr(self) -> float:
        return self.lr * self.min_lr_ratio


@dataclass(frozen=True)
class DataConfig(BaseConfig):
    """Where the token shards are and how batches are cut from them.

    One optimizer step sees ``micro_batch_size * grad_accum_steps * world_size`` sequences of
    ``seq_len`` tokens. ``val_batches`` micro-batches form the (fixed) validation set.
    """

    dataset_dir: str = ""
    seq_len: int = 256
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    seed: int = 0
    val_batches: int = 8

    def __post_init__(self) -> None:
        _require(isinstance(self.dataset_dir, str), "dataset_dir",
                 f"must be a folder path, got {self.dataset_dir!r}",
                 "the folder written by `python -m training.core.cli prepare`")
        _require(isinstance(self.seq_len, int) and self.seq_len > 0, "seq_len",
                 f"must be a positive integer, got {self.seq_len!r}", "at most the model's max_seq_len")
        _require(isinstance(self.micro_batch_size, int) and self.micro_batch_size > 0, "micro_batch_size",
                 f"must be a positive integer, got {self.micro_batch_size!r}",
                 "lower it if you run out of memory, and raise grad_accum_steps instead")
        _require(isinstance(self.grad_accum_steps, int) and self.grad_accum_steps > 0, "grad_accum_steps",
                 f"must be a positive integer, got {self.grad_accum_steps!r}")
        _require(isinstance(self.seed, int) and self.seed >= 0, "seed", f"must be a non-negative integer, got {self.seed!r}")
        _require(isinstance(self.val_batches, int) and self.val_batches >= 0, "val_batches",
                 f"must be a non-negative integer, got {self.val_batches!r}", "0 disables validation")


# --------------------------------------------------------------------------------------------
# Pretraining run
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PretrainConfig(BaseConfig):
    """One pretraining run: model shape, data, optimizer and the loop's own settings.

    ``objective="clm"`` trains next-token prediction (``model.mode="decoder"``);
    ``objective="mlm"`` trains masked-LM with the 80/10/10 rule at ``mlm_rate``
    (``model.mode="encoder"``). ``steps`` counts optimizer steps. ``eval_every`` /
    ``ckpt_every`` of 0 disable periodic validation / checkpoints (a final checkpoint is always
    written). ``dtype="auto"`` is bf16 autocast on CUDA devices that support it and fp32
    elsewhere. ``resume_from`` is a checkpoint folder, a run folder (its ``latest`` checkpoint
    is used) or ``"auto"`` (resume from ``out_dir`` when it holds a checkpoint, else start).
    ``init_from`` starts a new run from the model weights of a checkpoint or an export folder
    (no optimizer state, step 0), e.g. an imported model for continued pretraining.
    ``peak_tflops`` is the accelerator's dense bf16 peak used for MFU (0: detect known GPUs;
    elsewhere ``mfu(%)`` is not reported).
    """

    model: ModelConfig = field(default_factory=lambda: ModelConfig.preset("tiny"))
    data: DataConfig = field(default_factory=lambda: DataConfig())  # type: ignore[name-defined]
    optim: OptimConfig = field(default_factory=lambda: OptimConfig())  # type: ignore[name-defined]
    objective: Literal["clm", "mlm"] = "clm"
    mlm_rate: float = 0.15
    steps: int = 1000
    eval_every: int = 100
    ckpt_every: int = 500
    log_every: int = 1
    keep_last: int = 0
    out_dir: str = "var/runs/pretrain"
    seed: int = 0
    dtype: Literal["fp32", "bf16", "auto"] = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    fsdp_mixed_precision: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tokenizer_dir: str = ""
    resume_from: str = ""
    init_from: str = ""
    peak_tflops: float = 0.0

    def __post_init__(self) -> None:
        _require(isinstance(self.model, ModelConfig), "model", "must be a model config (a mapping of its settings)")
        _require(self.objective in ("clm", "mlm"), "objective",
                 f"must be 'clm' or 'mlm', got {self.objective!r}",
                 "clm = next-token prediction (decoder), mlm = masked-LM (encoder)")
        if self.objective == "clm":
            _require(self.model.mode == "decoder", "model.mode",
                     "next-token pretraining (objective='clm') needs a causal model",
                     "set model.mode='decoder', or objective='mlm' for an encoder")
        else:
            _require(self.model.mode == "encoder", "model.mode",
                     "masked-LM pretraining (objective='mlm') needs a bidirectional model",
                     "set model.mode='encoder', or objective='clm' for a decoder")
        _require(isinstance(self.mlm_rate, (int, float)) and 0.0 < self.mlm_rate < 1.0, "mlm_rate",
                 f"must be in (0, 1), got {self.mlm_rate!r}", "BERT uses 0.15")
        _require(self.data.seq_len <= self.model.max_seq_len, "data.seq_len",
                 f"seq_len={self.data.seq_len} is longer than model.max_seq_len={self.model.max_seq_len}",
                 "lower data.seq_len or raise model.max_seq_len")
        _require(isinstance(self.steps, int) and self.steps > 0, "steps",
                 f"must be a positive integer, got {self.steps!r}")
        for name in ("eval_every", "ckpt_every", "keep_last"):
            v = getattr(self, name)
            _require(isinstance(v, int) and v >= 0, name, f"must be a non-negative integer, got {v!r}",
                     "0 disables it")
        _require(isinstance(self.log_every, int) and self.log_every > 0, "log_every",
                 f"must be a positive integer, got {self.log_every!r}")
        _require(isinstance(self.out_dir, str) and self.out_dir != "", "out_dir",
                 "must name a folder", "checkpoints and the run's config are written there")
        _require(isinstance(self.seed, int) and self.seed >= 0, "seed",
                 f"must be a non-negative integer, got {self.seed!r}")
        _require(self.dtype in ("fp32", "bf16", "auto"), "dtype",
                 f"must be 'fp32', 'bf16' or 'auto', got {self.dtype!r}")
        _require(self.device in ("auto", "cpu", "cuda"), "device",
                 f"must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        _require(isinstance(self.peak_tflops, (int, float)) and self.peak_tflops >= 0, "peak_tflops",
                 f"must be >= 0, got {self.peak_tflops!r}", "e.g. 989 for an H100 SXM (dense bf16)")

    @property
    def tokens_per_step(self) -> int:
        """Tokens one optimizer step sees on ONE rank (multiply by the world size for the global figure)."""
        return self.data.seq_len * self.data.micro_batch_size * self.data.grad_accum_steps
