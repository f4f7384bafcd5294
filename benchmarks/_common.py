"""Helpers shared by the model benchmarks: interleaved timing and reference models with our weights."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: python benchmarks/x.py

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class Timing:
    """Wall-clock and process CPU seconds of repeated calls of one candidate."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def best(self, kind: str = "wall") -> float:
        """The fastest run: the least disturbed by other processes on a shared machine."""
        return min(getattr(self, kind))

    def median(self, kind: str = "wall") -> float:
        return statistics.median(getattr(self, kind))


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Time each function round-robin ``repeats`` times (after ``warmup`` calls each), so that
    machine noise spreads over all candidates instead of hitting one. CPU time (all threads of
    the process) is recorded next to wall time: on a shared, oversubscribed machine the wall
    clock also counts the time other jobs hold the cores, CPU time counts our own work only."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[name].wall.append(time.perf_counter() - t0)
            times[name].cpu.append(time.process_time() - c0)
    return times


def report(times: dict[str, Timing], work: float, unit: str, reference: str) -> None:
    """Print each candidate's best/median wall time and best CPU time, ``work`` units per call, and
    the speedups of "ours" over ``reference`` (best wall, median wall, best CPU)."""
    for name, t in times.items():
        print(f"  {name:32s} wall best {t.best() * 1e3:8.0f} ms  median {t.median() * 1e3:8.0f} ms  "
              f"cpu best {t.best('cpu') * 1e3:8.0f} ms  {work / t.best():9.1f} {unit}/s")
    ours, ref = times["ours"], times[reference]
    print(f"  speedup ours vs {reference}: x{ref.best() / ours.best():.2f} (best wall), "
          f"x{ref.median() / ours.median():.2f} (median wall), x{ref.best('cpu') / ours.best('cpu'):.2f} (best cpu)")


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


def optimizer_step(params: Any, opt: torch.optim.Optimizer, device: torch.device) -> None:
    """The end of one training step, the same on both sides of a comparison: grad clip (1.0), the
    optimizer step, zeroed grads, and a CUDA sync so that the timing covers the work."""
    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()


def trl_step_fn(trainer: Any, opt: torch.optim.Optimizer, batches: list[dict],
                device: torch.device) -> Callable[[], float]:
    """A function running one ``trainer.training_step`` (TRL's loss, backward, through accelerate) on
    the next of ``batches`` (cycled), then :func:`optimizer_step`; it returns the loss."""
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before each step
    state = {"i": 0}

    def step() -> float:
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        loss = trainer.training_step(model, dict(b))
        optimizer_step(model.parameters(), opt, device)
        return float(loss)

    return step


def trl_tokenizer(tok: Any, **kwargs: Any) -> dict[str, object]:
    """TRL's trainers want a transformers tokenizer (``processing_class``): ours, wrapped
    (``kwargs`` go to ``PreTrainedTokenizerFast``, e.g. ``padding_side``)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok.tokenizer, eos_token=tok.special_tokens["eos"],
                                   pad_token=tok.special_tokens["pad"], **kwargs)
    return {"processing_class": fast}


def small_model_config(vocab_size: int, dim: int, layers: int, max_seq_len: int) -> Any:
    """The benchmarks' model shape: 64-wide heads, grouped-query attention with half as many KV heads."""
    from training.core.config import ModelConfig

    return ModelConfig(vocab_size=vocab_size, dim=dim, n_layers=layers, n_heads=dim // 64,
                       n_kv_heads=max(1, dim // 128), max_seq_len=max_seq_len)
