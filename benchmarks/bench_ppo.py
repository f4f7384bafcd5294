"""PPO step breakdown: generation vs scoring vs training, and the KV-cache rollout against a no-cache one.

Runs the real PPO loop (:func:`training.core.loops.ppo.train`) on a small random policy with a
tokenizer trained on the BIG-bench hhh_alignment texts, its prompts, and the rule-based
``length:20`` reward, and reports the loop's own timings per step (``time/generation``,
``time/scoring`` — reward, policy and reference forwards — and ``time/training`` — advantages and
the PPO epochs). As a reference measured in the same run, the same rollout (same prompts, same
weights, greedy) is generated without a KV cache (the whole sequence re-run for every new
token), which is what the cached generator saves.

    python benchmarks/bench_ppo.py                         # dim 256, 4 layers, 16 rollouts x 32 new tokens
    python benchmarks/bench_ppo.py --device cuda --rollouts 64 --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import machine_line, small_model_config  # noqa: I001

from training.core import corpora
from training.core.callbacks import RecordingCallbacks
from training.core.checkpoint import export_model
from training.core.config import OptimConfig, PPOConfig
from training.core.loops.ppo import train
from training.core.model import Transformer
from training.core.rollout import encode_prompts, sample_responses
from training.core.tokenizer import train_tokenizer


@torch.no_grad()
def generate_without_cache(model: Transformer, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuation that re-runs the full (right-padded) sequences for every new token."""
    rows = [list(p) for p in prompts]
    for _ in range(new_tokens):
        T = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (T - len(r)) for r in rows], device=next(model.parameters()).device)
        logits = model(ids)  # (B, T, V)
        last = torch.tensor([len(r) - 1 for r in rows], device=ids.device)
        nxt = logits[torch.arange(len(rows), device=ids.device), last].argmax(-1).tolist()
        for r, t in zip(rows, nxt):
            r.append(t)
    return [r[len(p):] for r, p in zip(rows, prompts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rollouts", type=int, default=16, help="rollouts per step")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    docs = list(corpora.iter_documents("hhh"))
    tok = train_tokenizer([d["text"] for d in docs], 2048)
    cfg_model = small_model_config(tok.vocab_size, args.dim, args.layers, 512)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = Transformer(cfg_model)
        model.init_weights(seed=0)
        export_model(model, root / "policy")
        tok.save(root / "policy")
        prompts_file = root / "prompts.jsonl"
        prompts_file.write_text("".join(json.dumps({"prompt": d["prompt"]}) + "\n" for d in docs), encoding="utf-8")
        cfg = PPOConfig(init_from=str(root / "policy"), train_file=str(prompts_file), out_dir=str(root / "run"),
                        steps=args.steps, micro_batch_size=max(1, args.rollouts // 2), num_mini_batches=2,
                        ppo_epochs=args.ppo_epochs, max_seq_len=512, max_prompt_len=128,
                        max_new_tokens=args.new_tokens, temperature=1.0, reward_fn="length:20", ckpt_every=0,
                        eval_every=0, device=args.device, dtype="fp32",
                        optim=OptimConfig(lr=1e-4, warmup_steps=0, weight_decay=0.0, min_lr_ratio=1.0))
        rec = RecordingCallbacks()
        train(cfg, rec)

        # reference: the same rollout without the KV cache (greedy on both sides, same prompts)
        ids, _, _ = encode_prompts([{"prompt": d["prompt"]} for d in docs[:args.rollouts]], tok, max_prompt_len=128)
        device = torch.device(args.device if args.device != "auto" else "cpu")
        model = model.to(device).eval()
        t0 = time.perf_counter()
        cached = sample_responses(model, ids, max_new_tokens=args.new_tokens, temperature=0.0)
        t_cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = generate_without_cache(model, ids, args.new_tokens)
        t_plain = time.perf_counter() - t0

    steps = [m for _, m in rec.steps][1:] or [m for _, m in rec.steps]  # the first step warms up
    parts = {name: statistics.median(m[f"time/{name}"] for m in steps)
             for name in ("generation", "scoring", "training")}
    total = sum(parts.values())
    print(f"PPO policy dim={args.dim} layers={args.layers} vocab={tok.vocab_size} "
          f"params={sum(p.numel() for p in model.parameters()) / 1e6:.2f}M, {args.rollouts} rollouts x "
          f"{args.new_tokens} new tokens, {args.ppo_epochs} PPO epochs x 2 minibatches, device={args.device}")
    print(f"  {machine_line()}")
    for name, t in parts.items():
        print(f"  {name:12s} median {t * 1e3:8.0f} ms  {100 * t / total:5.1f}% of the step")
    print(f"  step         median {total * 1e3:8.0f} ms  "
          f"{args.rollouts / total:.1f} rollouts/s, {args.rollouts * args.new_tokens / parts['generation']:.0f} "
          "generated tokens/s")
    same = sum(a == b for a, b in zip(cached, plain))
    print(f"  rollout generation: KV cache {t_cached * 1e3:.0f} ms, no cache {t_plain * 1e3:.0f} ms: "
          f"x{t_plain / t_cached:.2f} (greedy outputs identical for {same}/{len(ids)} rows)")


if __name__ == "__main__":
    main()
