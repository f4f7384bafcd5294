"""What the post-training loops share: the starting model and tokenizer, resume, checkpoints.

- :func:`load_start` loads ``init_from`` (a checkpoint, run folder, export, Hugging Face folder,
  ``.gguf`` file or ``"smollm2"``) as a plain :class:`~training.core.model.Transformer` on the CPU,
  with its tokenizer (``tokenizer_dir``, else the one next to the model), and refuses a
  tokenizer that does not match the model before any compute is spent;
- :func:`prepare_model` puts LoRA adapters on, shards (FSDP2) and builds optimizer and schedule;
  :func:`resume_if_asked` loads the checkpoint ``resume_from`` names (a path, a run folder or
  ``auto``); :func:`optimizer_step` clips, steps and clears the gradients;
- :func:`checkpoint_config` is what every post-training checkpoint records: the run's config
  plus the model shape (``model``) and the ``kind`` of loop, so that policy checkpoints load with
  the same code as pretraining checkpoints;
- :func:`write_plain_weights` writes ``model.safetensors`` (adapters merged) into a checkpoint
  of a LoRA run, so that loading it for chat, export or further training sees plain weights;
- :func:`prepare_out_dir` writes the run's ``config.json`` and copies the tokenizer next to the
  checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import nn

from training.core.checkpoint import CheckpointError, find_checkpoint
from training.core.config import ConfigError, PostTrainingConfig
from training.core.distributed import DistContext, all_reduce_max, barrier, broadcast_object, parallelize
from training.core.tokenizer import StudioTokenizer

__all__ = ["load_start", "resolve_resume", "checkpoint_config", "write_plain_weights", "prepare_out_dir",
           "check_tokenizer_fits", "same_tokenizer", "check_seq_len", "prepare_model", "amp_name", "resume_if_asked",
           "optimizer_step", "write_checkpoint"]


def same_tokenizer(a: StudioTokenizer, b: StudioTokenizer) -> bool:
    """True when both split text alike and give the same ids (same vocabulary, merges and specials)."""
    return a.fingerprint == b.fingerprint or (
        a.tokenizer.get_vocab(with_added_tokens=True) == b.tokenizer.get_vocab(with_added_tokens=True)
        and a.special_tokens == b.special_tokens)


def check_tokenizer_fits(tokenizer: StudioTokenizer, vocab_size: int, field: str = "tokenizer_dir") -> None:
    """Refuse a tokenizer whose ids do not fit the model's embedding table."""
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(field, f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                                 f"{vocab_size} embeddings: it is not this model's tokenizer",
                          "leave tokenizer_dir empty to use the tokenizer saved with init_from")


def load_start(cfg: PostTrainingConfig) -> tuple[nn.Module, StudioTokenizer, dict[str, Any]]:
    """The model ``cfg.init_from`` names (fp32, CPU, train mode), its tokenizer and what was loaded.

    The returned info holds ``source`` (the path), ``saved_config`` (the checkpoint's config
    when it is one of ours, else {}), ``tokenizer_dir`` (where the tokenizer came from) and
    ``base_fingerprint`` (the base model it descends from, see ``loops.policy.base_fingerprint``:
    checkpoints record it so that PPO can refuse a reward model from another base).
    Refusals (:class:`ConfigError`): no model there, no tokenizer, a ``tokenizer_dir`` that is
    not the model's own tokenizer (another vocabulary) or does not fit its embeddings.
    """
    from training.core.cli import CliError, _source_kind, _tokenizer_near, load_model_and_tokenizer

    saved: dict[str, Any] = {}
    source = cfg.init_from
    path = Path(source)
    if source != "smollm2" and not path.exists():
        raise ConfigError("init_from", f"{source} does not exist",
                          "a checkpoint or run folder, an export or Hugging Face folder, a .gguf file or 'smollm2'")
    if source != "smollm2" and _source_kind(path) == "checkpoint":
        try:
            ckpt = find_checkpoint(path)
        except CheckpointError as e:
            raise ConfigError("init_from", e.message, e.hint) from None
        saved = json.loads((ckpt / "config.json").read_text(encoding="utf-8")) if (ckpt / "config.json").is_file() \
            else {}
        if saved.get("kind") == "reward":
            raise ConfigError("init_from", f"{source} is a reward model, not a language model",
                              "start from a pretraining, SFT, DPO or PPO checkpoint (or an imported model)")
        path = ckpt
    try:
        model, own_tok = load_model_and_tokenizer(str(path) if source != "smollm2" else source)
    except CliError as e:
        raise ConfigError("init_from", e.message, e.hint) from None
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    tok_dir = ""
    if cfg.tokenizer_dir:
        try:
            tokenizer = StudioTokenizer.load(cfg.tokenizer_dir)
        except ValueError as e:
            raise ConfigError("tokenizer_dir", getattr(e, "message", str(e)), getattr(e, "hint", "")) from None
        tok_dir = cfg.tokenizer_dir
        if own_tok is not None and not same_tokenizer(tokenizer, own_tok):
            raise ConfigError("tokenizer_dir", f"the tokenizer in {cfg.tokenizer_dir} is not the one {source} was "
                                               "trained with (another vocabulary)",
                              "leave tokenizer_dir empty to use the model's own tokenizer")
    elif own_tok is not None:
        tokenizer = own_tok
        near = _tokenizer_near(path) if source != "smollm2" else None
        tok_dir = str(near) if near is not None else ""
    else:
        raise ConfigError("tokenizer_dir", f"no tokenizer was found next to {source}",
                          "set tokenizer_dir to the folder of the model's tokenizer")
    check_tokenizer_fits(tokenizer, model.cfg.vocab_size)
    if model.cfg.mode != "decoder":
        raise ConfigError("init_from", f"{source} is a masked-LM encoder",
                          "post-training starts from a causal (decoder) model")
    from training.core.loops.policy import base_fingerprint

    return model, tokenizer, {"source": source, "saved_config": saved, "tokenizer_dir": tok_dir,
                              "base_fingerprint": base_fingerprint(source, model.cfg)}


