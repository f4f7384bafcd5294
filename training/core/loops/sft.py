"""Supervised fine-tuning: chat records, loss on the assistant turns, packing, optional LoRA.

Read :func:`train` top to bottom: load the starting model and its tokenizer (``init_from``),
read and tokenize the records (``{messages}`` or ``{prompt, completion}``) with the chat
template, pack them into rows of ``max_seq_len`` tokens, optionally put LoRA adapters on the
model, shard it with FSDP2 when there are several ranks, then for each step accumulate the
token-weighted loss of ``grad_accum_steps`` micro-batches (the same
:func:`~training.core.loops.pretrain.forward_backward` as pretraining: only the scored tokens
count), clip, step, report; evaluate and checkpoint periodically and at the end.

Checkpoints use the pretraining layout (``out_dir/checkpoints/step_N``, ``latest``) and record
the model shape, so an SFT checkpoint loads with ``cli.load_model_and_tokenizer`` like any
policy (chat, serving, export, labeling generation). With LoRA the checkpoint's
``model.safetensors`` holds the merged plain weights; its DCP state keeps the adapters for an
exact resume. A SIGTERM (or ``should_stop()``) ends the step, writes a checkpoint and returns
``status="cancelled"``.

Domain-specific tuning (continued pretraining on a domain dataset version) is the pretraining
loop started from a checkpoint: ``cli pretrain --set init_from=RUN --set data.dataset_dir=…``.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager

import torch
import torch.nn as nn

from training.core.callbacks import Callbacks
from training.core.config import ConfigError, SFTConfig
from training.core.data.records import IndexSampler, read_records, split_records
from training.core.data.sft import SFTExample, collate_rows, pack_rows, tokenize_examples
from training.core.distributed import DistContext, destroy_distributed, init_distributed
from training.core.loops.common import (
    check_seq_len,
    checkpoint_config,
    load_start,
    optimizer_step,
    prepare_model,
    prepare_out_dir,
    report_start,
    resume_if_asked,
    stop_or_checkpoint,
    write_checkpoint,
)
from training.core.loops.pretrain import StopSignal, forward_backward
from training.core.tokenizer import StudioTokenizer

__all__ = ["train", "build_rows", "evaluate"]


def build_rows(cfg: SFTConfig, tokenizer: StudioTokenizer, world_size: int = 1
               ) -> tuple[list[SFTExample], list[SFTExample], dict[str, Any]]:
    """Train and held-out rows from ``train_file`` (and ``eval_file``), refusing too little data.

    Returns ``(train_rows, eval_rows, info)``; ``info`` counts examples and skipped records.
    """
    records = read_records(cfg.train_file)
    if cfg.eval_file:
        train_records, eval_records = records, read_records(cfg.eval_file, "eval_file")
    else:
        train_records, eval_records = split_records(records, cfg.eval_fraction, cfg.seed)
    examples, problems = tokenize_examples(train_records, tokenizer, assistant_only_loss=cfg.assistant_only_loss)
    if len(examples) < cfg.min_examples:
        detail = f"; e.g. {problems[0]}" if problems else ""
        raise ConfigError("train_file", f"{len(examples)} usable SFT examples in {cfg.train_file}, "
                                        f"fewer than min_examples={cfg.min_examples}{detail}",
                          "records are {messages: [...]} with an assistant turn, or {prompt, completion}")
    rows = pack_rows(examples, cfg.max_seq_len, packing=cfg.packing)
    need = cfg.micro_batch_size * world_size
    if len(rows) < need:
        raise ConfigError("micro_batch_size", f"the data fills {len(rows)} rows of {cfg.max_seq_len} tokens, fewer "
                                              f"than one batch of {need}",
                          "lower micro_batch_size or max_seq_len, or add records")
    eval_examples, _ = tokenize_examples(eval_records, tokenizer, assistant_only_loss=cfg.assistant_only_loss)
    eval_rows = pack_rows(eval_examples, cfg.max_seq_len, packing=cfg.packing)
    info = {"records": len(records), "examples": len(examples), "skipped": len(problems), "rows": len(rows),
            "eval_rows": len(eval_rows), "problems": problems[:5]}
    return rows, eval_rows, info


@torch.no_grad()
def evaluate(model: nn.Module, rows: list[SFTExample], cfg: SFTConfig, pad_id: int, ctx: DistContext,
             amp: ContextManager[Any] | None = None) -> dict[str, float]:
    """Token-weighted mean loss of the scored tokens over the held-out rows, split over ranks (with N
    ranks the last ``len(rows) % N`` rows are left out: every rank must run as many forwards)."""
    from training.core.losses import perplexity

    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (sum of losses, scored tokens)
    usable = len(rows) - len(rows) % ctx.world_size  # the same number of forwards on every rank (FSDP)
    mine = rows[:usable][ctx.rank::ctx.world_size]
    for start in range(0, len(mine), cfg.micro_batch_size):
        inputs, targets = collate_rows(mine[start:start + cfg.micro_batch_size], pad_id)
        inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
        count = (targets != -100).sum()
        with amp or nullcontext():
            loss = model(inputs, targets=targets)
        total[0] += loss.double() * count
        total[1] += count
    if ctx.is_distributed:
        torch.distributed.all_reduce(total)
    model.train(was_training)
    loss = float(total[0] / total[1].clamp(min=1))
    return {"eval/loss": loss, "eval/perplexity": perplexity(loss)}


def train(cfg: SFTConfig, callbacks: Callbacks | None = None) -> dict[str, Any]:
    """Run supervised fine-tuning as configured and return a summary.

    The summary holds ``status`` (``completed``, ``cancelled`` or ``diverged``), ``step``,
    ``loss``, ``eval/loss`` (if evaluated), ``checkpoint`` (the last one written), ``tokens``
    and ``elapsed_time``. Works the same under ``torchrun`` (FSDP2) and in one process.
    """
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, callbacks or Callbacks(), ctx)
    finally:
        destroy_distributed(ctx)


def _train(cfg: SFTConfig, callbacks: Callbacks, ctx: DistContext) -> dict[str, Any]:
    cb = callbacks if ctx.is_main else Callbacks()  # only rank 0 reports
    out_dir = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)

    # ---- model, tokenizer, data (every refusal happens here, before any compute) ------------
    model, tokenizer, start_info = load_start(cfg)
    check_seq_len(cfg, model.cfg)
    rows, eval_rows, data_info = build_rows(cfg, tokenizer, ctx.world_size)
    sampler = IndexSampler(len(rows), cfg.micro_batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed)
    optimizer, scheduler, amp = prepare_model(model, cfg, ctx)  # LoRA, FSDP2, AdamW, schedule

    # ---- resume or start ----------------------------------------------------------------
    start_step, tokens_seen, last_ckpt = 0, 0, ""
    state = resume_if_asked(cfg, "sft", model, optimizer, scheduler, sampler, ctx)
    if state is not None:
        start_step, last_ckpt = state["step"], state["path"]
        tokens_seen = int(state["trainer_state"].get("tokens_seen", 0))
        cb.on_log(f"resumed from {state['path']} at step {start_step}")

    def run_config() -> dict[str, Any]:  # saved as out_dir/config.json and with every checkpoint
        return checkpoint_config(cfg, "sft", model.cfg, out_dir, lora=cfg.lora.to_dict(), base=start_info["source"],
                                 base_fingerprint=start_info["base_fingerprint"])

    prepare_out_dir(cfg, tokenizer, out_dir, ctx, run_config)

    report_start(cb, cfg, "sft", model, ctx, amp, start_step=start_step, out_dir=out_dir,
                 init_from=start_info["source"], data_info=data_info)

    def checkpoint(step: int) -> str:
        path = write_checkpoint(out_dir, step, model, optimizer, ctx, config=run_config(), keep_last=cfg.keep_last,
                                trainer_state={"scheduler": scheduler.state_dict(), "tokens_seen": tokens_seen},
                                sampler=sampler)
        cb.on_checkpoint(step, path)
        return path

    # ---- the loop -----------------------------------------------------------------------
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    status, step, loss_value = "completed", start_step, float("nan")
    last_eval: dict[str, float] = {}
    t_start = time.perf_counter()
    steps_done = 0
    with StopSignal() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            micro = [collate_rows([rows[i] for i in sampler.next_batch()], tokenizer.pad_id)
                     for _ in range(cfg.grad_accum_steps)]  # [(inputs (B, T), targets (B, T))]
            real_tokens = sum(int((r.ne(tokenizer.pad_id)).sum()) for r, _ in micro)
            micro = [(x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)) for x, y in micro]

            loss_value = forward_backward(model, micro, ctx, amp)  # mean over the scored tokens

            grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.optim.grad_clip)
            step += 1
            steps_done += 1
            tokens_seen += real_tokens * ctx.world_size
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            dt = time.perf_counter() - t0

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - t_start
                cb.on_step(step, {
                    "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                    "tokens/s": real_tokens / dt, "scored_tokens": sum(int((y != -100).sum()) for _, y in micro),
                    "current_steps": step, "total_steps": cfg.steps, "tokens_seen": tokens_seen,
                    "elapsed_time": elapsed, "remaining_time": elapsed / steps_done * (cfg.steps - step),
                })
            if not math.isfinite(loss_value):
                cb.on_log(f"loss is {loss_value} at step {step}; stopping (lower optim.lr or check the data)")
                status = "diverged"
                break
            if eval_rows and cfg.eval_every and step % cfg.eval_every == 0:
                last_eval = evaluate(model, eval_rows, cfg, tokenizer.pad_id, ctx, amp())
                cb.on_eval(step, last_eval)
            cancelled, path = stop_or_checkpoint(step, cfg, ctx, stop, cb, checkpoint)
            last_ckpt = path or last_ckpt
            if cancelled:
                status = "cancelled"
                break

    # ---- the end --------------------------------------------------------------------------
    if status == "completed" and step > start_step:
        if eval_rows and not (cfg.eval_every and step % cfg.eval_every == 0):
            last_eval = evaluate(model, eval_rows, cfg, tokenizer.pad_id, ctx, amp())
            cb.on_eval(step, last_eval)
        last_ckpt = checkpoint(step)
    summary: dict[str, Any] = {
        "status": status, "kind": "sft", "step": step, "start_step": start_step, "total_steps": cfg.steps,
        "loss": loss_value, "tokens": tokens_seen, "checkpoint": last_ckpt,
        "elapsed_time": time.perf_counter() - t_start, "out_dir": str(out_dir), **last_eval,
    }
    cb.on_end(summary)
    return summary
