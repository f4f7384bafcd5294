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


# --------------------------------------------------------------------------------------------
# Post-training runs (SFT, reward model, DPO, PPO): common settings
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PostTrainingConfig(BaseConfig):
    """Settings every post-training loop shares (same names in SFT, reward, DPO and PPO configs).

    ``init_from`` (required) is where the policy starts: a checkpoint folder, a run folder (its
    latest checkpoint), an export or Hugging Face folder, a ``.gguf`` file or ``"smollm2"``.
    ``tokenizer_dir`` ``""`` uses the tokenizer found next to ``init_from``. ``train_file`` is a
    JSONL or Parquet file of records in the TRL formats (see ``training.core.data.preference``);
    without ``eval_file`` an ``eval_fraction`` of it is held out. ``steps`` counts optimizer
    steps; one step sees ``micro_batch_size * grad_accum_steps`` examples per rank.
    ``resume_from`` is a checkpoint, a run folder or ``"auto"`` (resume from ``out_dir`` when it
    holds a checkpoint).
    """

    init_from: str = ""
    tokenizer_dir: str = ""
    train_file: str = ""
    eval_file: str = ""
    eval_fraction: float = 0.05
    out_dir: str = "var/runs/post-training"
    steps: int = 100
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    max_seq_len: int = 512
    eval_every: int = 50
    ckpt_every: int = 100
    log_every: int = 1
    keep_last: int = 0
    seed: int = 0
    dtype: Literal["fp32", "bf16", "auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    resume_from: str = ""
    activation_checkpointing: bool = False
    fsdp_mixed_precision: bool = True
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=0, weight_decay=0.0,
                                                                   min_lr_ratio=1.0))

    def __post_init__(self) -> None:
        _require(isinstance(self.init_from, str) and self.init_from != "", "init_from",
                 "a post-training run needs a model to start from",
                 "a checkpoint or run folder, an export or Hugging Face folder, a .gguf file or 'smollm2'")
        _require(isinstance(self.tokenizer_dir, str), "tokenizer_dir", "must be a folder path or empty")
        _require(isinstance(self.train_file, str) and self.train_file != "", "train_file",
                 "no training records given", "a JSONL or Parquet file exported from a labeling snapshot")
        _require(isinstance(self.eval_file, str), "eval_file", "must be a file path or empty")
        _require(isinstance(self.eval_fraction, (int, float)) and 0.0 <= self.eval_fraction < 1.0,
                 "eval_fraction", f"must be in [0, 1), got {self.eval_fraction!r}",
                 "0.05 holds out 5% of train_file for evaluation; 0 disables it")
        _require(isinstance(self.out_dir, str) and self.out_dir != "", "out_dir",
                 "must name a folder", "checkpoints and the run's config are written there")
        for name in ("steps", "micro_batch_size", "grad_accum_steps", "max_seq_len", "log_every"):
            v = getattr(self, name)
            _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, name,
                     f"must be a positive integer, got {v!r}")
        for name in ("eval_every", "ckpt_every", "keep_last", "seed"):
            v = getattr(self, name)
            _require(isinstance(v, int) and not isinstance(v, bool) and v >= 0, name,
                     f"must be a non-negative integer, got {v!r}", "0 disables it" if name != "seed" else "")
        _require(self.dtype in ("fp32", "bf16", "auto"), "dtype",
                 f"must be 'fp32', 'bf16' or 'auto', got {self.dtype!r}")
        _require(self.device in ("auto", "cpu", "cuda"), "device",
                 f"must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        _require(isinstance(self.resume_from, str), "resume_from",
                 "must be a checkpoint or run folder, 'auto' or empty")
        _require(isinstance(self.optim, OptimConfig), "optim", "must be an optimizer config (a mapping)")


def _in_range(value: Any, low: float, high: float, *, low_open: bool = False) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return (low < value if low_open else low <= value) and value <= high


