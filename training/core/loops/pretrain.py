"""The pretraining loop: causal-LM (``clm``) or masked-LM (``mlm``), one process or FSDP2.

Read :func:`train` top to bottom: set up the process, data, model (sharded from the outside by
``training.core.distributed``), optimizer and schedule; resume if asked; then for each step
fetch ``grad_accum_steps`` micro-batches, accumulate token-weighted gradients, clip, step,
report; validate and checkpoint periodically and at the end. Everything the loop has to say
goes through :class:`~training.core.callbacks.Callbacks` (rank 0 only).

A SIGTERM (or a callback's ``should_stop()``) finishes the current step, writes a checkpoint
and ends with ``status="cancelled"``; the run resumes later from that checkpoint with the
same data order.

>>> from training.core.config import PretrainConfig
>>> PretrainConfig().objective
'clm'
"""

from __future__ import annotations

import math
import resource
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.nn as nn

from training.core.callbacks import Callbacks
from training.core.checkpoint import (
    CheckpointError,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    read_checkpoint_config,
    save_checkpoint,
)
from training.core.config import ConfigError, PretrainConfig
from training.core.distributed import (
    DistContext,
    broadcast_object,
    destroy_distributed,
    init_distributed,
    parallelize,
)
from training.core.loops.common import optimizer_step, stop_or_checkpoint

__all__ = ["train", "forward_backward", "evaluate", "autocast_dtype", "peak_flops", "StopSignal", "mlm_batch"]

# Under FSDP, models up to this size are initialized in full on rank 0 and scattered (reproducible
# across world sizes); larger ones are initialized shard by shard.
_FULL_INIT_MAX_PARAMS = 2_000_000_000

# Dense bf16 peak (TFLOP/s) of common accelerators, for MFU. Unknown devices report no MFU
# unless PretrainConfig.peak_tflops is set.
_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
                "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}


def autocast_dtype(cfg: PretrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 when asked (or ``auto`` on a CUDA device with bf16), else None (fp32)."""
    if cfg.dtype == "fp32":
        return None
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if cfg.dtype == "bf16":
            raise ConfigError("dtype", "this GPU does not support bf16", "use dtype='fp32' or 'auto'")
        return None
    return torch.bfloat16 if cfg.dtype == "bf16" else None  # CPU: fp32 unless bf16 explicitly


def peak_flops(cfg: PretrainConfig, device: torch.device) -> float:
    """Peak FLOP/s of one device for MFU: ``cfg.peak_tflops``, a known GPU, or 0 (MFU not reported)."""
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in _PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return 0.0


class StopSignal:
    """Turns SIGTERM (and SIGINT when asked) into a flag the loop polls once per step."""

    def __init__(self, catch_sigint: bool = False) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._signals = [signal.SIGTERM] + ([signal.SIGINT] if catch_sigint else [])

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for s in self._signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def mlm_batch(tokens: torch.Tensor, tokenizer_info: dict[str, Any], rate: float,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-LM inputs and labels for a micro-batch of token ids ``(B, T)`` (80/10/10 rule)."""
    from training.core.losses import mlm_mask

    return mlm_mask(tokens, mask_id=tokenizer_info["mask_id"], vocab_size=tokenizer_info["vocab_size"],
                    rate=rate, special_ids=tokenizer_info["special_ids"], generator=generator)


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], cfg: PretrainConfig,
             ctx: DistContext, amp: ContextManager[Any] | None = None,
             tokenizer_info: dict[str, Any] | None = None) -> dict[str, float]:
    """Token-weighted mean loss over fixed validation batches, averaged over ranks.

    For ``mlm`` the masks come from a generator seeded by ``cfg.seed`` so that every
    evaluation scores the same positions.
    """
    from training.core.losses import perplexity

    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (sum of losses, tokens)
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * (ctx.rank + 1))
    for inputs, targets in batches:
        inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
        if cfg.objective == "mlm":
            assert tokenizer_info is not None
            inputs, targets = mlm_batch(inputs, tokenizer_info, cfg.mlm_rate, gen)
        with amp or nullcontext():
            loss = model(inputs, targets=targets)  # mean over the scored tokens (fused head + loss)
        count = (targets != -100).sum()
        total[0] += loss.double() * count
        total[1] += count
    if ctx.is_distributed:
        torch.distributed.all_reduce(total)
    model.train(was_training)
    loss = float(total[0] / total[1].clamp(min=1))
    return {"val/loss": loss, "val/perplexity": perplexity(loss)}


