"""Reward modeling: a transformer with a scalar head, Bradley–Terry loss on preference pairs.

Read :func:`train` top to bottom: load the starting model (``init_from``) and its tokenizer,
read and tokenize the preference records (refusing a file with fewer than ``min_pairs``
usable pairs), put a :class:`~training.core.heads.ScalarHead` on the model
(:class:`~training.core.heads.RewardModel`), optionally LoRA adapters, shard it with FSDP2
when there are several ranks; then for each step score the chosen and rejected answers of
``grad_accum_steps`` micro-batches of pairs in one forward each, accumulate the gradient of
:func:`~training.core.losses.bradley_terry_loss` (optional ``margin`` and reward-centering
term), clip, step, report ``loss``, ``accuracy``, ``margin``, ``mean_reward``,
``min_reward``, ``max_reward``. Evaluation reports the held-out pairwise accuracy and a
calibration table (predicted P(chosen ≻ rejected) in bins against how often that was right),
which ends in the summary (``calibration``) and in ``out_dir/calibration.json``.

Checkpoints use the pretraining layout and also carry the scalar head; rebuild one with
:func:`load_reward_model`. A SIGTERM (or ``should_stop()``) ends the step, writes a
checkpoint and returns ``status="cancelled"``; ``resume_from`` continues exactly.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
import torch.nn as nn

from training.core.callbacks import Callbacks
from training.core.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, read_checkpoint_config
from training.core.config import ConfigError, RewardConfig
from training.core.data.preference import PreferencePair, collate_pairs, tokenize_pairs
from training.core.data.records import IndexSampler, read_records, split_records
from training.core.distributed import DistContext, destroy_distributed, init_distributed
from training.core.heads import RewardModel
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
from training.core.loops.pretrain import StopSignal
from training.core.losses import bradley_terry_loss
from training.core.tokenizer import StudioTokenizer

__all__ = ["train", "build_pairs", "reward_step", "evaluate", "calibration_table", "load_reward_model",
           "score_pairs"]


def build_pairs(cfg: RewardConfig, tokenizer: StudioTokenizer, world_size: int = 1
                ) -> tuple[list[PreferencePair], list[PreferencePair], dict[str, Any]]:
    """Train and held-out pairs from ``train_file`` (and ``eval_file``), refusing too few pairs."""
    records = read_records(cfg.train_file)
    if cfg.eval_file:
        train_records, eval_records = records, read_records(cfg.eval_file, "eval_file")
    else:
        train_records, eval_records = split_records(records, cfg.eval_fraction, cfg.seed)
    pairs, problems = tokenize_pairs(train_records, tokenizer, max_seq_len=cfg.max_seq_len, use_margin=cfg.use_margin)
    need = max(cfg.min_pairs, cfg.micro_batch_size * world_size)
    if len(pairs) < need:
        detail = f"; e.g. {problems[0]}" if problems else ""
        raise ConfigError("train_file", f"{len(pairs)} usable preference pairs for training in {cfg.train_file}, "
                                        f"fewer than {need} (min_pairs={cfg.min_pairs}, one batch = "
                                        f"{cfg.micro_batch_size * world_size}){detail}",
                          "label more pairs in the labeling app and take a new snapshot, or lower min_pairs")
    eval_pairs, _ = tokenize_pairs(eval_records, tokenizer, max_seq_len=cfg.max_seq_len, use_margin=cfg.use_margin)
    info = {"records": len(records), "pairs": len(pairs), "eval_pairs": len(eval_pairs), "skipped": len(problems),
            "problems": problems[:5]}
    return pairs, eval_pairs, info


def score_pairs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and of the rejected rows of a :func:`collate_pairs` batch, (B,) each.

    Both halves go through the model in one forward of ``2B`` right-padded rows.
    """
    rewards = model(batch["input_ids"], attention_mask=batch["attention_mask"])  # (2B,)
    B = rewards.shape[0] // 2
    return rewards[:B], rewards[B:]


