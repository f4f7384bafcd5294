"""Reward models: the Bradley–Terry loss, preference batches, the loop's invariants and a learnable preference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from training.core.callbacks import RecordingCallbacks
from training.core.config import ConfigError, ModelConfig, OptimConfig, RewardConfig
from training.core.data.preference import collate_pairs, tokenize_pair
from training.core.heads import RewardModel
from training.core.loops.reward import calibration_table, load_reward_model, train
from training.core.losses import bradley_terry_loss
from training.core.model import Transformer
from training.core.tokenizer import StudioTokenizer


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def shouting_pairs(docs: list[dict]) -> list[dict]:
    """Real chatterbot answers; the chosen one is written normally, the rejected one IN CAPITALS."""
    out = []
    for d in docs:
        question, answer = d["messages"][0]["content"], d["messages"][1]["content"]
        if answer.upper() != answer:
            out.append({"prompt": question + "\n", "chosen": answer, "rejected": answer.upper()})
    return out


def reward_config(chat_base: dict[str, Path], train_file: Path, out_dir: Path, **overrides: object) -> RewardConfig:
    base = dict(init_from=str(chat_base["run"]), train_file=str(train_file), out_dir=str(out_dir), steps=3,
                micro_batch_size=4, max_seq_len=96, eval_every=0, ckpt_every=0, device="cpu", dtype="fp32",
                eval_fraction=0.0, min_pairs=8, optim=OptimConfig(lr=2e-3, warmup_steps=1, weight_decay=0.0))
    base.update(overrides)
    return RewardConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pairs_file(chatterbot_docs: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    return write_jsonl(path, shouting_pairs(chatterbot_docs[:300]))


# ---- the loss -------------------------------------------------------------------------------

def _neg_log_sigmoid(x: float) -> float:
    return math.log(1.0 + math.exp(-x))


def test_bradley_terry_equals_hand_computed_values() -> None:
    chosen, rejected = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, 1.5, -1.0])
    margin = torch.tensor([0.5, 0.0, 1.0])
    plain = (_neg_log_sigmoid(1.0) + _neg_log_sigmoid(-1.0) + _neg_log_sigmoid(0.0)) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(plain, abs=1e-6)
    with_margin = (_neg_log_sigmoid(0.5) + _neg_log_sigmoid(-1.0) + _neg_log_sigmoid(-1.0)) / 3
    assert bradley_terry_loss(chosen, rejected, margin).item() == pytest.approx(with_margin, abs=1e-6)
    centering = 0.01 * (3.0 ** 2 + 2.0 ** 2 + (-2.0) ** 2) / 3  # 0.01 * mean((r_c + r_r)^2)
    got = bradley_terry_loss(chosen, rejected, margin, center_rewards_coefficient=0.01).item()
    assert got == pytest.approx(with_margin + centering, abs=1e-6)
    # gradient: d/dr_c of -log sigmoid(d) = -sigmoid(-d), averaged
    c = chosen.clone().requires_grad_(True)
    bradley_terry_loss(c, rejected).backward()
    want = [-1 / (1 + math.exp(1.0)) / 3, -1 / (1 + math.exp(-1.0)) / 3, -0.5 / 3]
    assert c.grad.tolist() == pytest.approx(want, abs=1e-6)


def test_calibration_table_counts_both_orders() -> None:
    # P(chosen) 0.875 (came true) also means P(rejected) = 0.125 (did not): 8 predictions from 4 pairs
    table = calibration_table(torch.tensor([0.875, 0.75, 0.625, 0.25]), bins=10)
    assert sum(r["count"] for r in table) == 8
    rows = {r["bin_low"]: (r["count"], r["predicted"], r["observed"]) for r in table}
    assert rows == {0.1: (1, 0.125, 0.0), 0.2: (2, 0.25, 0.5), 0.3: (1, 0.375, 0.0), 0.6: (1, 0.625, 1.0),
                    0.7: (2, 0.75, 0.5), 0.8: (1, 0.875, 1.0)}


# ---- data and model -------------------------------------------------------------------------

def test_preference_batches_in_every_format(chat_base: dict[str, Path]) -> None:
    tok = StudioTokenizer.load(chat_base["tokenizer"])
    std = tokenize_pair({"prompt": "What is AI?\n", "chosen": "Machines that think.", "rejected": "No.", "margin": 2.0},
                        tok, max_seq_len=64)
    assert tok.decode(std.prompt) == "<|bos|>What is AI?\n" and tok.decode(std.chosen) == "Machines that think.<|eos|>"
    assert std.margin == 2.0
    conv = tokenize_pair({"prompt": [{"role": "user", "content": "What is AI?"}],
                          "chosen": [{"role": "assistant", "content": "Machines that think."}],
                          "rejected": [{"role": "assistant", "content": "No."}]}, tok, max_seq_len=64)
    assert tok.decode(conv.prompt) == "<|bos|><|user|>\nWhat is AI?<|end|>\n<|assistant|>\n"
    assert tok.decode(conv.rejected) == "No.<|end|>\n"
    implicit = tokenize_pair({"chosen": "Yes indeed.", "rejected": "No."}, tok, max_seq_len=64, use_margin=False)
    assert implicit.prompt == (tok.bos_id,) and implicit.margin == 0.0
    batch = collate_pairs([std, conv], tok.pad_id)
    assert batch["input_ids"].shape[0] == 4
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths == [len(std.prompt + std.chosen), len(conv.prompt + conv.chosen),
                       len(std.prompt + std.rejected), len(conv.prompt + conv.rejected)]
    assert batch["completion_mask"][2].sum().item() == len(std.rejected)
    assert batch["margin"].tolist() == [2.0, 0.0]
    cut = tokenize_pair({"prompt": "word " * 200, "chosen": "Machines that think.", "rejected": "No."}, tok,
                        max_seq_len=32)
    assert len(cut.prompt) + len(cut.chosen) <= 32 and cut.chosen[-1] == tok.eos_id  # the answer's end is kept


def test_reward_reads_the_last_real_token_whatever_the_padding() -> None:
    torch.manual_seed(0)
    rm = RewardModel(Transformer(ModelConfig.preset("tiny")), seed=1).eval()
    short, long = [5, 6, 7], [8, 9, 10, 11, 12]
    alone = torch.stack([rm(torch.tensor([short])), rm(torch.tensor([long]))]).squeeze(1)
    ids = torch.tensor([short + [0, 0], long])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(rm(ids, attention_mask=mask), alone, atol=1e-5, rtol=0)  # right padding
    left_ids, left_mask = torch.tensor([[0, 0] + short, long]), torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(rm(left_ids, attention_mask=left_mask), alone, atol=1e-5, rtol=0)  # left padding
    assert rm.values(ids, attention_mask=mask).shape == (2, 5)


# ---- the loop -------------------------------------------------------------------------------

def test_every_parameter_changes_in_one_step(chat_base: dict[str, Path], pairs_file: Path, tmp_path: Path) -> None:
    summary = train(reward_config(chat_base, pairs_file, tmp_path / "rm", steps=1))
    rm, saved = load_reward_model(summary["checkpoint"])
    assert saved["kind"] == "reward" and saved["head"]["kind"] == "scalar"
    from training.core.loops.policy import base_fingerprint  # what PPO checks a reward model's base against

    assert saved["base_fingerprint"] == base_fingerprint(str(chat_base["run"]), rm.cfg)
    fresh = RewardModel(load_start_model(chat_base), seed=0)
    trained = dict(rm.named_parameters())
    trainable = [(name, p) for name, p in fresh.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(fresh.parameters())) - 1  # all but the unused vocabulary head
    for name, p in trainable:
        assert not torch.equal(p, trained[name]), f"{name} did not change"
    torch.testing.assert_close(trained["backbone.output.weight"], fresh.backbone.output.weight, rtol=0, atol=0)


def load_start_model(chat_base: dict[str, Path]) -> Transformer:
    from training.core.checkpoint import load_model

    return load_model(chat_base["run"])  # type: ignore[return-value]


def test_resume_is_exact(chat_base: dict[str, Path], pairs_file: Path, tmp_path: Path) -> None:
    straight = RecordingCallbacks()
    train(reward_config(chat_base, pairs_file, tmp_path / "straight", steps=4, grad_accum_steps=2,
                        center_rewards_coefficient=0.01), straight)
    cfg = reward_config(chat_base, pairs_file, tmp_path / "resumed", steps=4, grad_accum_steps=2,
                        center_rewards_coefficient=0.01)
    first = RecordingCallbacks(stop_at_step=2)
    assert train(cfg, first)["status"] == "cancelled"
    second = RecordingCallbacks()
    assert train(cfg.replace(resume_from="auto"), second)["start_step"] == 2
    assert first.losses + second.losses == straight.losses  # bit-identical on CPU fp32
    names = ("loss", "accuracy", "margin", "mean_reward", "min_reward", "max_reward")
    assert all(set(names) <= set(m) for _, m in straight.steps)


def test_learns_a_preference_on_real_text(chat_base: dict[str, Path], chatterbot_docs: list[dict],
                                          tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", shouting_pairs(chatterbot_docs[:400]))
    held_out = write_jsonl(tmp_path / "eval.jsonl", shouting_pairs(chatterbot_docs[1500:1600]))
    rec = RecordingCallbacks()
    summary = train(reward_config(chat_base, train_file, tmp_path / "rm", steps=12, micro_batch_size=8,
                                  eval_file=str(held_out), eval_every=12), rec)
    assert summary["eval/accuracy"] >= 0.9, summary
    assert summary["eval/pairs"] == len(shouting_pairs(chatterbot_docs[1500:1600]))
    assert rec.evals[-1][1]["eval/accuracy"] == summary["eval/accuracy"]
    table = summary["calibration"]
    assert sum(r["count"] for r in table) == 2 * summary["eval/pairs"]
    assert json.loads((tmp_path / "rm" / "calibration.json").read_text()) == table
    # the saved reward model scores like the trained one
    rm, _ = load_reward_model(tmp_path / "rm")
    tok = StudioTokenizer.load(tmp_path / "rm" / "tokenizer")
    pair = tokenize_pair({"prompt": "What is AI?\n", "chosen": "The study of machines that think.",
                          "rejected": "THE STUDY OF MACHINES THAT THINK."}, tok, max_seq_len=96)
    batch = collate_pairs([pair], tok.pad_id)
    with torch.no_grad():
        c, r = rm(batch["input_ids"], attention_mask=batch["attention_mask"])
    assert c > r


def test_refusals_before_any_compute(chat_base: dict[str, Path], pairs_file: Path, tmp_path: Path,
                                     austen_shards: dict) -> None:
    few = write_jsonl(tmp_path / "few.jsonl", [json.loads(line) for line in pairs_file.read_text().splitlines()[:5]])
    with pytest.raises(ConfigError) as e:
        train(reward_config(chat_base, few, tmp_path / "a"))
    assert e.value.field == "train_file" and "fewer than 8" in e.value.message and e.value.hint
    with pytest.raises(ConfigError) as e:
        train(reward_config(chat_base, pairs_file, tmp_path / "b", tokenizer_dir=str(austen_shards["tokenizer"])))
    assert e.value.field == "tokenizer_dir"
    summary = train(reward_config(chat_base, pairs_file, tmp_path / "rm", steps=1))
    with pytest.raises(ConfigError) as e:  # a reward model is not a starting point for a policy
        train(reward_config(chat_base, pairs_file, tmp_path / "c", init_from=summary["checkpoint"]))
    assert e.value.field == "init_from" and "reward model" in e.value.message
    assert not any((tmp_path / x).exists() for x in "abc")


def test_cli_reward_end_to_end(chat_base: dict[str, Path], pairs_file: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from training.core.cli import main

    config = tmp_path / "rm.json"
    config.write_text(json.dumps({"init_from": str(chat_base["run"]), "train_file": str(pairs_file),
                                  "out_dir": str(tmp_path / "rm"), "steps": 2, "micro_batch_size": 4,
                                  "max_seq_len": 96, "device": "cpu", "dtype": "fp32", "eval_fraction": 0.1,
                                  "center_rewards_coefficient": 0.01}))
    events = tmp_path / "events.jsonl"
    assert main(["reward", "--config", str(config), "--events", str(events), "--quiet"]) == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "end"
    assert "eval/accuracy" in next(x for x in lines if x["event"] == "eval")["metrics"]
    assert lines[-1]["summary"]["calibration"]
    capsys.readouterr()
    assert main(["reward", "--config", str(config), "--set", "min_pairs=100000"]) == 2
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert err["type"] == "ConfigError" and err["field"] == "train_file"


@pytest.mark.slow
def test_two_rank_fsdp_matches_one_process(chat_base: dict[str, Path], pairs_file: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks (gloo) with micro-batch 2 = one process with micro-batch 4 (reward model sharded)."""
    from .test_sft import torchrun

    one = RecordingCallbacks()
    summary = train(reward_config(chat_base, pairs_file, tmp_path / "one", steps=3, eval_fraction=0.1, eval_every=3,
                                  center_rewards_coefficient=0.01), one)
    events = torchrun("reward", reward_config(chat_base, pairs_file, tmp_path / "two", steps=3, micro_batch_size=2,
                                              eval_fraction=0.1, eval_every=3, center_rewards_coefficient=0.01),
                      tmp_path)
    steps = {e["step"]: e["metrics"] for e in events if e["event"] == "step"}
    for step, metrics in one.steps:
        for name in ("loss", "accuracy", "margin", "mean_reward", "min_reward", "max_reward"):
            assert steps[step][name] == pytest.approx(metrics[name], abs=1e-5), (step, name)
    end = next(e for e in events if e["event"] == "end")["summary"]
    assert end["eval/accuracy"] == pytest.approx(summary["eval/accuracy"], abs=1e-6)
    rm1, _ = load_reward_model(tmp_path / "one")
    rm2, _ = load_reward_model(tmp_path / "two")
    a, b = rm1.state_dict(), rm2.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
