"""What the DPO and PPO loops share beyond :mod:`training.core.loops.common`: frozen copies,
identity checks, sharding and mixed precision.

Identity checks (raised as :class:`~training.core.config.ConfigError` before any compute): a
reference or reward model must use the policy's tokenizer and descend from the same base model.
:func:`base_fingerprint` names the base: the architecture plus the first model of the
``init_from`` chain that is not a post-training run; every DPO / PPO checkpoint records it as
``base_fingerprint``.

>>> from training.core.config import ModelConfig
>>> architecture_fingerprint(ModelConfig.preset("tiny")) == architecture_fingerprint(ModelConfig.preset("tiny"))
True
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
import torch.nn as nn

from training.core.config import ConfigError, ModelConfig, PostTrainingConfig
from training.core.distributed import DistContext, parallelize

__all__ = ["architecture_fingerprint", "base_fingerprint", "load_model_for", "frozen", "shard", "amp_factory",
           "check_same_base"]

# the fields that define a model's architecture (not its training settings)
_ARCH_FIELDS = ("vocab_size", "dim", "n_layers", "n_heads", "kv_heads", "hidden_dim", "rope_theta", "norm_eps",
                "tie_embeddings", "mode")


def architecture_fingerprint(cfg: ModelConfig) -> str:
    """Short sha256 of the architecture (vocabulary, widths, depth, heads, rotary base, norms)."""
    arch = {name: getattr(cfg, name) for name in _ARCH_FIELDS}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


_POST_TRAINING_KINDS = ("sft", "reward", "dpo", "ppo")


def _saved_config(source: str) -> dict[str, Any]:
    """The config a studio checkpoint (or run folder) was saved with; {} for other sources."""
    from training.core.checkpoint import CheckpointError, read_checkpoint_config

    if source == "smollm2" or not Path(source).exists() or Path(source).suffix.lower() == ".gguf":
        return {}
    try:
        found = read_checkpoint_config(source)
    except (CheckpointError, OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _root_id(source: str) -> str:
    """A stable name for a base model: ``smollm2``, or the resolved run / export folder."""
    from training.core.checkpoint import CheckpointError, find_checkpoint

    if source == "smollm2":
        return source
    path = Path(source)
    try:
        path = find_checkpoint(path).parent.parent  # a checkpoint stands for its run
    except CheckpointError:
        pass
    return str(path.resolve())


def base_fingerprint(source: str, model_cfg: ModelConfig) -> str:
    """Which base model ``source`` descends from: its architecture and the first model of its
    ``init_from`` chain that is not a post-training run (a pretraining run, an import, a file).

    Two models share a fingerprint exactly when they were fine-tuned (SFT, reward, DPO, PPO, in
    any order) from the same base; a checkpoint's recorded ``base_fingerprint`` is used as is.
    """
    root = source
    for _ in range(32):  # a chain of post-training runs back to the base
        saved = _saved_config(root)
        if saved.get("base_fingerprint"):
            return str(saved["base_fingerprint"])
        parent = saved.get("init_from") if saved.get("kind") in _POST_TRAINING_KINDS else None
        if not parent:
            break
        root = str(parent)
    key = {"architecture": architecture_fingerprint(model_cfg), "base": _root_id(root)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_model_for(cfg: PostTrainingConfig, source: str, field: str) -> tuple[nn.Module, Any, str]:
    """``(model, tokenizer, base_fingerprint)`` of a model source, on CPU in train mode.

    The policy is ``cfg.init_from`` (``field="init_from"``); a reference model is loaded the same
    way with errors naming ``field``. See :func:`training.core.loops.common.load_start`.
    """
    from training.core.loops.common import load_start

    try:
        if source == cfg.init_from:
            model, tok, info = load_start(cfg)
        else:
            model, tok, info = load_start(cfg.replace(init_from=source, tokenizer_dir=""))
    except ConfigError as e:
        raise ConfigError(field if e.field == "init_from" else e.field, e.message, e.hint) from None
    return model, tok, base_fingerprint(source, model.cfg)


def frozen(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients (reference and reward models)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def shard(model: nn.Module, cfg: PostTrainingConfig, ctx: DistContext) -> nn.Module:
    """Move to this rank's device and apply activation checkpointing / FSDP2 from the outside."""
    model.to(ctx.device)
    parallelize(model, ctx, activation_checkpointing=cfg.activation_checkpointing and any(
        p.requires_grad for p in model.parameters()), mixed_precision=cfg.fsdp_mixed_precision)
    return model


def amp_factory(cfg: PostTrainingConfig, ctx: DistContext) -> Callable[[], ContextManager[Any]]:
    """A context-manager factory: bf16 autocast when the config asks for it (or ``auto`` on a bf16 GPU)."""
    from training.core.loops.pretrain import autocast_dtype

    dtype = autocast_dtype(cfg, ctx.device)  # type: ignore[arg-type]  # reads .dtype only

    def amp() -> ContextManager[Any]:
        return torch.autocast(ctx.device.type, dtype=dtype) if dtype else nullcontext()

    return amp


def check_same_base(field: str, source: str, policy_cfg: ModelConfig, policy_tok: Any, other_cfg: ModelConfig,
                    other_tok: Any, policy_base: str, other_base: str) -> None:
    """Refuse a reference / reward model whose tokenizer or base differs from the policy's."""
    if other_tok is not None and other_tok.fingerprint != policy_tok.fingerprint:
        raise ConfigError(field, f"the tokenizer of {source} differs from the policy's "
                                 f"({other_tok.fingerprint} vs {policy_tok.fingerprint})",
                          "use a model trained with the policy's tokenizer (the same base model)")
    if architecture_fingerprint(other_cfg) != architecture_fingerprint(policy_cfg) or other_base != policy_base:
        raise ConfigError(field, f"{source} comes from another base model than the policy "
                                 f"(base {other_base} vs {policy_base})",
                          "train it from the same base checkpoint as the policy")
