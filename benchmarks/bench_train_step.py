"""Training throughput (forward + backward + AdamW step) of our model against transformers.

Decoder: our ``Transformer`` vs ``LlamaForCausalLM`` (``attn_implementation="sdpa"``) holding the
very same weights (through our HF export), next-token loss on the same batch.
Encoder: our encoder (masked LM) vs ``BertForMaskedLM`` of the same width, depth, heads, FFN
parameter count and vocabulary (dropout off: ours has none), 15% masked tokens.

Both sides use the same optimizer (``torch.optim.AdamW(fused=True)``), the same threads, and are
timed round-robin in the same process; the ratio is tokens/s ours / tokens/s reference.

After the timing, one more step of each prints its minor page faults: glibc returns freed
buffers above its mmap threshold (at most 32 MB) to the kernel, so a side that allocates large
fresh buffers every step (transformers' (B, T, V) logits: 64 MB at batch 8 x 256, vocabulary
8192) pays for the kernel zeroing new pages each time. ``--keep-freed-memory`` turns that off for
both sides (``mallopt``: no mmap'd buffers, no trimming), which compares the computation alone.

    python benchmarks/bench_train_step.py                 # small preset, batch 8 x 256
    python benchmarks/bench_train_step.py --threads 1 --batch 4 --which decoder
    python benchmarks/bench_train_step.py --threads 1 --which decoder --keep-freed-memory
"""

from __future__ import annotations

import argparse
import ctypes
import resource

import torch

from _common import hf_llama_from, interleaved, machine_line, report  # noqa: I001

from training.core.config import ModelConfig
from training.core.losses import lm_loss, mlm_loss, mlm_mask
from training.core.model import Transformer


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)


def decoder_steps(cfg: ModelConfig, batch: int, seq: int) -> dict[str, object]:
    torch.manual_seed(0)
    ours = Transformer(cfg).train()
    ref = hf_llama_from(ours).train()
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1))
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    opt_ours, opt_ref = adamw(ours), adamw(ref)

    def step_ours() -> float:  # the training path: fused, chunked output projection + cross-entropy
        opt_ours.zero_grad(set_to_none=True)
        loss = ours(inputs, targets=targets)
        loss.backward()
        opt_ours.step()
        return loss.item()

    def step_ours_logits() -> float:  # logits first, then the loss
        opt_ours.zero_grad(set_to_none=True)
        loss = lm_loss(ours(inputs), targets)
        loss.backward()
        opt_ours.step()
        return loss.item()

    def step_ref() -> float:
        opt_ref.zero_grad(set_to_none=True)
        loss = ref(input_ids=inputs, labels=targets, shift_labels=targets).loss  # same targets, no re-shift
        loss.backward()
        opt_ref.step()
        return loss.item()

    with torch.no_grad():  # same weights, same batch: same loss
        a, b = ours(inputs, targets=targets).item(), ref(input_ids=inputs, labels=targets, shift_labels=targets).loss.item()
    assert abs(a - b) < 1e-3, (a, b)
    return {"ours": step_ours, "ours (logits, then lm_loss)": step_ours_logits,
            "transformers LlamaForCausalLM": step_ref}


def encoder_steps(cfg: ModelConfig, batch: int, seq: int) -> dict[str, object]:
    import transformers

    torch.manual_seed(0)
    cfg = cfg.replace(mode="encoder", n_kv_heads=None, tie_embeddings=True, ffn_dim=None)
    ours = Transformer(cfg).train()
    bert_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=(3 * cfg.hidden_dim) // 2,  # same FFN params
        max_position_embeddings=seq, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa", tie_word_embeddings=True,
    )
    ref = transformers.BertForMaskedLM(bert_cfg).train()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g)
    inputs, labels = mlm_mask(tokens, mask_id=4, vocab_size=cfg.vocab_size, rate=0.15, generator=g)
    opt_ours, opt_ref = adamw(ours), adamw(ref)

    def step_ours() -> float:  # the training path: MLM head and vocabulary projection on masked positions only
        opt_ours.zero_grad(set_to_none=True)
        loss = ours(inputs, targets=labels)
        loss.backward()
        opt_ours.step()
        return loss.item()

    def step_ours_logits() -> float:  # logits at every position, then the loss
        opt_ours.zero_grad(set_to_none=True)
        loss = mlm_loss(ours(inputs), labels)
        loss.backward()
        opt_ours.step()
        return loss.item()

    def step_ref() -> float:
        opt_ref.zero_grad(set_to_none=True)
        loss = ref(input_ids=inputs, labels=labels).loss
        loss.backward()
        opt_ref.step()
        return loss.item()

    n_ours = sum(p.numel() for p in ours.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    print(f"  encoder params: ours {n_ours / 1e6:.2f}M, BERT {n_ref / 1e6:.2f}M")
    return {"ours": step_ours, "ours (logits, then mlm_loss)": step_ours_logits,
            "transformers BertForMaskedLM": step_ref}


def keep_freed_memory() -> None:
    """glibc malloc: serve every size from the heap and never give freed memory back to the kernel."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1)):
        raise RuntimeError("mallopt failed: --keep-freed-memory needs glibc")


def page_faults(fns: dict[str, object]) -> None:
    """Minor page faults of one more step of each candidate."""
    faults = []
    for name, fn in fns.items():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()  # type: ignore[operator]
        faults.append(f"{name} {resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}")
    print("  minor page faults in one step: " + ", ".join(faults))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--which", choices=["decoder", "encoder", "both"], default="both")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc mallopt for both sides: no page faults for fresh buffers (compute alone)")
    args = ap.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig.preset(args.preset, max_seq_len=max(args.seq, 64))
    tokens = args.batch * args.seq
    print(f"train step, preset={args.preset} batch={args.batch} seq={args.seq} ({tokens} tokens/step); "
          f"{machine_line()}{'; freed memory kept (mallopt)' if args.keep_freed_memory else ''}")
    for which, build in (("decoder", decoder_steps), ("encoder", encoder_steps)):
        if args.which not in (which, "both"):
            continue
        fns = build(cfg, args.batch, args.seq)
        times = interleaved(fns, repeats=args.repeats)  # type: ignore[arg-type]
        print(f"{which}:")
        report(times, tokens, "tokens", next(n for n in times if n.startswith("transformers")))
        page_faults(fns)


if __name__ == "__main__":
    main()
