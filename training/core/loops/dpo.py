"""Direct preference optimization: a policy learns from chosen/rejected pairs against a frozen reference.

Read :func:`train` top to bottom: read the pairs and refuse too few before any compute; load the
policy and the reference (same base, same tokenizer) and shard both with FSDP2 when there are
several ranks; optionally score every pair with the reference once and free it; resume if
asked; then for each step take ``grad_accum_steps`` micro-batches of pairs, run chosen and
rejected answers through the policy in one concatenated forward, compute the DPO loss
(:func:`training.core.losses.dpo_loss`: sigmoid, IPO or hinge), accumulate, clip, step, report.
Metrics use the names TRL users know: ``loss``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected`` (evaluation:
the same under ``eval/``).

A SIGTERM (or ``should_stop()``) finishes the step, writes a checkpoint and ends with
``status="cancelled"``; ``resume_from="auto"`` continues exactly (same pairs, same order).

>>> from training.core.config import DPOConfig
>>> DPOConfig(init_from="smollm2", train_file="pairs.jsonl").beta
0.1
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import torch
import torch.nn as nn

from training.core.callbacks import Callbacks
from training.core.config import ConfigError, DPOConfig
from training.core.data.preference import PreferencePair, collate_pairs, tokenize_pairs
from training.core.data.records import IndexSampler, read_records, split_records
from training.core.distributed import (
    DistContext,
    broadcast_object,
    destroy_distributed,
    init_distributed,
)
from training.core.losses import dpo_loss, token_logprobs
from training.core.loops.common import (
    check_seq_len,
    checkpoint_config,
    optimizer_step,
    prepare_out_dir,
    resolve_resume,
    stop_or_checkpoint,
)
from training.core.loops.policy import amp_factory, check_same_base, frozen, load_model_for, shard

__all__ = ["train", "sequence_logps", "dpo_batch_losses", "load_pairs", "METRICS"]

#: Names of the metrics a DPO step reports (evaluation: the same with an ``eval/`` prefix).
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor], *, average: bool = False) -> torch.Tensor:
    """Log-probability of each row's answer tokens under ``model``: (rows,), summed (or averaged).

    ``batch`` is :func:`~training.core.data.preference.collate_pairs` output (right-padded, so
    causal attention never lets a real token see padding and no mask is needed). The logits at
    position t score token t+1; only answer tokens (``completion_mask``) count.
    """
    ids, comp = batch["input_ids"], batch["completion_mask"]
    targets = ids[:, 1:].masked_fill(comp[:, 1:] == 0, -100)  # (R, T-1)
    logits = model(ids[:, :-1])  # (R, T-1, V)
    logps = token_logprobs(logits, targets)  # (R, T-1), 0 off the answers
    total = logps.sum(-1)
    if average:
        total = total / (targets != -100).sum(-1).clamp(min=1)
    return total


def dpo_batch_losses(policy: nn.Module, ref: nn.Module | None, batch: dict[str, torch.Tensor], cfg: DPOConfig,
                     amp: Callable[[], ContextManager[Any]] = nullcontext, ref_rows: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO on one collated batch of B pairs: ``(losses, chosen_rewards, rejected_rewards, chosen_logps,
    rejected_logps)``, each (B,). The chosen and rejected answers go through the policy in one
    concatenated forward; the reference's log-probs come from ``ref_rows`` (B, 2) when precomputed,
    else from a no-grad forward of ``ref``. IPO compares per-token mean log-probs.
    """
    b = batch["input_ids"].shape[0] // 2
    average = cfg.loss_type == "ipo"
    with amp():
        logps = sequence_logps(policy, batch, average=average).float()  # (2B,): chosen rows, then rejected
        if ref_rows is None:
            assert ref is not None, "no reference model and no precomputed reference log-probs"
            with torch.no_grad():
                ref_lp = sequence_logps(ref, batch, average=average).float()
            ref_rows = torch.stack([ref_lp[:b], ref_lp[b:]], dim=1)
    losses, rc, rr = dpo_loss(logps[:b], logps[b:], ref_rows[:, 0], ref_rows[:, 1], beta=cfg.beta,
                              loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing)
    return losses, rc, rr, logps[:b], logps[b:]