# --------------------------------------------------------------------------------------------
# Direct preference optimization
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DPOConfig(PostTrainingConfig):
    """Direct preference optimization on ``{prompt, chosen, rejected}`` records.

    ``loss_type``: ``sigmoid`` (DPO, Rafailov et al. 2023, with optional ``label_smoothing``
    as in conservative DPO), ``ipo`` (Azar et al. 2023, length-normalized log-probs) or
    ``hinge`` (SLiC). ``beta`` is the strength of the implicit KL constraint (for IPO, the
    regularization τ). The reference is a frozen copy of ``ref_model`` (``""`` = ``init_from``);
    ``precompute_ref_logps`` scores every pair with it once before training and frees it.
    Prompts are cut to their last ``max_prompt_len`` tokens and prompt + answer to
    ``max_seq_len``. Fewer than ``min_pairs`` usable pairs is refused before any compute.

    >>> DPOConfig(init_from="smollm2", train_file="pairs.jsonl").loss_type
    'sigmoid'
    """

    out_dir: str = "var/runs/dpo"
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = 0.0
    ref_model: str = ""
    precompute_ref_logps: bool = False
    max_prompt_len: int = 256
    min_pairs: int = 8

    LOSS_TYPES: ClassVar[tuple[str, ...]] = ("sigmoid", "ipo", "hinge")

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(_in_range(self.beta, 0.0, 1e6, low_open=True), "beta", f"must be positive, got {self.beta!r}",
                 "0.1 is usual; larger keeps the policy closer to the reference")
        _require(self.loss_type in self.LOSS_TYPES, "loss_type",
                 f"must be one of {', '.join(self.LOSS_TYPES)}, got {self.loss_type!r}",
                 "sigmoid is the original DPO loss")
        _require(_in_range(self.label_smoothing, 0.0, 0.5) and (self.label_smoothing < 0.5), "label_smoothing",
                 f"must be in [0, 0.5), got {self.label_smoothing!r}", "the assumed share of flipped labels; 0 is usual")
        _require(self.label_smoothing == 0.0 or self.loss_type == "sigmoid", "label_smoothing",
                 "label smoothing applies to the sigmoid loss only", "set it to 0 or use loss_type='sigmoid'")
        _require(isinstance(self.ref_model, str), "ref_model", "must be a model path or empty (= init_from)")
        _require(isinstance(self.precompute_ref_logps, bool), "precompute_ref_logps", "must be true or false")
        _require(isinstance(self.max_prompt_len, int) and 0 < self.max_prompt_len < self.max_seq_len,
                 "max_prompt_len", f"must be positive and below max_seq_len={self.max_seq_len}, "
                                   f"got {self.max_prompt_len!r}", "leave room for the answers")
        _require(isinstance(self.min_pairs, int) and self.min_pairs >= 1, "min_pairs",
                 f"must be a positive integer, got {self.min_pairs!r}")


