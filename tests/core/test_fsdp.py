"""FSDP2 on 2 CPU ranks (gloo) against one process on the same global batch, and resharded resume.

Each test launches ``torchrun --standalone --nproc_per_node=2 -m training.core.cli pretrain`` in a
subprocess. One process with micro-batch 4 and two ranks with micro-batch 2 see exactly the same
sequences per step (the sampler gives rank r rows [2r, 2r+2) of the global batch), start from
the same weights (rank 0 initializes the full model and scatters it), so losses and parameters
must agree up to float reassociation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from training.core.callbacks import RecordingCallbacks
from training.core.checkpoint import load_model
from training.core.config import DataConfig, OptimConfig, PretrainConfig
from training.core.loops.pretrain import train

from .test_pretrain import tiny_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS, HALF = 6, 3
TOL = 1e-5


def _config(shards: dict[str, Path], out: Path, micro: int, **kw: Any) -> PretrainConfig:
    data = DataConfig(dataset_dir=str(shards["dataset"]), seq_len=64, micro_batch_size=micro, val_batches=2)
    return tiny_config(shards, out, steps=STEPS, data=data, eval_every=HALF,
                       optim=OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=0.1), **kw)


def _torchrun(cfg: PretrainConfig, tmp: Path, name: str) -> list[dict[str, Any]]:
    """Run the CLI under torchrun with 2 ranks; return its JSON-lines events."""
    config_file = tmp / f"{name}.json"
    config_file.write_text(cfg.to_json())
    events = tmp / f"{name}.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.core.cli", "pretrain", "-q", "--config", str(config_file), "--events", str(events)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads(line) for line in events.read_text().splitlines()]


def _losses(events: list[dict[str, Any]], kind: str = "step") -> dict[int, float]:
    key = "loss" if kind == "step" else "val/loss"
    return {e["step"]: e["metrics"][key] for e in events if e["event"] == kind}


def _max_param_diff(a: Path, b: Path) -> float:
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()  # a 2-rank checkpoint loads in 1 process
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@pytest.fixture(scope="module")
def single_process(austen_shards: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 1-process reference: a whole run, and a run stopped after HALF steps (checkpointed)."""
    tmp = tmp_path_factory.mktemp("fsdp_reference")
    whole = RecordingCallbacks()
    train(_config(austen_shards, tmp / "whole", micro=4), whole)
    stopped = RecordingCallbacks(stop_at_step=HALF)
    summary = train(_config(austen_shards, tmp / "half", micro=4), stopped)
    assert summary["status"] == "cancelled" and summary["step"] == HALF
    return {"tmp": tmp, "losses": {s: m["loss"] for s, m in whole.steps},
            "grad_norms": {s: m["grad_norm"] for s, m in whole.steps},
            "evals": {s: m["val/loss"] for s, m in whole.evals}}


def test_two_rank_fsdp_matches_one_process(austen_shards: dict[str, Path], single_process: dict[str, Any],
                                           tmp_path: Path) -> None:
    # activation checkpointing composed with FSDP (fixed order: AC, then fully_shard) changes no number
    cfg = _config(austen_shards, tmp_path / "fsdp", micro=2, activation_checkpointing=True)
    events = _torchrun(cfg, tmp_path, "fsdp")
    start = next(e for e in events if e["event"] == "start")["info"]
    assert start["world_size"] == 2 and start["tokens_per_step"] == 4 * 64
    losses = _losses(events)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step, loss in single_process["losses"].items():
        assert losses[step] == pytest.approx(loss, abs=TOL), step
    # clip_grad_norm_ over DTensor gradients gives the global norm
    norms = {e["step"]: e["metrics"]["grad_norm"] for e in events if e["event"] == "step"}
    for step, norm in single_process["grad_norms"].items():
        assert norms[step] == pytest.approx(norm, rel=1e-4), step
    for step, loss in single_process["evals"].items():
        assert _losses(events, "eval")[step] == pytest.approx(loss, abs=TOL), step
    assert single_process["losses"][STEPS] < single_process["losses"][1] - 0.05  # it did learn something
    assert _max_param_diff(single_process["tmp"] / "whole", tmp_path / "fsdp") < TOL


def test_one_rank_checkpoint_resumes_on_two_ranks(austen_shards: dict[str, Path], single_process: dict[str, Any],
                                                  tmp_path: Path) -> None:
    """DCP reshards the 1-process checkpoint (plain tensors) onto 2 ranks (DTensor shards)."""
    run = tmp_path / "resumed"
    shutil.copytree(single_process["tmp"] / "half", run)
    cfg = _config(austen_shards, run, micro=2, resume_from="auto")
    events = _torchrun(cfg, tmp_path, "resumed")
    assert any(e["event"] == "log" and "resumed from" in e["message"] for e in events)
    losses = _losses(events)
    assert sorted(losses) == list(range(HALF + 1, STEPS + 1))
    for step in range(HALF + 1, STEPS + 1):
        assert losses[step] == pytest.approx(single_process["losses"][step], abs=TOL), step
    assert _max_param_diff(single_process["tmp"] / "whole", run) < TOL


def test_fsdp_parameters_are_sharded(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    """Inside a 2-rank run every block's parameters are DTensors sharded on dim 0 across the mesh."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, torch\n"
        "from torch.distributed.tensor import DTensor\n"
        "from training.core.config import ModelConfig, PretrainConfig\n"
        "from training.core.distributed import init_distributed, destroy_distributed\n"
        "from training.core.loops.pretrain import _build_model\n"
        "ctx = init_distributed('cpu')\n"
        "cfg = PretrainConfig(model=ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=256))\n"
        "m = _build_model(cfg, ctx)\n"
        "info = {n: [type(p).__name__, list(p.to_local().shape), str(p.placements)] for n, p in m.named_parameters()}\n"
        "full = {n: p.full_tensor() for n, p in m.named_parameters()}\n"
        "ref = __import__('training.core.model', fromlist=['Transformer']).Transformer(cfg.model)\n"
        "ref.init_weights(seed=cfg.seed)\n"
        "same = all(torch.equal(full[n], p) for n, p in ref.named_parameters())\n"
        "from training.core.checkpoint import export_model\n"
        f"export_model(m, {str(tmp_path / 'export')!r}, ctx=ctx)  # collective: gathers the shards\n"
        "if ctx.rank == 0: print(json.dumps({'params': info, 'same_init': same}))\n"
        "destroy_distributed(ctx)\n")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert out["same_init"]  # the same initial weights as one process with the same seed
    wq = out["params"]["layers.0.attention.wq.weight"]
    assert wq[0] == "DTensor" and wq[1] == [16, 32] and "Shard(dim=0)" in wq[2]
    assert all(kind == "DTensor" for kind, _, _ in out["params"].values())
    # the consolidated export written from the shards is the full model
    from training.core.config import ModelConfig
    from training.core.model import Transformer

    reference = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=256))
    reference.init_weights(seed=0)
    exported = load_model(tmp_path / "export").state_dict()
    assert all(torch.equal(exported[k], v) for k, v in reference.state_dict().items())
