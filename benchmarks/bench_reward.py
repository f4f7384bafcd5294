"""Reward-model training throughput (pairs/s): our reward loop's step against TRL's RewardTrainer.

Both sides train the same reward model on the same batches: our ``RewardModel`` (Transformer +
scalar head) and a transformers ``LlamaForSequenceClassification`` holding the very same
weights (through our HF export, the score row copied), on real preference pairs (chatterbot
answers, chosen as written, rejected in capitals) tokenized once, padded the same way (TRL's
``DataCollatorForPreference`` layout: chosen rows then rejected rows, right padding).

One step = forward of the 2B rows, Bradley–Terry loss (+ centering), backward, grad clip,
AdamW(fused). Ours: :func:`training.core.loops.reward.reward_step`; TRL:
``RewardTrainer.training_step`` (its ``compute_loss`` with its metrics, through accelerate)
with the same optimizer. The two are timed round-robin in one process with the same threads;
the first step's losses are compared as a check that both compute the same thing.

    python benchmarks/bench_reward.py                      # dim 256, 4 layers, 8 pairs x <= 128 tokens
    python benchmarks/bench_reward.py --threads 1 --batch 4 --device cuda
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from _common import (  # noqa: I001
    interleaved, machine_line, optimizer_step, report, small_model_config, trl_step_fn, trl_tokenizer)

from training.core import corpora
from training.core.config import RewardConfig
from training.core.data.preference import collate_pairs, tokenize_pair
from training.core.distributed import DistContext
from training.core.heads import RewardModel
from training.core.loops.reward import reward_step
from training.core.model import Transformer
from training.core.tokenizer import train_tokenizer


def pairs_and_tokenizer(n: int, max_len: int) -> tuple[list, object]:
    docs = list(corpora.iter_documents("chatterbot"))
    tok = train_tokenizer([d["text"] for d in docs], 2048)
    pairs = []
    for d in docs:
        q, a = d["messages"][0]["content"], d["messages"][1]["content"]
        if a.upper() != a:
            pairs.append(tokenize_pair({"prompt": q + "\n", "chosen": a, "rejected": a.upper()}, tok,
                                       max_seq_len=max_len))
        if len(pairs) == n:
            break
    return pairs, tok


def trl_model(ours: RewardModel, pad_id: int, device: torch.device) -> torch.nn.Module:
    import transformers

    from training.core.interop.hf import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours.backbone, None, Path(tmp) / "hf")
        ref = transformers.LlamaForSequenceClassification.from_pretrained(
            Path(tmp) / "hf", num_labels=1, attn_implementation="sdpa")
    ref.config.pad_token_id = pad_id
    with torch.no_grad():
        ref.score.weight.copy_(ours.score.weight)
    return ref.to(device).train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="distinct batches cycled through")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--center", type=float, default=0.01, help="center_rewards_coefficient (both sides)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    pairs, tok = pairs_and_tokenizer(args.batch * args.steps, args.max_len)
    batches = [collate_pairs(pairs[i * args.batch:(i + 1) * args.batch], tok.pad_id) for i in range(args.steps)]
    cfg_model = small_model_config(tok.vocab_size, args.dim, args.layers, max(256, args.max_len))
    torch.manual_seed(0)
    ours = RewardModel(Transformer(cfg_model), seed=0)
    ref = trl_model(ours, tok.pad_id, device)
    ours = ours.to(device).train()
    rcfg = RewardConfig(init_from="-", train_file="-", center_rewards_coefficient=args.center, use_margin=False)
    ctx = DistContext(device=device)

    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5, fused=True)
    opt_ref = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-5, fused=True)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TRLRewardConfig(output_dir=tmp, per_device_train_batch_size=args.batch, report_to=[],
                                center_rewards_coefficient=args.center, use_cpu=device.type == "cpu",
                                save_strategy="no", logging_strategy="no", bf16=False, fp16=False)
        trainer = RewardTrainer(model=ref, args=targs, optimizers=(opt_ref, None),
                                train_dataset=_trl_dataset(pairs), **trl_tokenizer(tok))
    ours_batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    trl_batches = [{"input_ids": b["input_ids"].to(device), "attention_mask": b["attention_mask"].to(device)}
                   for b in batches]
    state = {"ours": 0}

    def step_ours() -> float:
        b = ours_batches[state["ours"] % len(ours_batches)]
        state["ours"] += 1
        metrics = reward_step(ours, [b], rcfg, ctx)
        optimizer_step(ours.parameters(), opt_ours, device)
        return metrics["loss"]

    step_trl = trl_step_fn(trainer, opt_ref, trl_batches, device)
    first_ours, first_trl = step_ours(), step_trl()
    print(f"reward model dim={args.dim} layers={args.layers} vocab={tok.vocab_size} "
          f"params={sum(p.numel() for p in ours.parameters()) / 1e6:.2f}M, {args.batch} pairs/step, "
          f"rows <= {max(b['input_ids'].shape[1] for b in batches)} tokens, device={device}")
    print(f"  first-step loss: ours {first_ours:.6f}  trl {first_trl:.6f}  (same weights, same batch)")
    print(f"  {machine_line()}")
    times = interleaved({"ours": step_ours, "trl RewardTrainer": step_trl}, repeats=args.repeats)
    report(times, args.batch, "pairs", "trl RewardTrainer")


def _trl_dataset(pairs: list) -> object:
    from datasets import Dataset

    return Dataset.from_list([{"chosen_ids": list(p.prompt + p.chosen), "rejected_ids": list(p.prompt + p.rejected)}
                              for p in pairs])


if __name__ == "__main__":
    main()