def resolve_resume(cfg: PostTrainingConfig) -> str | None:
    """Which checkpoint to resume from: explicit path, ``auto`` (the run's latest, if any) or none."""
    from training.core.loops.pretrain import _resolve_resume

    return _resolve_resume(cfg)  # type: ignore[arg-type]  # reads resume_from and out_dir only


def checkpoint_config(cfg: PostTrainingConfig, kind: str, model_cfg: Any, out_dir: Path,
                      **extra: Any) -> dict[str, Any]:
    """The config saved with each checkpoint: the run's settings, ``kind``, ``model`` (the shape,
    read by ``checkpoint.load_model``) and ``tokenizer_dir`` (the copy in the run folder)."""
    data = cfg.to_dict()
    data.update(kind=kind, model=model_cfg.to_dict(), **extra)
    if (out_dir / "tokenizer" / "tokenizer.json").is_file():
        data["tokenizer_dir"] = str(out_dir / "tokenizer")
    return data


def prepare_out_dir(cfg: PostTrainingConfig, tokenizer: StudioTokenizer, out_dir: Path, ctx: DistContext,
                    run_config: Callable[[], dict[str, Any]]) -> None:
    """Rank 0: create ``out_dir``, save the tokenizer to ``out_dir/tokenizer`` and write ``config.json``
    (``run_config()``, e.g. :func:`checkpoint_config`: with the model shape, like a pretraining run's,
    so that ``checkpoint.load_model(out_dir)`` works on the run folder too)."""
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        tok_dir = out_dir / "tokenizer"
        if not (tok_dir / "tokenizer.json").is_file():
            tmp = out_dir / "tokenizer.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            tokenizer.save(tmp)
            if tok_dir.exists():
                shutil.rmtree(tok_dir)
            os.replace(tmp, tok_dir)
        tmp_cfg = out_dir / "config.json.tmp"
        tmp_cfg.write_text(json.dumps(run_config(), indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp_cfg, out_dir / "config.json")
    barrier(ctx)


def write_plain_weights(model: nn.Module, ckpt: str | Path, ctx: DistContext) -> None:
    """Write ``model.safetensors`` with the adapters merged into a LoRA run's checkpoint (collective).

    ``checkpoint.load_model`` / ``load_model_weights`` read this file before the DCP state, so
    the checkpoint loads as a plain model everywhere; resuming reads the DCP state (adapters).
    """
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from training.core.lora import lora_scales, merged_state_dict

    scales = lora_scales(model)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.is_main:
        sd = merged_state_dict({k: v.detach().to("cpu") for k, v in full.items()}, scales)
        cfg = getattr(model, "cfg", None)
        prefix = "backbone." if any(k.startswith("backbone.") for k in sd) else ""
        if cfg is not None and cfg.tie_embeddings and not prefix:
            sd.pop("output.weight", None)  # stored once, as export_model does
        tensors = {k: v.contiguous() for k, v in sd.items()}
        target = Path(ckpt) / "model.safetensors"
        tmp = target.with_name("model.safetensors.tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "llm-studio", "lora": "merged"})
        os.replace(tmp, target)
    barrier(ctx)



def check_seq_len(cfg: PostTrainingConfig, model_cfg: Any) -> None:
    """Refuse a ``max_seq_len`` beyond the model's positions."""
    if cfg.max_seq_len > model_cfg.max_seq_len:
        raise ConfigError("max_seq_len", f"{cfg.max_seq_len} is longer than the model's max_seq_len="
                                         f"{model_cfg.max_seq_len}", f"set max_seq_len <= {model_cfg.max_seq_len}")


def prepare_model(model: nn.Module, cfg: Any, ctx: DistContext, *, trainable: Sequence[nn.Module] = ()
                  ) -> tuple[torch.optim.Optimizer, Any, Callable[[], ContextManager[Any]]]:
    """Adapters (``cfg.lora``), device, FSDP2 / activation checkpointing, then optimizer, schedule
    and the autocast factory. ``trainable``: modules that stay trainable under LoRA (a head)."""
    from training.core.lora import apply_lora
    from training.core.loops.pretrain import autocast_dtype
    from training.core.optim import build_optimizer, build_scheduler

    if cfg.lora.enabled:
        apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, seed=cfg.seed, trainable=trainable)
    model.to(ctx.device)
    parallelize(model, ctx, activation_checkpointing=cfg.activation_checkpointing,
                mixed_precision=cfg.fsdp_mixed_precision)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    amp_dtype = autocast_dtype(cfg, ctx.device)

    def amp() -> ContextManager[Any]:
        return torch.autocast(ctx.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    amp.dtype = amp_dtype or torch.float32  # type: ignore[attr-defined]
    return optimizer, scheduler, amp


def amp_name(amp: Callable[[], ContextManager[Any]]) -> str:
    """``"bfloat16"`` or ``"float32"``: the compute dtype of an autocast factory from :func:`prepare_model`."""
    return str(getattr(amp, "dtype", torch.float32)).replace("torch.", "")


def resume_if_asked(cfg: Any, kind: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    sampler: Any, ctx: DistContext) -> dict[str, Any] | None:
    """Load the checkpoint ``cfg.resume_from`` names (model, optimizer, schedule, sampler, RNG) and
    return its state (``step``, ``path``, ``trainer_state``), or None when starting fresh.

    Refuses a checkpoint of another kind of run or with other LoRA settings."""
    from training.core.checkpoint import load_checkpoint, read_checkpoint_config
    from training.core.config import LoRAConfig

    resume = broadcast_object(resolve_resume(cfg) if ctx.is_main else None, ctx)
    if resume is None:
        return None
    saved = read_checkpoint_config(resume)
    if saved.get("kind") != kind or LoRAConfig.from_dict(saved.get("lora")) != cfg.lora:
        raise ConfigError("resume_from", f"{resume} is not a checkpoint of a {kind} run with these LoRA settings",
                          "resume from this run's own folder, or start a new run with init_from")
    state = load_checkpoint(resume, model, optimizer, ctx=ctx)
    scheduler.load_state_dict(state["trainer_state"]["scheduler"])
    sampler.load_state_dict(state["rank_state"]["sampler"])
    return state


def optimizer_step(params: list[nn.Parameter], optimizer: torch.optim.Optimizer, scheduler: Any,
                   grad_clip: float) -> tuple[float, float]:
    """Clip the global gradient norm (0: no clipping), step optimizer and schedule, clear the
    gradients; return ``(grad_norm, lr)`` of the step."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"), foreach=True)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()  # DTensor under FSDP2
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), float(lr)


def report_start(cb: Any, cfg: Any, kind: str, model: nn.Module, ctx: DistContext,
                 amp: Callable[[], ContextManager[Any]], *, start_step: int, out_dir: Path, init_from: str,
                 data_info: dict[str, Any]) -> None:
    """Report a run's start through ``cb.on_start`` (config, placement, parameter counts, data
    summary), then each record the data preparation skipped."""
    cb.on_start({"config": cfg.to_dict(), "kind": kind, "world_size": ctx.world_size, "device": str(ctx.device),
                 "dtype": amp_name(amp),
                 "n_params": int(sum(p.numel() for p in model.parameters())),
                 "n_trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
                 "start_step": start_step, "total_steps": cfg.steps, "out_dir": str(out_dir),
                 "init_from": init_from, **data_info})
    for problem in data_info["problems"]:
        cb.on_log(f"skipped {problem}")


def stop_or_checkpoint(step: int, cfg: Any, ctx: DistContext, stop: Any, cb: Any,
                       checkpoint: Callable[[int], str]) -> tuple[bool, str | None]:
    """End of a training step (collective): every rank agrees whether to stop (a SIGTERM may reach
    only some ranks). Before the last step, a stop or a ``cfg.ckpt_every`` step writes a checkpoint
    through ``checkpoint(step)``; the last step's checkpoint is the caller's. Returns
    ``(cancelled, checkpoint path or None)``."""
    stop_now = all_reduce_max(float(stop.requested or cb.should_stop()), ctx) > 0
    if step >= cfg.steps:
        return False, None
    if stop_now:
        return True, checkpoint(step)
    if cfg.ckpt_every and step % cfg.ckpt_every == 0:
        return False, checkpoint(step)
    return False, None


def write_checkpoint(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     ctx: DistContext, *, config: dict[str, Any], keep_last: int, trainer_state: dict[str, Any],
                     sampler: Any) -> str:
    """One post-training checkpoint (collective): model, optimizer, ``trainer_state``, this rank's
    sampler position and RNG; plus the merged ``model.safetensors`` when the model has adapters."""
    from training.core.checkpoint import save_checkpoint
    from training.core.lora import has_lora

    path = save_checkpoint(out_dir, step, model, optimizer, ctx=ctx, config=config, keep_last=keep_last,
                           trainer_state=trainer_state, rank_state={"sampler": sampler.state_dict()})
    if has_lora(model):
        write_plain_weights(model, path, ctx)
    return str(path)
