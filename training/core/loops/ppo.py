"""RLHF with PPO: sample responses, score them, shape rewards with a KL penalty, and improve the policy.

Read :func:`train` top to bottom. Before any compute: read the prompts (refuse too few), load the
policy (with a value head on its last hidden state), the frozen reference and the reward (a
reward-model checkpoint with the policy's tokenizer and base, or a rule-based reward by name);
shard all three with FSDP2 when there are several ranks. Then each step:

1. **rollout** — ``rollouts_per_step`` prompts per rank are continued with the KV-cache
   generator (:mod:`training.core.rollout`), up to ``max_new_tokens``;
2. **score** — the reward of each response, minus ``missing_eos_penalty`` without a stop token;
   the old log-probs and values (policy) and the reference log-probs, at temperature;
3. **advantages** — per-token rewards ``-kl_coef * KL`` (k1 or k3) plus the score on the last
   token; GAE (``gamma``, ``lam``) over the value head; advantages whitened;
4. **PPO** — ``ppo_epochs`` passes over ``num_mini_batches`` shuffled minibatches (each
   ``grad_accum_steps`` micro-batches) with the clipped policy loss and ``vf_coef`` times the
   clipped value loss; one optimizer step per minibatch.

Metrics (TRL's names): ``objective/kl`` (sequence KL to the reference, mean over rollouts),
``objective/entropy`` (mean per-token entropy of the policy, nats), ``objective/rlhf_reward``
(score − kl_coef · KL), ``objective/scores``, ``policy/approxkl_avg``, ``policy/clipfrac_avg``,
``val/ratio``, ``loss/policy_avg``, ``loss/value_avg``, ``time/generation``, ``time/scoring``,
``time/training``, and the health flags ``health/kl_runaway``, ``health/entropy_collapse``,
``health/ratio_drift`` (1 = warn; thresholds ``kl_warn``, ``entropy_warn``, ``ratio_warn``).

A SIGTERM (or ``should_stop()``) finishes the step, writes a checkpoint and ends with
``status="cancelled"``; ``resume_from="auto"`` continues exactly. Checkpoints hold the policy
(it loads for chat like any checkpoint; the value head is an extra tensor) and its value head.

>>> from training.core.config import PPOConfig
>>> PPOConfig(init_from="smollm2", train_file="prompts.jsonl", reward_fn="brevity").gamma
1.0
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from training.core.callbacks import Callbacks
from training.core.config import ConfigError, ModelConfig, PPOConfig
from training.core.data.records import IndexSampler, read_records
from training.core.distributed import (
    DistContext,
    broadcast_object,
    destroy_distributed,
    init_distributed,
)
from training.core.heads import ScalarHead
from training.core.losses import (
    entropy_from_logits,
    gae_advantages,
    kl_estimate,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    token_logprobs,
)
from training.core.loops.common import (
    check_seq_len,
    checkpoint_config,
    prepare_out_dir,
    resolve_resume,
    stop_or_checkpoint,
)
from training.core.loops.policy import (
    amp_factory,
    architecture_fingerprint,
    base_fingerprint,
    check_same_base,
    frozen,
    load_model_for,
    shard,
)
from training.core.model import Transformer
from training.core.rollout import encode_prompts, pack, response_view, sample_responses, score_responses

__all__ = ["train", "PolicyWithValue", "METRICS", "HEALTH_FLAGS"]

#: Names of the metrics a PPO step reports.
METRICS = ("objective/kl", "objective/entropy", "objective/rlhf_reward", "objective/scores", "policy/approxkl_avg",
           "policy/clipfrac_avg", "val/ratio", "loss/policy_avg", "loss/value_avg", "time/generation",
           "time/training")
#: RL-health flags (0 or 1) in every step's metrics.
HEALTH_FLAGS = ("health/kl_runaway", "health/entropy_collapse", "health/ratio_drift")


class PolicyWithValue(Transformer):
    """The policy transformer plus a value head (:class:`~training.core.heads.ScalarHead`) on its
    final hidden states. Called as a :class:`Transformer` it is one (generation, chat); with
    ``with_values=True`` it returns ``(logits (B, T, V), values (B, T))`` from one forward.
    State-dict keys are the transformer's plus ``value_head.weight``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.value_head = ScalarHead(cfg.dim).to(self.tok_embeddings.weight.device)

    @classmethod
    def from_policy(cls, policy: Transformer) -> "PolicyWithValue":
        """Wrap a loaded policy's weights (the value head starts at zero)."""
        model = cls(policy.cfg)
        missing, unexpected = model.load_state_dict(policy.state_dict(), strict=False)
        assert missing == ["value_head.weight"] and not unexpected, (missing, unexpected)
        return model

    def forward(self, tokens: torch.Tensor, *, with_values: bool = False,  # type: ignore[override]
                **kwargs: Any) -> Any:
        if not with_values:
            return super().forward(tokens, **kwargs)
        hidden = super().forward(tokens, return_hidden=True, attention_mask=kwargs.get("attention_mask"))  # (B, T, C)
        return self.output(hidden), self.value_head(hidden)


