"""Checkpoints: exact resume, atomic writes, clear errors on damage, SIGTERM, consolidated export."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.core.callbacks import RecordingCallbacks
from training.core.checkpoint import (
    CheckpointError,
    export_model,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from training.core.config import DataConfig, ModelConfig, OptimConfig
from training.core.loops.pretrain import train
from training.core.model import Transformer
from training.core.optim import build_optimizer

from .test_pretrain import tiny_config

REPO = Path(__file__).resolve().parents[2]
K = 4


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).state_dict()


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_resume_is_bit_identical(austen_shards: dict[str, Path], tmp_path: Path, objective: str) -> None:
    """2K steps in one go == K steps, stop, resume, K steps: same losses and weights, bit for bit."""
    extra: dict[str, object] = {"ckpt_every": 3, "eval_every": 2}
    if objective == "mlm":
        extra.update(objective="mlm", model=ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, max_seq_len=64,
                                                        mode="encoder"))
    whole = RecordingCallbacks()
    train(tiny_config(austen_shards, tmp_path / "whole", steps=2 * K, **extra), whole)

    first = RecordingCallbacks(stop_at_step=K)
    s1 = train(tiny_config(austen_shards, tmp_path / "split", steps=2 * K, **extra), first)
    assert s1["status"] == "cancelled" and s1["step"] == K
    second = RecordingCallbacks()
    s2 = train(tiny_config(austen_shards, tmp_path / "split", steps=2 * K, resume_from="auto", **extra), second)
    assert s2["status"] == "completed" and s2["start_step"] == K
    assert second.steps[0][0] == K + 1

    assert first.losses + second.losses == whole.losses  # exact float equality
    assert [m["lr"] for _, m in first.steps + second.steps] == [m["lr"] for _, m in whole.steps]
    assert [m["grad_norm"] for _, m in first.steps + second.steps] == [m["grad_norm"] for _, m in whole.steps]
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert s2["val/loss"] == whole.evals[-1][1]["val/loss"]


def test_resume_from_an_explicit_checkpoint_folder(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    rec = RecordingCallbacks()
    train(tiny_config(austen_shards, tmp_path / "run", steps=4, ckpt_every=2), rec)
    step2 = tmp_path / "run" / "checkpoints" / "step_000002"
    again = RecordingCallbacks()
    train(tiny_config(austen_shards, tmp_path / "again", steps=4, resume_from=str(step2)), again)
    assert again.losses == rec.losses[2:]


def _tiny_model() -> tuple[Transformer, torch.optim.Optimizer]:
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, max_seq_len=16)
    model = Transformer(cfg)
    model.init_weights(seed=0)
    opt = build_optimizer(model, OptimConfig(warmup_steps=0))
    model(torch.randint(0, 64, (2, 8))).sum().backward()
    opt.step()
    opt.zero_grad()
    return model, opt


def test_layout_latest_pointer_and_leftover_tmp(tmp_path: Path) -> None:
    model, opt = _tiny_model()
    p1 = save_checkpoint(tmp_path, 1, model, opt, config={"model": model.cfg.to_dict()})
    assert p1 == tmp_path / "checkpoints" / "step_000001"
    assert {f.name for f in p1.iterdir()} == {"dcp", "trainer_state.pt", "rank_00000.pt", "config.json",
                                              "checkpoint.json"}
    # an interrupted save leaves a .tmp folder: it is not a checkpoint and latest does not move
    (tmp_path / "checkpoints" / "step_000002.tmp").mkdir()
    assert latest_checkpoint(tmp_path) == p1
    assert find_checkpoint(tmp_path) == p1
    with pytest.raises(CheckpointError, match="unfinished"):
        find_checkpoint(tmp_path / "checkpoints" / "step_000002.tmp")
    # the next save of that step cleans the leftover and publishes
    p2 = save_checkpoint(tmp_path, 2, model, opt, config={"model": model.cfg.to_dict()})
    assert latest_checkpoint(tmp_path) == p2 and not (tmp_path / "checkpoints" / "step_000002.tmp").exists()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000002"


def test_a_good_checkpoint_is_never_overwritten(tmp_path: Path) -> None:
    model, opt = _tiny_model()
    p = save_checkpoint(tmp_path, 5, model, opt, trainer_state={"marker": "first"})
    save_checkpoint(tmp_path, 5, model, opt, trainer_state={"marker": "second"})
    kept = [d for d in (tmp_path / "checkpoints").iterdir() if d.name.startswith("step_000005.superseded-")]
    assert len(kept) == 1
    assert torch.load(kept[0] / "trainer_state.pt", weights_only=True)["marker"] == "first"
    assert torch.load(p / "trainer_state.pt", weights_only=True)["marker"] == "second"


def test_keep_last_prunes_old_checkpoints(tmp_path: Path) -> None:
    model, opt = _tiny_model()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, keep_last=2)
    assert sorted(d.name for d in (tmp_path / "checkpoints").glob("step_*")) == ["step_000002", "step_000003"]


class _RunsCode:
    """Unpickling this object would create a file: a stand-in for a malicious checkpoint."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return Path.touch, (str(self.target),)  # type: ignore[return-value]