def forward_backward(model: nn.Module, micro: list[tuple[torch.Tensor, torch.Tensor]], ctx: DistContext,
                     amp: Callable[[], ContextManager[Any]] = nullcontext) -> float:
    """Accumulate the gradient of one optimizer step over ``micro`` batches; return the step's loss.

    Each micro-batch loss (mean over its scored tokens, ``targets != -100``) is weighted by its
    share of the scored tokens of the whole global batch (all micro-batches of all ranks), so
    the accumulated gradient is the gradient of the mean over every scored token: the same as
    one big batch, whatever the split into micro-batches and ranks. FSDP averages gradients
    over ranks, hence the ``world_size`` factor. Returns that global mean loss (all ranks agree).
    """
    counts = torch.stack([(t != -100).sum() for _, t in micro]).double()  # (accum,)
    global_count = counts.sum()
    if ctx.is_distributed:
        torch.distributed.all_reduce(global_count)
    total = max(float(global_count), 1.0)
    step_loss = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for (inputs, targets), count in zip(micro, counts):
        with amp():
            # mean cross-entropy over this micro-batch's scored tokens, = lm_loss(model(inputs), targets)
            # but fused and chunked so the (B, T, V) logits are never stored
            loss = model(inputs, targets=targets)
        (loss * (float(count) * ctx.world_size / total)).backward()
        step_loss += loss.detach().double() * count
    if ctx.is_distributed:
        torch.distributed.all_reduce(step_loss)
    return float(step_loss) / total