# --------------------------------------------------------------------------------------------
# Proximal policy optimization (RLHF)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PPOConfig(PostTrainingConfig):
    """PPO with a KL penalty against a frozen reference (Ouyang et al. 2022; TRL's PPOTrainer).

    ``train_file`` holds prompts (``{prompt}`` or ``{messages}`` records). Each step samples
    ``micro_batch_size * grad_accum_steps * num_mini_batches`` prompts per rank, generates up to
    ``max_new_tokens`` with the KV-cache generator, scores the completions with ``reward_model``
    (a reward-model checkpoint) or ``reward_fn`` (a rule-based reward by name, see
    ``training.core.rewards``; exactly one of the two), subtracts ``missing_eos_penalty`` from
    the score of completions that never emit an end token, and shapes per-token rewards with
    ``-kl_coef * KL`` (``kl_estimator`` ``k1`` = ``log(pi/ref)``, ``k3`` = ``(ref/pi - 1) - log(ref/pi)``).
    Advantages come from GAE (``gamma``, ``lam``) over a value head on the policy; then
    ``ppo_epochs`` passes over ``num_mini_batches`` minibatches with the clipped policy loss
    (``cliprange``) and the clipped value loss (``cliprange_value``, weight ``vf_coef``).

    Health flags in the step metrics (1 = warn): ``health/kl_runaway`` when ``objective/kl``
    exceeds ``kl_warn``, ``health/entropy_collapse`` when ``objective/entropy`` falls below
    ``entropy_warn`` and ``health/ratio_drift`` when ``|val/ratio - 1|`` exceeds ``ratio_warn``.

    >>> PPOConfig(init_from="smollm2", train_file="prompts.jsonl", reward_fn="brevity").kl_estimator
    'k1'
    """

    out_dir: str = "var/runs/ppo"
    reward_model: str = ""
    reward_fn: str = ""
    ref_model: str = ""
    num_mini_batches: int = 1
    ppo_epochs: int = 4
    max_prompt_len: int = 128
    max_new_tokens: int = 32
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    kl_coef: float = 0.05
    kl_estimator: Literal["k1", "k3"] = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    missing_eos_penalty: float = 0.0
    min_prompts: int = 8
    kl_warn: float = 10.0
    entropy_warn: float = 0.05
    ratio_warn: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(isinstance(self.reward_model, str) and isinstance(self.reward_fn, str), "reward_model",
                 "must be a path (reward_model) or a name (reward_fn)")
        _require(bool(self.reward_model) != bool(self.reward_fn), "reward_model",
                 "give exactly one of reward_model (a reward-model checkpoint) and reward_fn (a rule-based reward)",
                 "train a reward model with `cli reward`, or use e.g. reward_fn='brevity' for a demo")
        if self.reward_fn:
            from training.core.rewards import RewardFunctionError, resolve_reward_fn

            try:
                resolve_reward_fn(self.reward_fn)
            except RewardFunctionError as e:
                raise ConfigError("reward_fn", e.message, e.hint) from None
        _require(isinstance(self.ref_model, str), "ref_model", "must be a model path or empty (= init_from)")
        for name in ("num_mini_batches", "ppo_epochs", "max_prompt_len", "max_new_tokens", "min_prompts"):
            v = getattr(self, name)
            _require(isinstance(v, int) and not isinstance(v, bool) and v > 0, name,
                     f"must be a positive integer, got {v!r}")
        _require(self.max_prompt_len + self.max_new_tokens <= self.max_seq_len, "max_new_tokens",
                 f"max_prompt_len ({self.max_prompt_len}) + max_new_tokens ({self.max_new_tokens}) exceeds "
                 f"max_seq_len={self.max_seq_len}", "shorten one of them or raise max_seq_len")
        _require(_in_range(self.temperature, 0.0, 10.0, low_open=True), "temperature",
                 f"must be in (0, 10], got {self.temperature!r}", "PPO samples; 0.7 to 1.0 is usual")
        _require(isinstance(self.top_k, int) and self.top_k >= 0, "top_k",
                 f"must be a non-negative integer, got {self.top_k!r}", "0 disables it")
        _require(_in_range(self.top_p, 0.0, 1.0, low_open=True), "top_p", f"must be in (0, 1], got {self.top_p!r}",
                 "1.0 disables it")
        _require(_in_range(self.kl_coef, 0.0, 1e3), "kl_coef", f"must be >= 0, got {self.kl_coef!r}",
                 "0.05 is usual; larger keeps the policy closer to the reference")
        _require(self.kl_estimator in ("k1", "k3"), "kl_estimator",
                 f"must be 'k1' or 'k3', got {self.kl_estimator!r}",
                 "k1 = log(pi/ref), unbiased; k3 = (ref/pi - 1) - log(ref/pi), unbiased and never negative")
        _require(_in_range(self.gamma, 0.0, 1.0), "gamma", f"must be in [0, 1], got {self.gamma!r}")
        _require(_in_range(self.lam, 0.0, 1.0), "lam", f"must be in [0, 1], got {self.lam!r}", "0.95 is usual")
        _require(_in_range(self.cliprange, 0.0, 10.0, low_open=True), "cliprange",
                 f"must be positive, got {self.cliprange!r}", "0.2 is usual")
        _require(_in_range(self.cliprange_value, 0.0, 1e6, low_open=True), "cliprange_value",
                 f"must be positive, got {self.cliprange_value!r}", "0.2 is usual")
        _require(_in_range(self.vf_coef, 0.0, 1e3), "vf_coef", f"must be >= 0, got {self.vf_coef!r}")
        _require(isinstance(self.whiten_rewards, bool), "whiten_rewards", "must be true or false")
        _require(_in_range(self.missing_eos_penalty, 0.0, 1e6), "missing_eos_penalty",
                 f"must be >= 0, got {self.missing_eos_penalty!r}", "0 disables it; 1.0 is a common value")
        _require(_in_range(self.kl_warn, 0.0, 1e9, low_open=True), "kl_warn", f"must be positive, got {self.kl_warn!r}")
        _require(_in_range(self.entropy_warn, 0.0, 1e9), "entropy_warn", f"must be >= 0, got {self.entropy_warn!r}")
        _require(_in_range(self.ratio_warn, 0.0, 1e9, low_open=True), "ratio_warn",
                 f"must be positive, got {self.ratio_warn!r}")

    @property
    def rollouts_per_step(self) -> int:
        """Prompts one PPO step generates for, on ONE rank."""
        return self.micro_batch_size * self.grad_accum_steps * self.num_mini_batches