def train(cfg: PPOConfig, callbacks: Callbacks | None = None) -> dict[str, Any]:
    """Run PPO as configured and return a summary (``status``, ``step``, last metrics, ``checkpoint`` …)."""
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, callbacks or Callbacks(), ctx)
    finally:
        destroy_distributed(ctx)


def _load_reward(cfg: PPOConfig, policy_cfg: ModelConfig, tok: Any, base: str) -> tuple[nn.Module | None, Any]:
    """``(reward_model, reward_fn)``: one of them, checked against the policy before any compute."""
    if cfg.reward_fn:
        from training.core.rewards import resolve_reward_fn

        return None, resolve_reward_fn(cfg.reward_fn)
    from training.core.checkpoint import CheckpointError
    from training.core.cli import _tokenizer_near
    from training.core.loops.reward import load_reward_model
    from training.core.tokenizer import StudioTokenizer

    try:
        model, saved = load_reward_model(cfg.reward_model)
    except CheckpointError as e:
        raise ConfigError("reward_model", e.message, e.hint) from None
    from training.core.checkpoint import find_checkpoint

    near = _tokenizer_near(find_checkpoint(cfg.reward_model))
    tok_dir = saved.get("tokenizer_dir") or (str(near) if near is not None else "")
    rm_tok = StudioTokenizer.load(tok_dir) if tok_dir and Path(tok_dir, "tokenizer.json").is_file() else None
    if rm_tok is None:
        raise ConfigError("reward_model", f"no tokenizer found with the reward model {cfg.reward_model}",
                          "train the reward model with this studio (its run folder keeps the tokenizer)")
    rm_base = base_fingerprint(cfg.reward_model, model.cfg)
    check_same_base("reward_model", cfg.reward_model, policy_cfg, tok, model.cfg, rm_tok, base, rm_base)
    return model, None