def reward_step(model: nn.Module, micro: list[dict[str, torch.Tensor]], cfg: RewardConfig, ctx: DistContext,
                amp: Callable[[], ContextManager[Any]] = nullcontext) -> dict[str, float]:
    """Accumulate the gradient of one optimizer step over ``micro`` batches of pairs; return its metrics.

    Each micro-batch's loss (mean over its pairs) is weighted by its share of the step's pairs,
    so the gradient is the one of the mean loss over every pair of the step (all ranks: FSDP
    averages over ranks). Metrics over the step's pairs (all ranks): ``loss``, ``accuracy``
    (share with r_chosen > r_rejected), ``margin`` (mean r_chosen - r_rejected),
    ``mean_reward``, ``min_reward``, ``max_reward`` (over chosen and rejected answers).
    """
    total = sum(int(b["margin"].shape[0]) for b in micro)
    loss_sum = 0.0
    chosen_all: list[torch.Tensor] = []
    rejected_all: list[torch.Tensor] = []
    for batch in micro:
        with amp():
            chosen, rejected = score_pairs(model, batch)
        margin = batch["margin"] if cfg.use_margin else None
        loss = bradley_terry_loss(chosen, rejected, margin, cfg.center_rewards_coefficient)
        n = int(batch["margin"].shape[0])
        (loss * (n / total)).backward()
        loss_sum += float(loss.detach()) * n
        chosen_all.append(chosen.detach().float())
        rejected_all.append(rejected.detach().float())
    c, r = torch.cat(chosen_all), torch.cat(rejected_all)
    both = torch.cat([c, r])
    means = torch.stack([torch.tensor(loss_sum / total, device=c.device), (c > r).float().mean(), (c - r).mean(),
                         both.mean()]).double()  # every rank has the same number of pairs: mean of means
    lo, hi = both.min().double(), both.max().double()
    if ctx.is_distributed:
        torch.distributed.all_reduce(means)
        means /= ctx.world_size
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    loss, accuracy, margin, mean = means.tolist()
    return {"loss": loss, "accuracy": accuracy, "margin": margin, "mean_reward": mean, "min_reward": float(lo),
            "max_reward": float(hi)}


def calibration_table(p_chosen: torch.Tensor, bins: int = 10) -> list[dict[str, float]]:
    """Reliability table of pairwise predictions: bins of predicted probability vs observed frequency.

    Each held-out pair gives two predictions: P(chosen ≻ rejected) = p, which came true, and
    P(rejected ≻ chosen) = 1 - p, which did not. Rows (non-empty bins only): ``bin_low``,
    ``bin_high``, ``count``, ``predicted`` (mean predicted probability) and ``observed`` (share
    that came true). A calibrated model has ``predicted ≈ observed`` in every row.

    >>> [(r["predicted"], r["observed"]) for r in calibration_table(torch.tensor([0.75, 0.25]), bins=2)]
    [(0.25, 0.5), (0.75, 0.5)]
    """
    p = torch.cat([p_chosen.double(), 1.0 - p_chosen.double()])  # (2N,)
    outcome = torch.cat([torch.ones_like(p_chosen.double()), torch.zeros_like(p_chosen.double())])
    idx = torch.clamp((p * bins).long(), max=bins - 1)
    rows: list[dict[str, float]] = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        if n == 0:
            continue
        rows.append({"bin_low": b / bins, "bin_high": (b + 1) / bins, "count": n,
                     "predicted": float(p[sel].mean()), "observed": float(outcome[sel].mean())})
    return rows