# --------------------------------------------------------------------------------------------
# LoRA, supervised fine-tuning and reward models
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoRAConfig(BaseConfig):
    """Low-rank adapters (Hu et al. 2021) on the projections named in ``targets`` of every block.

    ``rank`` 0 disables them (every weight trains). With ``rank`` r > 0 each targeted weight W
    is frozen and ``W + (alpha / r) * B @ A`` is used, A (r, in) and B (out, r) trainable, B
    starting at zero; checkpoints hold the merged, plain weights (see ``training.core.lora``).
    """

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")

    TARGETS: ClassVar[tuple[str, ...]] = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")

    def __post_init__(self) -> None:
        _require(isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 0, "rank",
                 f"must be a non-negative integer, got {self.rank!r}", "0 trains every weight; 8 to 64 is usual")
        _require(isinstance(self.alpha, (int, float)) and self.alpha > 0, "alpha",
                 f"must be positive, got {self.alpha!r}", "the adapter scale is alpha / rank; 16 is usual")
        if isinstance(self.targets, (list, str)):
            object.__setattr__(self, "targets", (self.targets,) if isinstance(self.targets, str) else tuple(self.targets))
        bad = [t for t in self.targets if t not in self.TARGETS]
        _require(not bad and len(self.targets) > 0, "targets",
                 f"unknown projection(s) {bad}" if bad else "name at least one projection",
                 f"choose among {', '.join(self.TARGETS)}")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


@dataclass(frozen=True)
class SFTConfig(PostTrainingConfig):
    """Supervised fine-tuning on chat records: ``{messages}`` or ``{prompt, completion}``.

    Examples are rendered with the tokenizer's chat template and cut to ``max_seq_len`` tokens.
    ``assistant_only_loss`` scores only the assistant turns (with their end-of-turn token);
    otherwise every token but the padding. ``packing`` fills each row of ``max_seq_len`` tokens
    with several whole examples (less padding); without it a row holds one example. A train file
    with fewer than ``min_examples`` usable examples is refused before any compute.

    >>> SFTConfig(init_from="smollm2", train_file="sft.jsonl").packing
    True
    """

    out_dir: str = "var/runs/sft"
    assistant_only_loss: bool = True
    packing: bool = True
    min_examples: int = 1
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig())

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(isinstance(self.assistant_only_loss, bool), "assistant_only_loss", "must be true or false")
        _require(isinstance(self.packing, bool), "packing", "must be true or false")
        _require(isinstance(self.min_examples, int) and not isinstance(self.min_examples, bool)
                 and self.min_examples >= 1, "min_examples", f"must be a positive integer, got {self.min_examples!r}")
        _require(isinstance(self.lora, LoRAConfig), "lora", "must be a LoRA config (a mapping)")


@dataclass(frozen=True)
class RewardConfig(PostTrainingConfig):
    """A reward model: the transformer of ``init_from`` with a scalar head, on preference pairs.

    Bradley–Terry loss ``-log sigmoid(r_chosen - r_rejected - margin)`` (the record's ``margin``
    when ``use_margin`` and the file has one) plus ``center_rewards_coefficient * mean((r_chosen
    + r_rejected)^2)`` (TRL's reward centering; 1e-2 is usual, 0 disables it). A train file with
    fewer than ``min_pairs`` usable pairs is refused before any compute. ``calibration_bins``
    is the number of predicted-probability bins of the held-out calibration table.

    >>> RewardConfig(init_from="smollm2", train_file="pairs.jsonl").min_pairs
    16
    """

    out_dir: str = "var/runs/reward"
    center_rewards_coefficient: float = 0.0
    use_margin: bool = True
    min_pairs: int = 16
    calibration_bins: int = 10
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig())

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(_in_range(self.center_rewards_coefficient, 0.0, 1e3), "center_rewards_coefficient",
                 f"must be >= 0, got {self.center_rewards_coefficient!r}",
                 "1e-2 keeps rewards centred on zero; 0 disables the term")
        _require(isinstance(self.use_margin, bool), "use_margin", "must be true or false")
        _require(isinstance(self.min_pairs, int) and not isinstance(self.min_pairs, bool) and self.min_pairs >= 1,
                 "min_pairs", f"must be a positive integer, got {self.min_pairs!r}")
        _require(isinstance(self.calibration_bins, int) and 2 <= self.calibration_bins <= 100, "calibration_bins",
                 f"must be an integer in [2, 100], got {self.calibration_bins!r}")
        _require(isinstance(self.lora, LoRAConfig), "lora", "must be a LoRA config (a mapping)")
