"""The pretraining loop: learning on real text, invariants of a step, callbacks, masked-LM."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from training.core.callbacks import CallbackList, JsonlCallbacks, RecordingCallbacks, STEP_METRICS
from training.core.checkpoint import load_model
from training.core.config import ConfigError, DataConfig, ModelConfig, OptimConfig, PretrainConfig
from training.core.distributed import DistContext
from training.core.loops.pretrain import forward_backward, train
from training.core.model import Transformer


def tiny_config(shards: dict[str, Path], out_dir: Path, **overrides: object) -> PretrainConfig:
    """About 0.1M parameters, 64-token sequences: a few ms per step on CPU."""
    model = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    data = DataConfig(dataset_dir=str(shards["dataset"]), seq_len=64, micro_batch_size=8, val_batches=4)
    optim = OptimConfig(lr=3e-3, warmup_steps=5)
    base = dict(model=model, data=data, optim=optim, steps=10, eval_every=0, ckpt_every=0, out_dir=str(out_dir),
                tokenizer_dir=str(shards["tokenizer"]), device="cpu", dtype="fp32")
    base.update(overrides)
    return PretrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.slow
def test_loss_falls_on_austen(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(austen_shards, tmp_path / "run", steps=80, eval_every=40)
    rec = RecordingCallbacks()
    summary = train(cfg, rec)

    assert summary["status"] == "completed" and summary["step"] == 80
    first, last = rec.losses[0], sum(rec.losses[-5:]) / 5
    assert abs(first - math.log(512)) < 0.15  # starts near uniform over the vocabulary
    assert last < first - 1.0, (first, last)
    # validation on held-out chapters improves too, and perplexity is exp(loss)
    (s1, v1), (s2, v2) = rec.evals
    assert (s1, s2) == (40, 80)
    assert v2["val/loss"] < v1["val/loss"] < math.log(512)
    assert v2["val/perplexity"] == pytest.approx(math.exp(v2["val/loss"]), rel=1e-9)
    assert summary["val/loss"] == v2["val/loss"]
    # every step reports the metric names the studio charts
    step, metrics = rec.steps[-1]
    for name in set(STEP_METRICS) - {"mfu(%)", "memory/max_reserved(GiB)"}:  # no peak FLOPs / CUDA on CPU
        assert name in metrics, name
    assert metrics["current_steps"] == 80 and metrics["total_steps"] == 80 and metrics["remaining_time"] == 0.0
    assert metrics["throughput(tps)"] > 0 and metrics["tflops"] > 0
    assert 0.0 <= metrics["time_metrics/data_loading(%)"] <= 100.0
    assert rec.info["total_steps"] == 80 and rec.info["tokens_per_step"] == 8 * 64
    # the final checkpoint holds the trained model, with the run's config
    assert Path(summary["checkpoint"]).name == "step_000080"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 80


def test_peak_tflops_gives_mfu(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(austen_shards, tmp_path / "run", steps=2, peak_tflops=0.5, data=DataConfig(
        dataset_dir=str(austen_shards["dataset"]), seq_len=64, micro_batch_size=8, val_batches=0))
    rec = RecordingCallbacks()
    train(cfg, rec)
    m = rec.steps[-1][1]
    assert m["mfu(%)"] == pytest.approx(100.0 * m["tflops"] / 0.5)


def test_every_trainable_parameter_changes_in_one_step(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    cfg = tiny_config(austen_shards, tmp_path / "run", steps=1, optim=OptimConfig(lr=1e-3, warmup_steps=0))
    train(cfg, RecordingCallbacks())
    before = Transformer(cfg.model)
    before.init_weights(seed=cfg.seed)  # what the loop starts from
    after = load_model(tmp_path / "run")
    names = [n for n, p in before.named_parameters() if p.requires_grad]
    assert len(names) == len(list(after.named_parameters()))
    sd_after = dict(after.named_parameters())
    unchanged = [n for n, p in before.named_parameters() if torch.equal(p, sd_after[n])]
    assert unchanged == []


def test_micro_batches_with_accumulation_equal_one_big_batch(austen_shards: dict[str, Path]) -> None:
    from training.core.data.sampler import PackedSampler
    from training.core.data.shards import TokenShards

    cfg = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, max_seq_len=64)
    inputs, targets = next(PackedSampler(TokenShards(austen_shards["dataset"]), 64, 8))  # (8, 64)
    targets = targets.clone()
    targets[5, :17] = -100  # uneven scored-token counts across micro-batches: weighting must be by tokens

    def grads(micro: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, dict[str, torch.Tensor]]:
        model = Transformer(cfg)
        model.init_weights(seed=3)
        loss = forward_backward(model, micro, DistContext())
        return loss, {n: p.grad.clone() for n, p in model.named_parameters()}

    big_loss, big = grads([(inputs, targets)])
    from training.core.losses import lm_loss

    reference = Transformer(cfg)
    reference.init_weights(seed=3)
    with torch.no_grad():
        expected = lm_loss(reference(inputs), targets).item()
    assert big_loss == pytest.approx(expected, abs=1e-5)  # the fused head + loss path == loss over logits
    acc_loss, acc = grads([(inputs[i:i + 2], targets[i:i + 2]) for i in range(0, 8, 2)])
    assert acc_loss == pytest.approx(big_loss, abs=1e-6)
    for name in big:
        torch.testing.assert_close(acc[name], big[name], rtol=1e-5, atol=1e-7, msg=name)


def test_loop_accumulation_matches_big_batch(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    """The loop agrees: micro 8 x accum 1 == micro 2 x accum 4 (same loss and gradient norm)."""
    def run(micro: int, accum: int, name: str) -> RecordingCallbacks:
        data = DataConfig(dataset_dir=str(austen_shards["dataset"]), seq_len=64, micro_batch_size=micro,
                          grad_accum_steps=accum, val_batches=0)
        rec = RecordingCallbacks()
        train(tiny_config(austen_shards, tmp_path / name, steps=3, data=data), rec)
        return rec

    big, small = run(8, 1, "big"), run(2, 4, "small")
    for (_, a), (_, b) in zip(big.steps, small.steps):
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_masked_lm_encoder_trains(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    model = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, max_seq_len=64, mode="encoder")
    cfg = tiny_config(austen_shards, tmp_path / "run", model=model, objective="mlm", steps=40, eval_every=20,
                      optim=OptimConfig(lr=3e-3, warmup_steps=5))
    rec = RecordingCallbacks()
    summary = train(cfg, rec)
    assert summary["status"] == "completed"
    first, last = rec.losses[0], sum(rec.losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert rec.evals[-1][1]["val/loss"] < math.log(512)
    restored = load_model(summary["checkpoint"])
    assert restored.cfg.mode == "encoder"


def test_mlm_needs_an_encoder_and_a_tokenizer(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        tiny_config(austen_shards, tmp_path, objective="mlm")  # decoder model
    assert e.value.field == "model.mode"
    encoder = ModelConfig(vocab_size=512, dim=64, n_layers=1, n_heads=4, max_seq_len=64, mode="encoder")
    cfg = tiny_config(austen_shards, tmp_path / "r", model=encoder, objective="mlm", tokenizer_dir="")
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert e.value.field == "tokenizer_dir"


def test_small_vocabulary_is_a_config_error(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    model = ModelConfig(vocab_size=256, dim=64, n_layers=1, n_heads=4, max_seq_len=64)
    with pytest.raises(ConfigError) as e:
        train(tiny_config(austen_shards, tmp_path / "r", model=model))
    assert e.value.field == "model.vocab_size" and "512" in e.value.hint


def test_callback_stop_ends_cancelled_with_a_checkpoint(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    rec = RecordingCallbacks(stop_at_step=3)
    buf = io.StringIO()
    summary = train(tiny_config(austen_shards, tmp_path / "run", steps=50), CallbackList([rec, JsonlCallbacks(buf)]))
    assert summary["status"] == "cancelled" and summary["step"] == 3
    assert rec.checkpoints == [(3, summary["checkpoint"])]
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "step", "step", "step", "checkpoint", "end"]
    assert events[1] == {"event": "step", "time": events[1]["time"], "step": 1, "metrics": events[1]["metrics"]}
    assert events[-1]["summary"]["status"] == "cancelled"


def test_activation_checkpointing_gives_the_same_losses(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    plain, ac = RecordingCallbacks(), RecordingCallbacks()
    train(tiny_config(austen_shards, tmp_path / "a", steps=3), plain)
    train(tiny_config(austen_shards, tmp_path / "b", steps=3, activation_checkpointing=True), ac)
    assert ac.losses == pytest.approx(plain.losses, abs=1e-6)
    # state-dict keys are unchanged by the wrapper: the checkpoint loads into a plain model
    load_model(tmp_path / "b")


def test_jsonl_callbacks_write_one_event_per_line(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.jsonl"
    cb = JsonlCallbacks(path)
    cb.on_start({"total_steps": 2})
    cb.on_step(1, {"loss": 2.5, "grad_norm": float("nan")})
    cb.on_eval(1, {"val/loss": torch.tensor(2.0)})
    cb.on_end({"status": "completed"})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in lines] == ["start", "step", "eval", "end"]
    assert lines[1]["step"] == 1 and lines[1]["metrics"] == {"loss": 2.5, "grad_norm": None}  # NaN is not JSON
    assert lines[2]["metrics"]["val/loss"] == 2.0


def test_outside_transforms_keep_outputs_and_state_dict_keys() -> None:
    """apply_ac and apply_compile wrap blocks from outside: same logits, same checkpoint keys."""
    from training.core.distributed import apply_ac, apply_compile

    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=16)
    plain = Transformer(cfg)
    plain.init_weights(seed=0)
    tokens = torch.randint(0, 64, (2, 8))
    expected = plain(tokens)
    for transform in (apply_ac, lambda m: apply_compile(m, backend="eager"),
                      lambda m: apply_compile(apply_ac(m), backend="eager")):
        model = Transformer(cfg)
        model.load_state_dict(plain.state_dict())
        transform(model)
        assert list(model.state_dict()) == list(plain.state_dict())
        out = model(tokens)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)  # dynamo may reorder float ops
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_bf16_autocast_tracks_fp32(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    """dtype='bf16' runs the forward under bf16 autocast (CPU here, CUDA on GPUs): close to fp32."""
    fp32, bf16 = RecordingCallbacks(), RecordingCallbacks()
    train(tiny_config(austen_shards, tmp_path / "a", steps=3, dtype="fp32"), fp32)
    train(tiny_config(austen_shards, tmp_path / "b", steps=3, dtype="bf16"), bf16)
    assert (fp32.info["dtype"], bf16.info["dtype"]) == ("float32", "bfloat16")
    assert bf16.losses == pytest.approx(fp32.losses, abs=0.02)
    assert bf16.losses != fp32.losses  # it did compute in another precision


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(austen_shards: dict[str, Path], tmp_path: Path) -> None:
    """compile=True (inductor, per block) gives the losses of the eager model."""
    eager, compiled = RecordingCallbacks(), RecordingCallbacks()
    train(tiny_config(austen_shards, tmp_path / "a", steps=3), eager)
    train(tiny_config(austen_shards, tmp_path / "b", steps=3, compile=True), compiled)
    assert compiled.losses == pytest.approx(eager.losses, abs=1e-5)
    load_model(tmp_path / "b")  # in-place compile keeps the state-dict keys