@torch.no_grad()
def evaluate(model: nn.Module, pairs: list[PreferencePair], cfg: RewardConfig, pad_id: int, ctx: DistContext,
             amp: ContextManager[Any] | None = None) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Held-out metrics (``eval/loss``, ``eval/accuracy``, ``eval/margin``, ``eval/mean_reward``,
    ``eval/ece``) and the calibration table over the held-out pairs, split over ranks (with N ranks
    the last ``len(pairs) % N`` are left out: every rank must run as many forwards)."""
    was_training = model.training
    model.eval()
    usable = len(pairs) - len(pairs) % ctx.world_size  # the same number of forwards on every rank (FSDP)
    mine = pairs[:usable][ctx.rank::ctx.world_size]
    chosen_parts: list[torch.Tensor] = []
    rejected_parts: list[torch.Tensor] = []
    margin_parts: list[torch.Tensor] = []
    for start in range(0, len(mine), cfg.micro_batch_size):
        batch = collate_pairs(mine[start:start + cfg.micro_batch_size], pad_id)
        batch = {k: v.to(ctx.device) for k, v in batch.items()}
        with amp or nullcontext():
            c, r = score_pairs(model, batch)
        chosen_parts.append(c.float())
        rejected_parts.append(r.float())
        margin_parts.append(batch["margin"])
    empty = torch.zeros(0, device=ctx.device)
    c = torch.cat(chosen_parts) if chosen_parts else empty
    r = torch.cat(rejected_parts) if rejected_parts else empty
    m = torch.cat(margin_parts) if margin_parts else empty
    if ctx.is_distributed:  # gather every rank's scores (small: one float per answer)
        gathered: list[Any] = [None] * ctx.world_size
        torch.distributed.all_gather_object(gathered, (c.cpu(), r.cpu(), m.cpu()))
        c = torch.cat([g[0] for g in gathered])
        r = torch.cat([g[1] for g in gathered])
        m = torch.cat([g[2] for g in gathered])
    model.train(was_training)
    c, r, m = c.cpu(), r.cpu(), m.cpu()
    loss = bradley_terry_loss(c, r, m if cfg.use_margin else None, cfg.center_rewards_coefficient)
    p = torch.sigmoid(c - r)
    table = calibration_table(p, cfg.calibration_bins)
    ece = sum(row["count"] * abs(row["predicted"] - row["observed"]) for row in table) / max(1, 2 * len(p))
    metrics = {"eval/loss": float(loss), "eval/accuracy": float((c > r).float().mean()),
               "eval/margin": float((c - r).mean()), "eval/mean_reward": float(torch.cat([c, r]).mean()),
               "eval/ece": float(ece), "eval/pairs": float(len(p))}
    return metrics, table


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[RewardModel, dict[str, Any]]:
    """Rebuild a reward model (backbone + scalar head, eval mode) from a reward run's checkpoint.

    Returns ``(model, saved config)``. Refuses checkpoints of other kinds of runs.
    """
    from training.core.config import ModelConfig
    from training.core.model import Transformer

    ckpt = find_checkpoint(path)
    saved = read_checkpoint_config(ckpt)
    if saved.get("kind") != "reward" or "model" not in saved:
        raise CheckpointError(ckpt, "not a reward-model checkpoint (no scalar head)",
                              "train one with `python -m training.core.cli reward`")
    model = RewardModel(Transformer(ModelConfig.from_dict(saved["model"])))
    plain = ckpt / "model.safetensors"
    if plain.is_file():  # a LoRA run: merged weights
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(plain)), strict=True)
    else:
        load_checkpoint(ckpt, model, None, restore_rng=False)
    return model.to(device).eval(), saved


def train(cfg: RewardConfig, callbacks: Callbacks | None = None) -> dict[str, Any]:
    """Train a reward model as configured and return a summary.

    The summary holds ``status``, ``step``, ``loss``, ``accuracy``, the last ``eval/*`` metrics,
    ``calibration`` (the held-out table, a list of rows), ``checkpoint`` and ``elapsed_time``.
    """
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, callbacks or Callbacks(), ctx)
    finally:
        destroy_distributed(ctx)


def _train(cfg: RewardConfig, callbacks: Callbacks, ctx: DistContext) -> dict[str, Any]:
    cb = callbacks if ctx.is_main else Callbacks()
    out_dir = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)

    # ---- model, tokenizer, data (every refusal happens here, before any compute) ------------
    backbone, tokenizer, start_info = load_start(cfg)
    check_seq_len(cfg, backbone.cfg)
    pairs, eval_pairs, data_info = build_pairs(cfg, tokenizer, ctx.world_size)
    sampler = IndexSampler(len(pairs), cfg.micro_batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed)
    model = RewardModel(backbone, seed=cfg.seed)
    optimizer, scheduler, amp = prepare_model(model, cfg, ctx, trainable=[model.score])  # LoRA, FSDP2, AdamW

    # ---- resume or start ----------------------------------------------------------------
    start_step, pairs_seen, last_ckpt = 0, 0, ""
    state = resume_if_asked(cfg, "reward", model, optimizer, scheduler, sampler, ctx)
    if state is not None:
        start_step, last_ckpt = state["step"], state["path"]
        pairs_seen = int(state["trainer_state"].get("pairs_seen", 0))
        cb.on_log(f"resumed from {state['path']} at step {start_step}")

    def run_config() -> dict[str, Any]:  # saved as out_dir/config.json and with every checkpoint
        return checkpoint_config(cfg, "reward", model.cfg, out_dir, lora=cfg.lora.to_dict(),
                                 head={"kind": "scalar", "dim": model.cfg.dim}, base=start_info["source"],
                                 base_fingerprint=start_info["base_fingerprint"])

    prepare_out_dir(cfg, tokenizer, out_dir, ctx, run_config)

    report_start(cb, cfg, "reward", model, ctx, amp, start_step=start_step, out_dir=out_dir,
                 init_from=start_info["source"], data_info=data_info)

    def checkpoint(step: int) -> str:
        path = write_checkpoint(out_dir, step, model, optimizer, ctx, config=run_config(), keep_last=cfg.keep_last,
                                trainer_state={"scheduler": scheduler.state_dict(), "pairs_seen": pairs_seen},
                                sampler=sampler)
        cb.on_checkpoint(step, path)
        return path

    # ---- the loop -----------------------------------------------------------------------
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    status, step, metrics = "completed", start_step, {"loss": float("nan")}
    last_eval: dict[str, float] = {}
    table: list[dict[str, float]] = []
    t_start = time.perf_counter()
    steps_done = 0
    with StopSignal() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            micro = []
            for _ in range(cfg.grad_accum_steps):
                batch = collate_pairs([pairs[i] for i in sampler.next_batch()], tokenizer.pad_id)
                micro.append({k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()})

            metrics = reward_step(model, micro, cfg, ctx, amp)

            grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.optim.grad_clip)
            step += 1
            steps_done += 1
            n_pairs = cfg.micro_batch_size * cfg.grad_accum_steps * ctx.world_size
            pairs_seen += n_pairs
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            dt = time.perf_counter() - t0

            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - t_start
                cb.on_step(step, {
                    **metrics, "lr": lr, "grad_norm": grad_norm, "pairs/s": n_pairs / dt,
                    "current_steps": step, "total_steps": cfg.steps, "pairs_seen": pairs_seen,
                    "elapsed_time": elapsed, "remaining_time": elapsed / steps_done * (cfg.steps - step),
                })
            if not math.isfinite(metrics["loss"]):
                cb.on_log(f"loss is {metrics['loss']} at step {step}; stopping (lower optim.lr or check the data)")
                status = "diverged"
                break
            if eval_pairs and cfg.eval_every and step % cfg.eval_every == 0:
                last_eval, table = evaluate(model, eval_pairs, cfg, tokenizer.pad_id, ctx, amp())
                cb.on_eval(step, last_eval)
            cancelled, path = stop_or_checkpoint(step, cfg, ctx, stop, cb, checkpoint)
            last_ckpt = path or last_ckpt
            if cancelled:
                status = "cancelled"
                break

    # ---- the end --------------------------------------------------------------------------
    if status == "completed" and step > start_step:
        if eval_pairs and not (cfg.eval_every and step % cfg.eval_every == 0):
            last_eval, table = evaluate(model, eval_pairs, cfg, tokenizer.pad_id, ctx, amp())
            cb.on_eval(step, last_eval)
        last_ckpt = checkpoint(step)
        if ctx.is_main and table:
            (out_dir / "calibration.json").write_text(json.dumps(table, indent=2), encoding="utf-8")
    summary: dict[str, Any] = {
        "status": status, "kind": "reward", "step": step, "start_step": start_step, "total_steps": cfg.steps,
        **{k: metrics[k] for k in metrics}, "pairs": pairs_seen, "checkpoint": last_ckpt,
        "elapsed_time": time.perf_counter() - t_start, "out_dir": str(out_dir), **last_eval, "calibration": table,
    }
    cb.on_end(summary)
    return summary