def _train(cfg: PPOConfig, callbacks: Callbacks, ctx: DistContext) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from training.core.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from training.core.loops.pretrain import StopSignal
    from training.core.optim import build_optimizer, build_scheduler

    cb = callbacks if ctx.is_main else Callbacks()  # only rank 0 reports
    out_dir = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    per_rank = cfg.rollouts_per_step

    # ---- refuse what cannot work, before any compute ------------------------------------------
    records = read_records(cfg.train_file, "train_file")
    need = max(cfg.min_prompts, per_rank * ctx.world_size)

    def refuse(n: int, what: str) -> None:
        if n < need:
            raise ConfigError("train_file", f"{what} holds {n} usable prompts; at least {need} are needed "
                                            f"(min_prompts={cfg.min_prompts}, one step = {per_rank} rollouts x "
                                            f"{ctx.world_size} ranks)",
                              "add prompts, or lower min_prompts / micro_batch_size / num_mini_batches")

    refuse(len(records), cfg.train_file)
    plain, tok, base = load_model_for(cfg, cfg.init_from, "init_from")
    check_seq_len(cfg, plain.cfg)
    prompts, prompt_texts, problems = encode_prompts(records, tok, max_prompt_len=cfg.max_prompt_len)
    for p in problems[:20]:
        cb.on_log(f"skipped {p}")
    refuse(len(prompts), f"after tokenization, {cfg.train_file}")
    ref_source = cfg.ref_model or cfg.init_from
    ref, ref_tok, ref_base = load_model_for(cfg, ref_source, "ref_model")
    check_same_base("ref_model", ref_source, plain.cfg, tok, ref.cfg, ref_tok, base, ref_base)
    reward_model, reward_fn = _load_reward(cfg, plain.cfg, tok, base)
    model_cfg = plain.cfg
    stop_ids = list(tok.stop_ids)

    # ---- models, optimizer, schedule ----------------------------------------------------------
    policy = shard(PolicyWithValue.from_policy(plain), cfg, ctx)
    del plain
    ref = shard(frozen(ref), cfg, ctx)
    if reward_model is not None:
        reward_model = shard(frozen(reward_model), cfg, ctx)
    generator_model: Transformer | None = None
    if ctx.is_distributed:  # generation needs whole weights: a plain copy, refreshed every step
        generator_model = frozen(Transformer(model_cfg).to(ctx.device))  # type: ignore[assignment]
    optimizer = build_optimizer(policy, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    amp = amp_factory(cfg, ctx)
    sampler = IndexSampler(len(prompts), per_rank, rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed)

    # ---- resume or start ------------------------------------------------------------------------
    start_step, last_ckpt = 0, ""
    resume = broadcast_object(resolve_resume(cfg) if ctx.is_main else None, ctx)
    if resume is not None:
        state = load_checkpoint(resume, policy, optimizer, ctx=ctx)
        start_step, last_ckpt = state["step"], state["path"]
        scheduler.load_state_dict(state["trainer_state"]["scheduler"])
        sampler.load_state_dict(state["trainer_state"]["sampler"])
        cb.on_log(f"resumed from {state['path']} at step {start_step}")
    elif ctx.is_main and out_dir.exists() and latest_checkpoint(out_dir) is not None:
        cb.on_log(f"{out_dir} already holds checkpoints and resume_from is not set: starting over")
    def run_config() -> dict[str, Any]:
        return checkpoint_config(cfg, "ppo", model_cfg, out_dir, base_fingerprint=base,
                                 tokenizer_fingerprint=tok.fingerprint,
                                 value_head={"kind": "scalar", "dim": model_cfg.dim})

    prepare_out_dir(cfg, tok, out_dir, ctx, run_config)
    saved_config = run_config()
    n_params = sum(p.numel() for p in policy.parameters())
    cb.on_start({"config": cfg.to_dict(), "kind": "ppo", "world_size": ctx.world_size, "device": str(ctx.device),
                 "n_params": int(n_params), "start_step": start_step, "total_steps": cfg.steps,
                 "prompts": len(prompts), "rollouts_per_step": per_rank * ctx.world_size,
                 "reward": cfg.reward_fn or cfg.reward_model, "architecture": architecture_fingerprint(model_cfg),
                 "out_dir": str(out_dir)})

    def checkpoint(step: int) -> str:
        path = save_checkpoint(out_dir, step, policy, optimizer, ctx=ctx, config=saved_config,
                               keep_last=cfg.keep_last,
                               trainer_state={"scheduler": scheduler.state_dict(), "sampler": sampler.state_dict()})
        cb.on_checkpoint(step, str(path))
        return str(path)

    def forward_response(model: nn.Module, batch: dict[str, torch.Tensor], R: int, with_values: bool
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Temperature-scaled logits (B, R, V) of the response tokens, and values (B, R)."""
        with amp():
            if with_values:
                logits, values = model(batch["input_ids"], with_values=True)
            else:
                logits, values = model(batch["input_ids"]), None
        logits = response_view(logits, batch["starts"], R).float() / cfg.temperature
        return logits, None if values is None else response_view(values.float(), batch["starts"], R)

    def sync(value: torch.Tensor) -> torch.Tensor:
        if ctx.is_distributed:
            torch.distributed.all_reduce(value)
        return value

    # ---- the loop -----------------------------------------------------------------------------
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    status, step, metrics = "completed", start_step, {}
    t_start, steps_done = time.perf_counter(), 0
    with StopSignal() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            # 1. rollout -------------------------------------------------------------------------
            idx = sampler.next_batch()
            batch_prompts = [prompts[i] for i in idx]
            if generator_model is not None:
                full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True))
                generator_model.load_state_dict({k: v for k, v in full.items() if k != "value_head.weight"})
            responses = sample_responses(
                generator_model if generator_model is not None else policy, batch_prompts,
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                stop_ids=stop_ids, seed=(cfg.seed * 1_000_003 + step) * 4096 + ctx.rank, pad_id=tok.pad_id)
            t_gen = time.perf_counter() - t0

            # 2. score ---------------------------------------------------------------------------
            t1 = time.perf_counter()
            batch = {k: v.to(ctx.device) for k, v in pack(batch_prompts, responses, tok.pad_id).items()}
            mask, R = batch["mask"], batch["mask"].shape[1]
            targets = response_view(batch["input_ids"][:, 1:], batch["starts"], R)  # (B, R) response tokens
            scores, has_eos = score_responses([prompt_texts[i] for i in idx], responses, tok, stop_ids=stop_ids,
                                              missing_eos_penalty=cfg.missing_eos_penalty, reward_fn=reward_fn,
                                              reward_model=reward_model, batch=batch)
            scores = scores.to(ctx.device)
            with torch.no_grad():
                logits, old_values = forward_response(policy, batch, R, with_values=True)
                old_logprobs = token_logprobs(logits, targets)  # (B, R)
                entropy = masked_mean(entropy_from_logits(logits), mask)
                ref_logits, _ = forward_response(ref, batch, R, with_values=False)
                ref_logprobs = token_logprobs(ref_logits, targets)
                del logits, ref_logits
            assert old_values is not None
            t_score = time.perf_counter() - t1

            # 3. rewards and advantages ---------------------------------------------------------------
            t2 = time.perf_counter()
            with torch.no_grad():
                kl = kl_estimate(old_logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, R)
                rewards = -cfg.kl_coef * kl
                last = (batch["lengths"] - 1).clamp(min=0)  # (B,) index of each response's last token
                rewards[torch.arange(len(idx), device=ctx.device), last] += scores * (batch["lengths"] > 0)
                if cfg.whiten_rewards:
                    rewards = masked_whiten(rewards, mask, shift_mean=False)
                advantages, returns = gae_advantages(rewards, old_values * mask, mask, gamma=cfg.gamma, lam=cfg.lam)
                advantages = masked_whiten(advantages, mask)

            # 4. PPO epochs over minibatches -----------------------------------------------------------
            # sums of: policy loss, value loss, clip fraction, approximate KL, ratio
            stats = torch.zeros(5, dtype=torch.float64, device=ctx.device)
            n_updates = 0
            grad_norm = torch.zeros(())
            mb_gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
            mb_size = cfg.micro_batch_size * cfg.grad_accum_steps
            for _ in range(cfg.ppo_epochs):
                order = torch.randperm(len(idx), generator=mb_gen).tolist()
                for m in range(cfg.num_mini_batches):
                    mb = order[m * mb_size:(m + 1) * mb_size]
                    for a in range(cfg.grad_accum_steps):
                        rows = torch.tensor(mb[a * cfg.micro_batch_size:(a + 1) * cfg.micro_batch_size],
                                            device=ctx.device)
                        micro = {k: v[rows] for k, v in batch.items()}
                        logits, values = forward_response(policy, micro, R, with_values=True)
                        assert values is not None
                        new_logprobs = token_logprobs(logits, targets[rows])
                        pg_loss, pg_stats = ppo_policy_loss(new_logprobs, old_logprobs[rows], advantages[rows],
                                                            mask[rows], cliprange=cfg.cliprange)
                        vf_loss, _ = ppo_value_loss(values, old_values[rows], returns[rows], mask[rows],
                                                    cliprange_value=cfg.cliprange_value)
                        ((pg_loss + cfg.vf_coef * vf_loss) / cfg.grad_accum_steps).backward()
                        stats += torch.stack([pg_loss.detach(), vf_loss.detach(), pg_stats["clipfrac"],
                                              pg_stats["approxkl"], pg_stats["ratio"]]).double()
                        n_updates += 1
                    grad_norm = torch.nn.utils.clip_grad_norm_(
                        params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"), foreach=True)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            steps_done += 1
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            t_train = time.perf_counter() - t2

            # 5. report --------------------------------------------------------------------------------
            seq_kl = kl.sum(1)  # (B,)
            sums = sync(torch.stack([seq_kl.sum(), scores.sum(), (scores - cfg.kl_coef * seq_kl).sum(),
                                     has_eos.to(ctx.device).float().sum(), batch["lengths"].float().sum(),
                                     torch.tensor(float(len(idx)), device=ctx.device)]).double())
            entropy_all = sync(entropy.double().reshape(1)) / ctx.world_size
            stats = sync(stats) / (n_updates * ctx.world_size)
            n = float(sums[5])
            metrics = {
                "objective/kl": float(sums[0]) / n, "objective/entropy": float(entropy_all),
                "objective/rlhf_reward": float(sums[2]) / n, "objective/scores": float(sums[1]) / n,
                "policy/approxkl_avg": float(stats[3]), "policy/clipfrac_avg": float(stats[2]),
                "val/ratio": float(stats[4]), "loss/policy_avg": float(stats[0]), "loss/value_avg": float(stats[1]),
                "val/eos_fraction": float(sums[3]) / n, "val/response_length": float(sums[4]) / n,
                "time/generation": t_gen, "time/scoring": t_score, "time/training": t_train,
            }
            metrics["health/kl_runaway"] = float(metrics["objective/kl"] > cfg.kl_warn)
            metrics["health/entropy_collapse"] = float(metrics["objective/entropy"] < cfg.entropy_warn)
            metrics["health/ratio_drift"] = float(abs(metrics["val/ratio"] - 1.0) > cfg.ratio_warn)
            dt = time.perf_counter() - t0
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - t_start
                cb.on_step(step, {**metrics, "lr": float(lr), "grad_norm": float(grad_norm),
                                  "time_metrics/step_time(s)": dt, "current_steps": step, "total_steps": cfg.steps,
                                  "elapsed_time": elapsed, "remaining_time": elapsed / steps_done * (cfg.steps - step)})
            if not all(math.isfinite(metrics[k]) for k in ("objective/kl", "loss/policy_avg", "loss/value_avg")):
                cb.on_log(f"non-finite PPO statistics at step {step}; stopping (lower optim.lr or kl_coef)")
                status = "diverged"
                break
            cancelled, path = stop_or_checkpoint(step, cfg, ctx, stop, cb, checkpoint)
            last_ckpt = path or last_ckpt
            if cancelled:
                status = "cancelled"
                break

    # ---- the end ------------------------------------------------------------------------------
    if status == "completed" and step > start_step:
        last_ckpt = checkpoint(step)
    summary: dict[str, Any] = {"status": status, "step": step, "start_step": start_step, "total_steps": cfg.steps,
                               **metrics, "checkpoint": last_ckpt, "elapsed_time": time.perf_counter() - t_start,
                               "out_dir": str(out_dir)}
    cb.on_end(summary)
    return summary
