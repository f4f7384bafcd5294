"""DPO: losses against hand computation, the loop on the real HHH pairs, refusals, resume, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from training.core.callbacks import RecordingCallbacks
from training.core.checkpoint import find_checkpoint, load_model
from training.core.config import ConfigError, DPOConfig, OptimConfig
from training.core.losses import dpo_loss
from training.core.loops.dpo import sequence_logps, train

from .runs import whole_and_split_runs


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---- losses ---------------------------------------------------------------------------------

PC, PR = torch.tensor([-1.0, -4.0, -2.5]), torch.tensor([-3.0, -2.0, -2.5])
RC, RR = torch.tensor([-2.0, -3.0, -1.0]), torch.tensor([-2.5, -2.5, -3.0])


def _h(i: int) -> float:  # (pc - pr) - (rc - rr) by hand: 1.5, -1.5, -2.0
    return (PC[i].item() - PR[i].item()) - (RC[i].item() - RR[i].item())


def test_dpo_sigmoid_loss_equals_hand_computation() -> None:
    beta = 0.5
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="sigmoid")
    expected = [-math.log(_sigmoid(beta * _h(i))) for i in range(3)]
    assert [_h(i) for i in range(3)] == [1.5, -1.5, -2.0]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert rc.tolist() == pytest.approx([0.5 * 1.0, 0.5 * -1.0, 0.5 * -1.5], abs=1e-6)
    assert rr.tolist() == pytest.approx([0.5 * -0.5, 0.5 * 0.5, 0.5 * 0.5], abs=1e-6)


def test_dpo_sigmoid_label_smoothing_equals_hand_computation() -> None:
    beta, eps = 0.5, 0.1
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="sigmoid", label_smoothing=eps)
    expected = [-(1 - eps) * math.log(_sigmoid(beta * _h(i))) - eps * math.log(_sigmoid(-beta * _h(i)))
                for i in range(3)]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)


def test_dpo_hinge_loss_equals_hand_computation() -> None:
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="hinge")
    # max(0, 1 - 0.5 h): h = 1.5 -> 0.25, h = -1.5 -> 1.75, h = -2 -> 2
    assert losses.tolist() == pytest.approx([0.25, 1.75, 2.0], abs=1e-6)


def test_dpo_ipo_loss_equals_hand_computation() -> None:
    losses, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo")
    # (h - 1/(2 beta))^2 = (h - 1)^2
    assert losses.tolist() == pytest.approx([0.25, 6.25, 9.0], abs=1e-6)


def test_dpo_loss_gradient_raises_the_chosen_answer() -> None:
    pc = torch.tensor([-2.0], requires_grad=True)
    losses, _, _ = dpo_loss(pc, torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1)
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.1 * 0.5)  # d/dx -log sigmoid(beta x) at 0 = -beta/2


def test_unknown_loss_type_is_refused() -> None:
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(PC, PR, RC, RR, loss_type="kto")
    with pytest.raises(ConfigError) as e:
        DPOConfig(init_from="x", train_file="y", loss_type="kto")
    assert e.value.field == "loss_type"


def test_sequence_logps_scores_answer_tokens_only() -> None:
    from training.core.config import ModelConfig
    from training.core.data.preference import PreferencePair, collate_pairs
    from training.core.model import Transformer

    model = Transformer(ModelConfig.preset("tiny", vocab_size=64, max_seq_len=32)).eval()
    pair = PreferencePair(prompt=(1, 2, 3), chosen=(4, 5), rejected=(6, 7, 8))
    batch = collate_pairs([pair], pad_id=0)
    got = sequence_logps(model, batch)
    with torch.no_grad():
        for row, answer in ((0, [4, 5]), (1, [6, 7, 8])):
            ids = torch.tensor([[1, 2, 3, *answer]])
            logp = torch.log_softmax(model(ids)[0].float(), -1)
            want = sum(logp[2 + j, tok].item() for j, tok in enumerate(answer))
            assert got[row].item() == pytest.approx(want, abs=1e-4)


# ---- the loop -------------------------------------------------------------------------------

def _write(records: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _cfg(tiny_policy: Path, train_file: Path, out: Path, **kw: object) -> DPOConfig:
    base = dict(init_from=str(tiny_policy), train_file=str(train_file), out_dir=str(out), steps=4,
                micro_batch_size=4, grad_accum_steps=1, max_seq_len=192, max_prompt_len=96, eval_every=0,
                ckpt_every=0, eval_fraction=0.0, device="cpu", dtype="fp32", min_pairs=8,
                optim=OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=0.0, min_lr_ratio=1.0))
    base.update(kw)
    return DPOConfig(**base)  # type: ignore[arg-type]


def test_dpo_on_hhh_pairs_raises_margins_and_accuracy(tiny_policy: Path, hhh_records: list[dict],
                                                     tmp_path: Path) -> None:
    train_file = _write(hhh_records[:32], tmp_path / "pairs.jsonl")
    cfg = _cfg(tiny_policy, train_file, tmp_path / "run", steps=24, micro_batch_size=8,
               eval_file=str(train_file), eval_every=24, beta=0.1)
    rec = RecordingCallbacks()
    summary = train(cfg, rec)
    assert summary["status"] == "completed"
    steps = [m for _, m in rec.steps]
    for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected"):
        assert all(math.isfinite(m[name]) for m in steps), name
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 1
    late = steps[-4:]
    assert sum(m["rewards/margins"] for m in late) / 4 > 0.5
    assert sum(m["rewards/accuracies"] for m in late) / 4 >= 0.9
    assert sum(m["loss"] for m in late) / 4 < steps[0]["loss"] - 0.2
    final = rec.evals[-1][1]  # the training pairs, scored after training
    assert final["eval/rewards/accuracies"] >= 0.9 and final["eval/rewards/margins"] > 0.5


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_every_trainable_parameter_changes_in_a_step(loss_type: str, tiny_policy: Path, hhh_records: list[dict],
                                                   tmp_path: Path) -> None:
    train_file = _write(hhh_records[:8], tmp_path / "pairs.jsonl")
    cfg = _cfg(tiny_policy, train_file, tmp_path / "run", steps=2, micro_batch_size=8, loss_type=loss_type)
    train(cfg, RecordingCallbacks())
    before = load_model(tiny_policy)
    after = dict(load_model(find_checkpoint(tmp_path / "run")).named_parameters())
    unchanged = [n for n, p in before.named_parameters() if torch.equal(p, after[n])]
    assert unchanged == []


def test_resume_equals_uninterrupted(tiny_policy: Path, hhh_records: list[dict], tmp_path: Path) -> None:
    train_file = _write(hhh_records[:24], tmp_path / "pairs.jsonl")
    whole, split = whole_and_split_runs(train, lambda out, **kw: _cfg(tiny_policy, train_file, out, steps=4, **kw),
                                        tmp_path)
    assert [m["loss"] for m in split] == pytest.approx([m["loss"] for m in whole], abs=1e-6)


def test_precomputed_reference_logps_give_the_same_run(tiny_policy: Path, hhh_records: list[dict],
                                                       tmp_path: Path) -> None:
    train_file = _write(hhh_records[:16], tmp_path / "pairs.jsonl")
    live, pre = RecordingCallbacks(), RecordingCallbacks()
    train(_cfg(tiny_policy, train_file, tmp_path / "live", steps=3), live)
    train(_cfg(tiny_policy, train_file, tmp_path / "pre", steps=3, precompute_ref_logps=True), pre)
    for (_, a), (_, b) in zip(live.steps, pre.steps):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-5)


def test_too_few_pairs_are_refused_before_any_compute(tiny_policy: Path, hhh_records: list[dict],
                                                      tmp_path: Path) -> None:
    train_file = _write(hhh_records[:5], tmp_path / "pairs.jsonl")
    rec = RecordingCallbacks()
    with pytest.raises(ConfigError) as e:
        train(_cfg(tiny_policy, train_file, tmp_path / "run", min_pairs=8), rec)
    assert e.value.field == "train_file" and "5 usable preference pairs" in e.value.message
    assert rec.steps == [] and not (tmp_path / "run").exists()


def test_reference_from_another_base_is_refused(tiny_policy: Path, hhh_records: list[dict],
                                                tmp_path: Path) -> None:
    from training.core.checkpoint import export_model
    from training.core.config import ModelConfig
    from training.core.model import Transformer
    from training.core.tokenizer import StudioTokenizer

    other = tmp_path / "other"
    tok = StudioTokenizer.load(tiny_policy)
    export_model(Transformer(ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256, dim=64)), other)
    tok.save(other)
    train_file = _write(hhh_records[:8], tmp_path / "pairs.jsonl")
    with pytest.raises(ConfigError) as e:
        train(_cfg(tiny_policy, train_file, tmp_path / "run", ref_model=str(other)), RecordingCallbacks())
    assert e.value.field == "ref_model" and "another base" in e.value.message


def test_checkpoint_loads_as_a_chat_model(tiny_policy: Path, hhh_records: list[dict], tmp_path: Path) -> None:
    from training.core.cli import load_model_and_tokenizer, main
    from training.core.serve import generate

    train_file = _write(hhh_records[:8], tmp_path / "pairs.jsonl")
    cfg = _cfg(tiny_policy, train_file, tmp_path / "run", steps=1, micro_batch_size=8)
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(cfg.to_json(), encoding="utf-8")
    events = tmp_path / "events.jsonl"
    assert main(["dpo", "--config", str(cfg_file), "--set", "steps=2", "--events", str(events), "--quiet"]) == 0
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds[0] == "start" and kinds.count("step") == 2 and kinds[-1] == "end"
    model, tok = load_model_and_tokenizer(str(tmp_path / "run"))
    assert tok is not None and tok.fingerprint == load_model_and_tokenizer(str(tiny_policy))[1].fingerprint
    assert len(generate(model, [tok.encode("Hello")], max_new_tokens=3)[0]) == 3


@pytest.mark.slow
def test_two_rank_fsdp_matches_one_process(tiny_policy: Path, hhh_records: list[dict], tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks (gloo) with micro-batch 2 = one process with micro-batch 4 (policy and
    reference sharded); held-out pairs split unevenly over the ranks."""
    from .test_sft import torchrun

    train_file = _write(hhh_records[:21], tmp_path / "pairs.jsonl")
    kw = dict(steps=3, eval_fraction=0.25, eval_every=3)
    one = RecordingCallbacks()
    summary = train(_cfg(tiny_policy, train_file, tmp_path / "one", micro_batch_size=4, **kw), one)
    events = torchrun("dpo", _cfg(tiny_policy, train_file, tmp_path / "two", micro_batch_size=2, **kw), tmp_path)
    steps = {e["step"]: e["metrics"] for e in events if e["event"] == "step"}
    for step, metrics in one.steps:
        for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen"):
            assert steps[step][name] == pytest.approx(metrics[name], abs=1e-4), (step, name)
    end = next(e for e in events if e["event"] == "end")["summary"]
    assert end["eval/rewards/margins"] == pytest.approx(summary["eval/rewards/margins"], abs=1e-4)
    a = load_model(find_checkpoint(tmp_path / "one")).state_dict()
    b = load_model(find_checkpoint(tmp_path / "two")).state_dict()
    # Adam steps of lr 1e-3 on gradients that differ in the last bits (summation order over ranks)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