def load_pairs(cfg: DPOConfig, tokenizer: Any) -> tuple[list[PreferencePair], list[PreferencePair], list[str]]:
    """``(train_pairs, eval_pairs, problems)`` tokenized from ``train_file`` (and ``eval_file``)."""
    records = read_records(cfg.train_file, "train_file")
    if cfg.eval_file:
        train_records, eval_records = records, read_records(cfg.eval_file, "eval_file")
    else:
        train_records, eval_records = split_records(records, cfg.eval_fraction, cfg.seed)
    kwargs = dict(max_seq_len=cfg.max_seq_len, max_prompt_len=cfg.max_prompt_len, use_margin=False)
    train_pairs, problems = tokenize_pairs(train_records, tokenizer, **kwargs)  # type: ignore[arg-type]
    eval_pairs, eval_problems = tokenize_pairs(eval_records, tokenizer, **kwargs)  # type: ignore[arg-type]
    return train_pairs, eval_pairs, problems + [f"eval {p}" for p in eval_problems]


def _refuse_too_few(n: int, cfg: DPOConfig, what: str, ctx: DistContext) -> None:
    need = max(cfg.min_pairs, cfg.micro_batch_size * ctx.world_size)
    if n < need:
        raise ConfigError("train_file", f"{what} holds {n} usable preference pairs; at least {need} are needed "
                                        f"(min_pairs={cfg.min_pairs}, one batch = {cfg.micro_batch_size} x "
                                        f"{ctx.world_size} ranks)",
                          "label more comparisons in the snapshot, or lower min_pairs / micro_batch_size")


def train(cfg: DPOConfig, callbacks: Callbacks | None = None) -> dict[str, Any]:
    """Run DPO as configured and return a summary (``status``, ``step``, ``loss``, ``checkpoint`` …)."""
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, callbacks or Callbacks(), ctx)
    finally:
        destroy_distributed(ctx)