def _memory_metrics(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"memory/max_reserved(GiB)": torch.cuda.max_memory_reserved(device) / 2**30,
                "memory/max_active(GiB)": torch.cuda.max_memory_allocated(device) / 2**30}
    # CPU: the process's peak resident set (ru_maxrss is KiB on Linux)
    return {"memory/max_rss(GiB)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _tokenizer_info(cfg: PretrainConfig) -> dict[str, Any] | None:
    """mask id, vocabulary size and special ids for masked-LM (needs ``tokenizer_dir``)."""
    if cfg.objective != "mlm":
        return None
    if not cfg.tokenizer_dir:
        raise ConfigError("tokenizer_dir", "masked-LM pretraining needs the tokenizer (for its mask token)",
                          "set tokenizer_dir to the folder written by `cli tokenizer`")
    from training.core.tokenizer import StudioTokenizer

    tok = StudioTokenizer.load(cfg.tokenizer_dir)
    if tok.mask_id is None:
        raise ConfigError("tokenizer_dir", f"the tokenizer in {cfg.tokenizer_dir} has no mask token",
                          "train a tokenizer with this studio (it adds <|mask|>) or use objective='clm'")
    return {"mask_id": tok.mask_id, "vocab_size": min(tok.vocab_size, cfg.model.vocab_size),
            "special_ids": sorted(tok.special_ids)}


def _resolve_resume(cfg: PretrainConfig) -> str | None:
    """Which checkpoint to resume from: explicit path, ``auto`` (the run's latest, if any) or none."""
    if not cfg.resume_from:
        return None
    if cfg.resume_from == "auto":
        found = latest_checkpoint(cfg.out_dir) if Path(cfg.out_dir).exists() else None
        return None if found is None else str(found)
    return str(find_checkpoint(cfg.resume_from))


def _build_model(cfg: PretrainConfig, ctx: DistContext) -> nn.Module:
    """Build the model on the meta device, transform it from the outside, then materialize and init.

    One process: ``init_weights(seed)``. Under FSDP, models up to ``_FULL_INIT_MAX_PARAMS``
    are initialized in full on rank 0 exactly as one process would, and each rank receives its
    shards (so a seed gives the same initial weights whatever the world size); larger models
    draw each shard on its own rank (``init_weights`` on DTensors), never materializing the
    full model.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from training.core.model import Transformer

    with torch.device("meta"):
        model = Transformer(cfg.model)
    parallelize(model, ctx, activation_checkpointing=cfg.activation_checkpointing, compile=cfg.compile,
                mixed_precision=cfg.fsdp_mixed_precision)
    model.to_empty(device=ctx.device)
    torch.manual_seed(cfg.seed)
    if not ctx.is_distributed:
        model.init_weights(seed=cfg.seed)
    elif cfg.model.n_params() <= _FULL_INIT_MAX_PARAMS:
        model.reset_rope()  # buffers; every parameter is overwritten by rank 0's full init below
        full: dict[str, torch.Tensor] = {}
        if ctx.is_main:
            reference = Transformer(cfg.model)  # on CPU, initialized in __init__
            reference.init_weights(seed=cfg.seed)
            full = reference.state_dict()
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        model.init_weights(seed=None)
    return model


def train(cfg: PretrainConfig, callbacks: Callbacks | None = None) -> dict[str, Any]:
    """Run pretraining as configured and return a summary.

    The summary holds ``status`` (``"completed"`` or ``"cancelled"``), ``step``, ``loss``,
    ``val/loss`` (if validated), ``checkpoint`` (the last one written), ``tokens`` and
    ``elapsed_time``. Works the same under ``torchrun`` (FSDP2) and in one process.
    """
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, callbacks or Callbacks(), ctx)
    finally:
        destroy_distributed(ctx)


def _train(cfg: PretrainConfig, callbacks: Callbacks, ctx: DistContext) -> dict[str, Any]:
    from training.core.data.sampler import PackedSampler
    from training.core.data.shards import TokenShards
    from training.core.optim import build_optimizer, build_scheduler

    cb = callbacks if ctx.is_main else Callbacks()  # only rank 0 reports
    out_dir = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)

    # ---- data ---------------------------------------------------------------------------
    if not cfg.data.dataset_dir:
        raise ConfigError("data.dataset_dir", "no token shards given",
                          "run `python -m training.core.cli prepare` and set data.dataset_dir to its output")
    train_shards = TokenShards(cfg.data.dataset_dir, "train")
    if train_shards.vocab_size > cfg.model.vocab_size:
        raise ConfigError("model.vocab_size",
                          f"the shards were tokenized with {train_shards.vocab_size} tokens but the model has "
                          f"only {cfg.model.vocab_size} embeddings",
                          f"set model.vocab_size={train_shards.vocab_size}")
    sampler = PackedSampler(train_shards, cfg.data.seq_len, cfg.data.micro_batch_size,
                            rank=ctx.rank, world_size=ctx.world_size, seed=cfg.data.seed)
    val_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    if cfg.data.val_batches > 0:
        try:
            val_batches = sampler.val_batches(cfg.data.val_batches)  # fixed, this rank's rows
        except (FileNotFoundError, ValueError) as e:
            cb.on_log(f"validation disabled: {e}")
    tok_info = _tokenizer_info(cfg)
    mlm_gen = torch.Generator().manual_seed(cfg.seed * 7919 + ctx.rank)  # masks: own stream per rank

    # ---- model, optimizer, schedule -----------------------------------------------------
    model = _build_model(cfg, ctx)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    amp_dtype = autocast_dtype(cfg, ctx.device)

    def amp() -> ContextManager[Any]:
        return torch.autocast(ctx.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    # ---- resume or start ----------------------------------------------------------------
    start_step, tokens_seen, last_ckpt = 0, 0, ""
    resume = broadcast_object(_resolve_resume(cfg) if ctx.is_main else None, ctx)
    if resume is not None:
        saved = read_checkpoint_config(resume).get("model", {})
        changed = sorted(k for k, v in cfg.model.to_dict().items() if k in saved and saved[k] != v)
        if changed:
            raise CheckpointError(resume, f"the model settings differ from the checkpoint's: {', '.join(changed)}",
                                  "resume with the model settings of the run's config.json, or start a new run "
                                  "with init_from")
        state = load_checkpoint(resume, model, optimizer, ctx=ctx)
        start_step, last_ckpt = state["step"], state["path"]
        scheduler.load_state_dict(state["trainer_state"]["scheduler"])
        tokens_seen = int(state["trainer_state"].get("tokens_seen", 0))
        rank_state = state["rank_state"]
        # the sampler's position counts global batches: the same on every rank and world size
        sampler.load_state_dict(rank_state["sampler"])
        if state["same_world_size"]:
            mlm_gen.set_state(rank_state["mlm_generator"])
        cb.on_log(f"resumed from {state['path']} at step {start_step}")
    else:
        if ctx.is_main and out_dir.exists() and latest_checkpoint(out_dir) is not None:
            cb.on_log(f"{out_dir} already holds checkpoints and resume_from is not set: starting over "
                      "(checkpoints of the same steps are kept aside as *.superseded-*)")
        if cfg.init_from:
            load_model_weights(cfg.init_from, model, ctx=ctx)
            cb.on_log(f"initialized weights from {cfg.init_from}")
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(cfg.to_json(), encoding="utf-8")
        if cfg.tokenizer_dir and not (out_dir / "tokenizer").exists():
            shutil.copytree(cfg.tokenizer_dir, out_dir / "tokenizer")

    global_batch_tokens = cfg.tokens_per_step * ctx.world_size
    flops_per_token = cfg.model.flops_per_token(cfg.data.seq_len)
    peak = peak_flops(cfg, ctx.device)
    n_params = sum(p.numel() for p in model.parameters())
    cb.on_start({"config": cfg.to_dict(), "world_size": ctx.world_size, "device": str(ctx.device),
                 "dtype": str(amp_dtype or torch.float32).replace("torch.", ""), "n_params": int(n_params),
                 "start_step": start_step, "total_steps": cfg.steps, "tokens_per_step": global_batch_tokens,
                 "out_dir": str(out_dir)})

    def checkpoint(step: int) -> str:
        path = save_checkpoint(
            out_dir, step, model, optimizer, ctx=ctx, config=cfg.to_dict(), keep_last=cfg.keep_last,
            trainer_state={"scheduler": scheduler.state_dict(), "tokens_seen": tokens_seen},
            rank_state={"sampler": sampler.state_dict(), "mlm_generator": mlm_gen.get_state()},
        )
        cb.on_checkpoint(step, str(path))
        return str(path)

    # ---- the loop -----------------------------------------------------------------------
    model.train()
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(sampler)
    params = [p for p in model.parameters() if p.requires_grad]
    status, step, loss_value = "completed", start_step, float("nan")
    last_val: dict[str, float] = {}
    t_start = time.perf_counter()
    steps_done = 0
    with StopSignal() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            # fetch every micro-batch of the step first: the token count weights the losses
            micro: list[tuple[torch.Tensor, torch.Tensor]] = []
            for _ in range(cfg.data.grad_accum_steps):
                inputs, targets = next(batches)  # (B, T), (B, T)
                inputs, targets = inputs.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
                if cfg.objective == "mlm":
                    inputs, targets = mlm_batch(inputs, tok_info or {}, cfg.mlm_rate, mlm_gen)
                micro.append((inputs, targets))
            t_data = time.perf_counter() - t0

            loss_value = forward_backward(model, micro, ctx, amp)

            grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.optim.grad_clip)
            step += 1
            steps_done += 1
            tokens_seen += global_batch_tokens
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            dt = time.perf_counter() - t0

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - t_start
                tps = cfg.tokens_per_step / dt  # per device, as torchtitan reports it
                metrics = {
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "throughput(tps)": tps,
                    "throughput/global(tps)": tps * ctx.world_size,
                    "tflops": flops_per_token * tps / 1e12,
                    "time_metrics/data_loading(%)": 100.0 * t_data / dt,
                    "time_metrics/step_time(s)": dt,
                    "current_steps": step,
                    "total_steps": cfg.steps,
                    "tokens_seen": tokens_seen,
                    "elapsed_time": elapsed,
                    "remaining_time": elapsed / steps_done * (cfg.steps - step),
                    **_memory_metrics(ctx.device),
                }
                if peak > 0:
                    metrics["mfu(%)"] = 100.0 * flops_per_token * tps / peak
                cb.on_step(step, metrics)
            if not math.isfinite(loss_value):
                cb.on_log(f"loss is {loss_value} at step {step}; stopping (lower optim.lr or check the data)")
                status = "diverged"
                break

            if val_batches and cfg.eval_every and step % cfg.eval_every == 0:
                last_val = evaluate(model, val_batches, cfg, ctx, amp(), tok_info)
                cb.on_eval(step, last_val)
            cancelled, path = stop_or_checkpoint(step, cfg, ctx, stop, cb, checkpoint)
            last_ckpt = path or last_ckpt
            if cancelled:
                status = "cancelled"
                break

    # ---- the end --------------------------------------------------------------------------
    if status == "completed" and step > start_step:
        if val_batches and not (cfg.eval_every and step % cfg.eval_every == 0):
            last_val = evaluate(model, val_batches, cfg, ctx, amp(), tok_info)
            cb.on_eval(step, last_val)
        last_ckpt = checkpoint(step)
    summary: dict[str, Any] = {
        "status": status, "step": step, "start_step": start_step, "total_steps": cfg.steps,
        "loss": loss_value, "tokens": tokens_seen, "checkpoint": last_ckpt,
        "elapsed_time": time.perf_counter() - t_start, "out_dir": str(out_dir), **last_val,
    }
    cb.on_end(summary)
    return summary

