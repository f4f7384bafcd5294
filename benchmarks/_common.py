"""Helpers shared by the model benchmarks: interleaved timing and reference models with our weights."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: python benchmarks/x.py

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin ``repeats`` times (after ``warmup``
    calls each), so that machine noise spreads over all candidates instead of hitting one."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def best(ts: list[float]) -> float:
    """The fastest run: the least disturbed by other processes on a shared machine."""
    return min(ts)


def median(ts: list[float]) -> float:
    return statistics.median(ts)


def hf_llama_from(model: torch.nn.Module, *, attn: str = "sdpa") -> torch.nn.Module:
    """A transformers ``LlamaForCausalLM`` with exactly our model's weights (through our HF export)."""
    import transformers

    from training.core.interop.hf import export_hf

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, None, Path(tmp) / "hf")
        return transformers.LlamaForCausalLM.from_pretrained(Path(tmp) / "hf", attn_implementation=attn)


def machine_line() -> str:
    return (f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpus={os.cpu_count()}, "
            f"load average {os.getloadavg()[0]:.1f}")


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GEMM throughput (FLOP/s) of this machine with the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best_t = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best_t = min(best_t, time.perf_counter() - t0)
    return 2 * n ** 3 / best_t