class _Scores:
    """Sums of the per-pair statistics over micro-batches and ranks, turned into the metrics."""

    def __init__(self, device: torch.device) -> None:
        self.t = torch.zeros(7, dtype=torch.float64, device=device)

    def add(self, losses: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, lc: torch.Tensor,
            lr: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        w = torch.ones_like(rc) if keep is None else keep.to(rc.dtype)  # (B,) 1 for pairs that count
        self.t += torch.stack([(losses.detach() * w).sum(), (rc * w).sum(), (rr * w).sum(),
                               ((rc > rr).float() * w).sum(), (lc.detach() * w).sum(), (lr.detach() * w).sum(),
                               w.sum()]).double()

    def metrics(self, ctx: DistContext, prefix: str = "") -> dict[str, float]:
        if ctx.is_distributed:
            torch.distributed.all_reduce(self.t)
        s = (self.t / self.t[6].clamp(min=1)).tolist()
        return {f"{prefix}loss": s[0], f"{prefix}rewards/chosen": s[1], f"{prefix}rewards/rejected": s[2],
                f"{prefix}rewards/margins": s[1] - s[2], f"{prefix}rewards/accuracies": s[3],
                f"{prefix}logps/chosen": s[4], f"{prefix}logps/rejected": s[5]}


def _train(cfg: DPOConfig, callbacks: Callbacks, ctx: DistContext) -> dict[str, Any]:
    from training.core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from training.core.optim import build_optimizer, build_scheduler

    cb = callbacks if ctx.is_main else Callbacks()  # only rank 0 reports
    out_dir = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)

    # ---- refuse what cannot work, before any compute ----------------------------------------
    n_records = len(read_records(cfg.train_file, "train_file"))
    _refuse_too_few(n_records, cfg, cfg.train_file, ctx)
    policy, tok, base = load_model_for(cfg, cfg.init_from, "init_from")
    check_seq_len(cfg, policy.cfg)
    train_pairs, eval_pairs, problems = load_pairs(cfg, tok)
    for p in problems[:20]:
        cb.on_log(f"skipped {p}")
    _refuse_too_few(len(train_pairs), cfg, "after tokenization and the held-out split, train_file", ctx)
    ref_source = cfg.ref_model or cfg.init_from
    ref, ref_tok, ref_base = load_model_for(cfg, ref_source, "ref_model")
    check_same_base("ref_model", ref_source, policy.cfg, tok, ref.cfg, ref_tok, base, ref_base)
    model_cfg = policy.cfg

    # ---- models, optimizer, schedule ----------------------------------------------------------
    policy = shard(policy, cfg, ctx)
    ref = shard(frozen(ref), cfg, ctx)
    optimizer = build_optimizer(policy, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    amp = amp_factory(cfg, ctx)
    average = cfg.loss_type == "ipo"  # IPO compares per-token mean log-probs
    sampler = IndexSampler(len(train_pairs), cfg.micro_batch_size, rank=ctx.rank, world_size=ctx.world_size,
                           seed=cfg.seed)

    @torch.no_grad()
    def reference_logps(pairs: list[PreferencePair]) -> torch.Tensor:
        """Reference log-probs of every pair: (n, 2) [chosen, rejected], the same on every rank."""
        out = torch.zeros(len(pairs), 2, dtype=torch.float32, device=ctx.device)
        step = cfg.micro_batch_size
        for start in range(0, len(pairs), step):
            chunk = pairs[start:start + step]
            batch = {k: v.to(ctx.device) for k, v in collate_pairs(chunk, tok.pad_id).items()}
            with amp():
                lp = sequence_logps(ref, batch, average=average).float()  # (2b,)
            out[start:start + len(chunk)] = torch.stack([lp[:len(chunk)], lp[len(chunk):]], dim=1)
        return out

    # ---- resume or start ------------------------------------------------------------------------
    start_step, last_ckpt = 0, ""
    ref_table: dict[str, torch.Tensor] = {}
    resume = broadcast_object(resolve_resume(cfg) if ctx.is_main else None, ctx)
    if resume is not None:
        state = load_checkpoint(resume, policy, optimizer, ctx=ctx)
        start_step, last_ckpt = state["step"], state["path"]
        scheduler.load_state_dict(state["trainer_state"]["scheduler"])
        sampler.load_state_dict(state["trainer_state"]["sampler"])
        ref_table = {k: v.to(ctx.device) for k, v in state["trainer_state"].get("ref_logps", {}).items()}
        cb.on_log(f"resumed from {state['path']} at step {start_step}")
    elif ctx.is_main and out_dir.exists() and latest_checkpoint(out_dir) is not None:
        cb.on_log(f"{out_dir} already holds checkpoints and resume_from is not set: starting over")
    if cfg.precompute_ref_logps:
        if not ref_table:
            t0 = time.perf_counter()
            ref_table = {"train": reference_logps(train_pairs), "eval": reference_logps(eval_pairs)}
            cb.on_log(f"reference log-probs of {len(train_pairs) + len(eval_pairs)} pairs computed in "
                      f"{time.perf_counter() - t0:.1f}s; the reference model is freed")
        del ref
        ref = None
    def run_config() -> dict[str, Any]:
        return checkpoint_config(cfg, "dpo", model_cfg, out_dir, base_fingerprint=base,
                                 tokenizer_fingerprint=tok.fingerprint)

    prepare_out_dir(cfg, tok, out_dir, ctx, run_config)
    saved_config = run_config()

    pairs_per_step = cfg.micro_batch_size * cfg.grad_accum_steps * ctx.world_size
    n_params = sum(p.numel() for p in policy.parameters())
    cb.on_start({"config": cfg.to_dict(), "kind": "dpo", "world_size": ctx.world_size, "device": str(ctx.device),
                 "n_params": int(n_params), "start_step": start_step, "total_steps": cfg.steps,
                 "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "pairs_per_step": pairs_per_step,
                 "out_dir": str(out_dir)})

    def checkpoint(step: int) -> str:
        trainer_state: dict[str, Any] = {"scheduler": scheduler.state_dict(), "sampler": sampler.state_dict()}
        if ref_table:
            trainer_state["ref_logps"] = {k: v.cpu() for k, v in ref_table.items()}
        path = save_checkpoint(out_dir, step, policy, optimizer, ctx=ctx, config=saved_config,
                               keep_last=cfg.keep_last, trainer_state=trainer_state)
        cb.on_checkpoint(step, str(path))
        return str(path)

    def pair_losses(pairs: list[PreferencePair], ref_rows: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in collate_pairs(pairs, tok.pad_id).items()}
        return dpo_batch_losses(policy, ref, batch, cfg, amp, ref_rows)

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        policy.eval()
        scores = _Scores(ctx.device)
        # every rank scores its own slice of the eval pairs, in the same number of forwards (FSDP's are
        # collective): a slice short of the others is filled with pair 0, which does not count
        per_rank = -(-len(eval_pairs) // ctx.world_size)
        mine = [ctx.rank + ctx.world_size * k for k in range(per_rank)]
        for start in range(0, per_rank, cfg.micro_batch_size):
            chunk = mine[start:start + cfg.micro_batch_size]
            idx = [i if i < len(eval_pairs) else 0 for i in chunk]
            keep = torch.tensor([i < len(eval_pairs) for i in chunk], device=ctx.device)
            rows = ref_table["eval"][idx] if ref_table else None
            scores.add(*pair_losses([eval_pairs[i] for i in idx], rows), keep=keep)
        policy.train()
        return scores.metrics(ctx, prefix="eval/")

    # ---- the loop -----------------------------------------------------------------------------
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    status, step, metrics = "completed", start_step, {}
    last_eval: dict[str, float] = {}
    t_start, steps_done = time.perf_counter(), 0
    from training.core.loops.pretrain import StopSignal

    with StopSignal() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            scores = _Scores(ctx.device)
            for _ in range(cfg.grad_accum_steps):
                idx = sampler.next_batch()
                rows = ref_table["train"][idx] if ref_table else None
                losses, rc, rr, lc, lr_ = pair_losses([train_pairs[i] for i in idx], rows)
                (losses.mean() / cfg.grad_accum_steps).backward()
                scores.add(losses, rc, rr, lc, lr_)
            grad_norm, lr = optimizer_step(params, optimizer, scheduler, cfg.optim.grad_clip)
            step += 1
            steps_done += 1
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            dt = time.perf_counter() - t0
            metrics = scores.metrics(ctx)
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - t_start
                cb.on_step(step, {**metrics, "lr": float(lr), "grad_norm": float(grad_norm),
                                  "throughput(pairs/s)": pairs_per_step / dt, "time_metrics/step_time(s)": dt,
                                  "current_steps": step, "total_steps": cfg.steps, "elapsed_time": elapsed,
                                  "remaining_time": elapsed / steps_done * (cfg.steps - step)})
            if not math.isfinite(metrics["loss"]):
                cb.on_log(f"loss is {metrics['loss']} at step {step}; stopping (lower optim.lr or beta)")
                status = "diverged"
                break
            if eval_pairs and cfg.eval_every and step % cfg.eval_every == 0:
                last_eval = evaluate()
                cb.on_eval(step, last_eval)
            cancelled, path = stop_or_checkpoint(step, cfg, ctx, stop, cb, checkpoint)
            last_ckpt = path or last_ckpt
            if cancelled:
                status = "cancelled"
                break

    # ---- the end ------------------------------------------------------------------------------
    if status == "completed" and step > start_step:
        if eval_pairs and not (cfg.eval_every and step % cfg.eval_every == 0):
            last_eval = evaluate()
            cb.on_eval(step, last_eval)
        last_ckpt = checkpoint(step)
    summary: dict[str, Any] = {"status": status, "step": step, "start_step": start_step, "total_steps": cfg.steps,
                               **metrics, "checkpoint": last_ckpt, "elapsed_time": time.perf_counter() - t_start,
                               "out_dir": str(out_dir), **last_eval}
    cb.on_end(summary)
    return summary
