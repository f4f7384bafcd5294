"""DPO training throughput (pairs/s): our DPO step against TRL's DPOTrainer.

Both sides train the same policy against the same frozen reference on the same batches: our
``Transformer`` and a transformers ``LlamaForCausalLM`` holding the very same weights (through
our HF export), on the real BIG-bench hhh_alignment pairs tokenized once and collated the same
way (TRL's ``DataCollatorForPreference`` layout, which ``collate_pairs`` shares: chosen rows then
rejected rows, right padding, completion mask).

One step = policy forward of the 2B rows (chosen and rejected concatenated), reference forward
(no grad), sigmoid DPO loss, backward, grad clip, AdamW(fused). Ours:
:func:`training.core.loops.dpo.dpo_batch_losses`; TRL: ``DPOTrainer.training_step`` (its
``compute_loss`` with its metrics, through accelerate) with the same optimizer. The two are
timed round-robin in one process with the same threads; the first step's losses are compared
as a check that both compute the same thing.

    python benchmarks/bench_dpo.py                      # dim 256, 4 layers, 8 pairs x <= 192 tokens
    python benchmarks/bench_dpo.py --threads 1 --batch 4 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from typing import Any

import torch

from _common import (  # noqa: I001
    hf_llama_from, interleaved, machine_line, optimizer_step, report, small_model_config, trl_step_fn, trl_tokenizer)

from training.core import corpora
from training.core.config import DPOConfig
from training.core.data.preference import collate_pairs, tokenize_pair
from training.core.loops.dpo import dpo_batch_losses
from training.core.model import Transformer
from training.core.tokenizer import train_tokenizer


def pairs_and_tokenizer(n: int, max_len: int) -> tuple[list, Any, list[dict]]:
    docs = list(corpora.iter_documents("hhh"))
    records = [{"prompt": d["prompt"] + "\n", "chosen": d["chosen"], "rejected": d["rejected"]} for d in docs]
    tok = train_tokenizer([d["text"] for d in docs], 2048)
    pairs = [tokenize_pair(r, tok, max_seq_len=max_len, max_prompt_len=max_len // 2) for r in records[:n]]
    return pairs, tok, records[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step")
    ap.add_argument("--max-len", type=int, default=192)
    ap.add_argument("--steps", type=int, default=4, help="distinct batches cycled through")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--beta", type=float, default=0.1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    pairs, tok, records = pairs_and_tokenizer(args.batch * args.steps, args.max_len)
    batches = [collate_pairs(pairs[i * args.batch:(i + 1) * args.batch], tok.pad_id) for i in range(args.steps)]
    cfg_model = small_model_config(tok.vocab_size, args.dim, args.layers, max(256, args.max_len))
    torch.manual_seed(0)
    policy = Transformer(cfg_model)
    policy.init_weights(seed=0)
    hf_policy, hf_ref = hf_llama_from(policy).to(device), hf_llama_from(policy).to(device)
    ref = copy.deepcopy(policy).to(device).eval().requires_grad_(False)
    policy = policy.to(device).train()
    hf_ref.eval().requires_grad_(False)
    dcfg = DPOConfig(init_from="-", train_file="-", beta=args.beta, loss_type="sigmoid",
                     max_seq_len=args.max_len, max_prompt_len=args.max_len // 2)

    opt_ours = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5, fused=True)
    opt_ref = torch.optim.AdamW([p for p in hf_policy.parameters() if p.requires_grad], lr=1e-5, fused=True)
    with tempfile.TemporaryDirectory() as tmp:
        targs = TRLDPOConfig(output_dir=tmp, per_device_train_batch_size=args.batch, report_to=[], beta=args.beta,
                             loss_type=["sigmoid"], use_cpu=device.type == "cpu", save_strategy="no",
                             logging_strategy="no", bf16=False, fp16=False, max_length=args.max_len)
        trainer = DPOTrainer(model=hf_policy, ref_model=hf_ref, args=targs, optimizers=(opt_ref, None),
                             train_dataset=_trl_dataset(records), **trl_tokenizer(tok, padding_side="left"))
    ours_batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    trl_batches = [{k: b[k].to(device) for k in ("input_ids", "attention_mask", "completion_mask")} for b in batches]
    state = {"ours": 0}

    def step_ours() -> float:
        b = ours_batches[state["ours"] % len(ours_batches)]
        state["ours"] += 1
        losses, *_ = dpo_batch_losses(policy, ref, b, dcfg)
        loss = losses.mean()
        loss.backward()
        optimizer_step(policy.parameters(), opt_ours, device)
        return float(loss)

    step_trl = trl_step_fn(trainer, opt_ref, trl_batches, device)
    first_ours, first_trl = step_ours(), step_trl()
    print(f"DPO policy dim={args.dim} layers={args.layers} vocab={tok.vocab_size} "
          f"params={sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M, {args.batch} pairs/step, "
          f"rows <= {max(b['input_ids'].shape[1] for b in batches)} tokens, device={device}")
    print(f"  first-step loss: ours {first_ours:.6f}  trl {first_trl:.6f}  (same weights, same batch)")
    print(f"  {machine_line()}")
    times = interleaved({"ours": step_ours, "trl DPOTrainer": step_trl}, repeats=args.repeats)
    report(times, args.batch, "pairs", "trl DPOTrainer")


def _trl_dataset(records: list[dict]) -> object:
    from datasets import Dataset

    return Dataset.from_list(records)


if __name__ == "__main__":
    main()