def test_loading_a_checkpoint_never_runs_code(tmp_path: Path) -> None:
    """Side files are read with weights_only=True: a pickle that would run code is refused."""
    model, opt = _tiny_model()
    p = save_checkpoint(tmp_path, 1, model, opt)
    state = load_checkpoint(p, model, opt)
    assert isinstance(state["rank_state"]["rng"]["numpy"]["keys"], torch.Tensor)  # no numpy arrays in the file
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "evil": _RunsCode(marker)}, p / "trainer_state.pt")
    manifest = json.loads((p / "checkpoint.json").read_text())
    manifest["files"]["trainer_state.pt"] = (p / "trainer_state.pt").stat().st_size  # pass the size check
    (p / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="trainer_state.pt"):
        load_checkpoint(p, model, opt)
    assert not marker.exists()


def test_rng_state_round_trips_and_older_numpy_states_still_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    from training.core.checkpoint import _torch_load, capture_rng_state, restore_rng_state

    torch.save({"rng": capture_rng_state()}, tmp_path / "new.pt")
    torch.save({"rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),  # the older layout
                        "python": random.getstate()}}, tmp_path / "old.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    for name in ("new.pt", "old.pt"):
        restore_rng_state(_torch_load(tmp_path / name)["rng"])
        got = (torch.rand(3), np.random.rand(3), random.random())
        assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_missing_and_corrupt_checkpoints_raise_clear_errors(tmp_path: Path) -> None:
    model, opt = _tiny_model()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "nope", model, opt)
    assert "nope" in str(e.value) and e.value.hint
    p = save_checkpoint(tmp_path / "run", 1, model, opt)

    # truncated shard file
    shard = next((p / "dcp").glob("*.distcp"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p, model, opt)
    assert str(p) in str(e.value) and "truncated" in e.value.message and "earlier" in e.value.hint
    shard.write_bytes(data)
    load_checkpoint(p, model, opt)  # repaired: loads

    # garbage in the trainer state (same size, so only unpickling can notice)
    ts = p / "trainer_state.pt"
    size = ts.stat().st_size
    ts.write_bytes(b"\0" * size)
    with pytest.raises(CheckpointError, match="trainer_state.pt"):
        load_checkpoint(p, model, opt)

    # a latest pointer to nothing
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_000099")
    with pytest.raises(CheckpointError, match="step_000099"):
        find_checkpoint(tmp_path / "run")

    # missing manifest
    (p / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete|no checkpoint.json"):
        load_checkpoint(p, model, opt)


def test_model_only_checkpoint_cannot_be_resumed(tmp_path: Path) -> None:
    model, opt = _tiny_model()
    p = save_checkpoint(tmp_path, 0, model, None, config={"model": model.cfg.to_dict()})
    with pytest.raises(CheckpointError, match="init_from"):
        load_checkpoint(p, model, opt)
    restored = load_model(p)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))


def test_wrong_model_shape_is_a_checkpoint_error(tmp_path: Path) -> None:
    model, opt = _tiny_model()
    p = save_checkpoint(tmp_path, 1, model, opt)
    other = Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=2, max_seq_len=16))
    with pytest.raises(CheckpointError, match="config"):
        load_checkpoint(p, other, build_optimizer(other, OptimConfig()))


def test_resuming_with_other_model_settings_names_them(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    train(tiny_config(austen_shards, tmp_path / "run", steps=2))
    wider = ModelConfig(vocab_size=512, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=64)
    with pytest.raises(CheckpointError) as e:
        train(tiny_config(austen_shards, tmp_path / "run", steps=4, resume_from="auto", model=wider))
    assert "n_layers" in e.value.message and "step_000002" in e.value.path


def test_consolidated_safetensors_export_round_trip(tmp_path: Path) -> None:
    from safetensors import safe_open

    model, _ = _tiny_model()
    tied = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, max_seq_len=16,
                                   tie_embeddings=True))
    for m, name in ((model, "untied"), (tied, "tied")):
        out = export_model(m, tmp_path / name, config={"note": name})
        assert out is not None
        meta = json.loads((out / "config.json").read_text())
        assert meta["format"] == "llm-studio" and meta["note"] == name and meta["model"] == m.cfg.to_dict()
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert ("output.weight" in keys) == (name == "untied")
        back = load_model(out)
        tokens = torch.randint(0, 64, (2, 8))
        torch.testing.assert_close(back(tokens), m.eval()(tokens), rtol=0, atol=0)
        if name == "tied":
            assert back.output.weight is back.tok_embeddings.weight


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_exits_cancelled(austen_shards: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training.core.cli", "pretrain", "-q", "--events", str(events),
           "--set", "model.vocab_size=512", "--set", "model.dim=64", "--set", "model.n_layers=2",
           "--set", "model.n_heads=4", "--set", "model.n_kv_heads=2", "--set", "model.max_seq_len=64",
           "--set", f"data.dataset_dir={austen_shards['dataset']}", "--set", "data.seq_len=64",
           "--set", "data.val_batches=0", "--set", "steps=100000", "--set", "eval_every=0",
           "--set", f"out_dir={out}", "--set", "device=cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (events.exists() and '"event": "step"' in events.read_text()):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "cancelled" and 0 < summary["step"] < 100000
    assert latest_checkpoint(out) == Path(summary["checkpoint"])
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[-1]["event"] == "end" and lines[-1]["summary"]["status"] == "cancelled"
    assert lines[-2]["event"] == "checkpoint"
    # and the run resumes from there
    rec = RecordingCallbacks()
    cfg = tiny_config(austen_shards, out, steps=summary["step"] + 2, resume_from="auto",
                      data=DataConfig(dataset_dir=str(austen_shards["dataset"]), seq_len=64, val_batches=0),
                      optim=OptimConfig())
    train(cfg, rec)
    assert [s for s, _ in rec.steps] == [summary["step"] + 1, summary["step"] + 2]
