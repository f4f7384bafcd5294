"""CPU model-FLOPs utilisation (MFU) of our training step, next to transformers' on the same shapes.

MFU = model FLOPs per second / peak FLOPs per second. Model FLOPs per token are
``ModelConfig.flops_per_token(seq)`` (6 N + 12 L d T, PaLM appendix B; N without the input
embedding); the peak is the best fp32 GEMM throughput (4096 x 4096 @ 4096 x 4096 by default)
measured right before, in the same process, with the same threads. A train step is forward +
backward + fused AdamW, as in ``bench_train_step.py``.

Two figures per model: from the wall clock, and from process CPU time (the same ratio with every
second the shared machine gave to other jobs removed from both the step and the peak).

    python benchmarks/bench_mfu.py                      # "small" preset (15.7M params), batch 8 x 256
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import interleaved, machine_line  # noqa: I001
from bench_train_step import decoder_steps

from training.core.config import ModelConfig


def matmul_peak(n: int, repeats: int) -> tuple[float, float]:
    """Best fp32 GEMM FLOP/s by wall clock and by process CPU time."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        a @ b
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return 2 * n ** 3 / wall, 2 * n ** 3 / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-n", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig.preset(args.preset, max_seq_len=max(args.seq, 64))
    tokens = args.batch * args.seq
    flops_step = cfg.flops_per_token(args.seq) * tokens
    peak_wall, peak_cpu = matmul_peak(args.peak_n, 5)
    print(f"MFU, preset={args.preset} ({cfg.n_params() / 1e6:.1f}M params), batch={args.batch} seq={args.seq}, "
          f"{cfg.flops_per_token(args.seq) / 1e6:.1f} MFLOP/token; {machine_line()}")
    print(f"  fp32 matmul peak ({args.peak_n}^3): {peak_wall / 1e9:.1f} GFLOP/s (wall), "
          f"{peak_cpu / 1e9:.1f} GFLOP/s per CPU-second")
    fns = decoder_steps(cfg, args.batch, args.seq)
    fns.pop("ours (logits, then lm_loss)", None)
    times = interleaved(fns, repeats=args.repeats)  # type: ignore[arg-type]
    # the peak again, after: the machine may have changed; the better of the two is the peak
    pw, pc = matmul_peak(args.peak_n, 3)
    peak_wall, peak_cpu = max(peak_wall, pw), max(peak_cpu, pc)
    for name, t in times.items():
        mfu_wall = flops_step / t.best() / peak_wall
        mfu_cpu = flops_step / t.best("cpu") / peak_cpu
        print(f"  {name:32s} {tokens / t.best():8.0f} tokens/s  {flops_step / t.best() / 1e9:6.1f} GFLOP/s  "
              f"MFU {100 * mfu_wall:5.1f}% (wall)  {100 * mfu_cpu:5.1f}% (cpu time)")


if __name__ == "__main__":
    main()
