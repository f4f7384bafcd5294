"""FSDP2 overhead on CPU: 2 gloo ranks against 1 process on the same global batch.

Runs the real pretraining loop (``training.core.loops.pretrain.train``) three ways on the same
model, data and global batch, and reports the median step time of each (after warm-up steps):

* ``1 process, 2 threads``  — the reference: one process using both cores;
* ``1 process, 1 thread``   — what one core does alone;
* ``FSDP2 2 ranks x 1 thread`` — ``torchrun --nproc_per_node=2``, gloo, each rank half the batch.

It prints the ratios against the reference measured in the same run. The FSDP run pays for
all-gathers and reduce-scatters through gloo (on a 2-core machine the ranks also compete with
the communication threads), so the ratio is the overhead of sharding on CPU, not a speed-up
claim. Usage::

    .venv/bin/python benchmarks/bench_fsdp.py [--steps 12] [--warmup 4] [--dim 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker(args: argparse.Namespace) -> None:
    """Run the loop once and write the per-step times (rank 0)."""
    import torch

    from training.core.callbacks import RecordingCallbacks
    from training.core.config import PretrainConfig
    from training.core.loops.pretrain import train

    torch.set_num_threads(args.threads)
    cfg = PretrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    rec = RecordingCallbacks()
    summary = train(cfg, rec)
    if int(os.environ.get("RANK", "0")) == 0:
        times = [m["time_metrics/step_time(s)"] for _, m in rec.steps]
        Path(args.result).write_text(json.dumps({"times": times, "losses": rec.losses, "summary": summary}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the median")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from training.core import corpora
    from training.core.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig
    from training.core.data.shards import prepare_shards
    from training.core.tokenizer import train_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench_fsdp_"))
    texts = corpora.load_texts("austen", corpora.default_cache_dir() if (Path.cwd() / "var").exists()
                               else REPO / "var" / "cache", limit=60)
    tok = train_tokenizer(texts, 2048)
    prepare_shards(texts, tok, tmp / "ds", val_fraction=0.05)
    model = ModelConfig(vocab_size=tok.vocab_size, dim=args.dim, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                        max_seq_len=args.seq_len)

    def config(name: str, micro: int) -> Path:
        cfg = PretrainConfig(model=model, data=DataConfig(dataset_dir=str(tmp / "ds"), seq_len=args.seq_len,
                                                          micro_batch_size=micro, val_batches=0),
                             optim=OptimConfig(lr=1e-3, warmup_steps=0), steps=args.steps, eval_every=0,
                             ckpt_every=0, out_dir=str(tmp / name), device="cpu", dtype="fp32")
        path = tmp / f"{name}.json"
        path.write_text(cfg.to_json())
        return path

    def run(name: str, threads: int, ranks: int) -> dict:
        micro = args.global_batch // ranks
        result = tmp / f"{name}.result.json"
        script = [str(Path(__file__).resolve()), "--worker", "--config", str(config(name, micro)),
                  "--result", str(result), "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
        if ranks == 1:
            cmd = [sys.executable, *script]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *script]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
        return json.loads(result.read_text())

    runs = {
        "1 process, 2 threads": run("single2", threads=2, ranks=1),
        "1 process, 1 thread": run("single1", threads=1, ranks=1),
        "FSDP2 2 ranks x 1 thread (gloo)": run("fsdp2", threads=1, ranks=2),
    }
    n_params = model.n_params()
    print(f"model: dim={args.dim} layers={args.layers} params={n_params / 1e6:.2f}M, seq_len={args.seq_len}, "
          f"global batch={args.global_batch} sequences ({args.global_batch * args.seq_len} tokens), "
          f"median of steps {args.warmup + 1}..{args.steps}, CPU cores={os.cpu_count()}")
    ref = statistics.median(runs["1 process, 2 threads"]["times"][args.warmup:])
    print(f"{'setup':36s} {'step (ms)':>10s} {'tokens/s':>10s} {'vs 1 proc x 2 thr':>18s}")
    for name, res in runs.items():
        t = statistics.median(res["times"][args.warmup:])
        print(f"{name:36s} {t * 1e3:10.1f} {args.global_batch * args.seq_len / t:10.0f} {t / ref:17.2f}x")
    a, b = runs["1 process, 2 threads"]["losses"], runs["FSDP2 2 ranks x 1 thread (gloo)"]["losses"]
    print(f"max |loss difference| FSDP vs 1 process over {len(a)} steps: {max(abs(x - y) for x, y in zip(a, b)):.2e}")


if __name__ == "__main__":
    main()
