"""PPO: GAE and KL estimators against hand computation, rollouts, the loop with a rule-based reward,
refusals, resume, health flags and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from training.core.callbacks import RecordingCallbacks
from training.core.checkpoint import find_checkpoint, load_model
from training.core.config import ConfigError, ModelConfig, OptimConfig, PPOConfig
from training.core.losses import gae_advantages, kl_estimate, ppo_policy_loss, ppo_value_loss
from training.core.loops.ppo import HEALTH_FLAGS, METRICS, PolicyWithValue, train
from training.core.model import Transformer
from training.core.rollout import pack, response_view, sample_responses, score_responses

from .runs import cancel_after_first_step, whole_and_split_runs

# ---- pure functions -------------------------------------------------------------------------


def test_gae_equals_hand_computation() -> None:
    rewards = torch.tensor([[0.0, 0.5, 1.0], [2.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae_advantages(rewards, values, mask, gamma=gamma, lam=lam)
    # row 0, backwards: d2 = 1 - 0.3 = 0.7; d1 = 0.5 + 0.9*0.3 - 0.2 = 0.57; d0 = 0 + 0.9*0.2 - 0.1 = 0.08
    a2 = 0.7
    a1 = 0.57 + gamma * lam * a2
    a0 = 0.08 + gamma * lam * a1
    # row 1 ends after one token: d0 = 2 - 0.4 (nothing follows)
    assert adv[0].tolist() == pytest.approx([a0, a1, a2], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([1.6, 0.0, 0.0], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([a0 + 0.1, a1 + 0.2, a2 + 0.3], abs=1e-6)
    assert ret[1].tolist() == pytest.approx([2.0, 0.0, 0.0], abs=1e-6)


def test_kl_estimators_equal_hand_computation() -> None:
    logp = torch.tensor([-1.0, -0.5, -3.0])
    ref = torch.tensor([-2.0, -0.5, -1.0])
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([1.0, 0.0, -2.0])
    # k3 = (ref/p - 1) - log(ref/p) with log(ref/p) = -1, 0, 2
    expected = [math.exp(-1) - 1 + 1, 0.0, math.exp(2) - 1 - 2]
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx(expected, abs=1e-6)
    assert bool((kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all())
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k2")


def test_kl_estimators_are_unbiased_on_samples() -> None:
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, lq = p.log()[samples], q.log()[samples]
    assert kl_estimate(lp, lq, "k1").mean().item() == pytest.approx(exact, abs=5e-3)
    assert kl_estimate(lp, lq, "k3").mean().item() == pytest.approx(exact, abs=5e-3)


def test_clipped_policy_and_value_losses_equal_hand_computation() -> None:
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[math.log(1.5), math.log(0.5)]])  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = ppo_policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio"].item() == pytest.approx(1.0)
    assert stats["approxkl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)
    v, v_old, ret = torch.tensor([[1.0, 0.1]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    vloss, vstats = ppo_value_loss(v, v_old, ret, mask, cliprange_value=0.5)
    # token 0: max((1-0)^2, (0.5-0)^2) = 1; token 1: max((0.1-1)^2, (0.1-1)^2) = 0.81
    assert vloss.item() == pytest.approx(0.5 * (1.0 + 0.81) / 2)
    assert vstats["clipfrac"].item() == 0.0


# ---- rollouts -------------------------------------------------------------------------------

def test_rollouts_sample_from_the_current_weights_after_an_optimizer_step() -> None:
    from training.core.optim import build_optimizer

    model = Transformer(ModelConfig.preset("tiny", vocab_size=64, max_seq_len=32))
    prompts = [[1, 2, 3], [4, 5]]
    sample_responses(model, prompts, max_new_tokens=4, temperature=0.0)  # warm any generator cache
    opt = build_optimizer(model, OptimConfig(lr=0.05, warmup_steps=0))  # fused AdamW on CPU: in-place update
    model(torch.tensor([[1, 2, 3, 4]]), targets=torch.tensor([[9, 9, 9, 9]])).backward()
    opt.step()
    out = sample_responses(model, prompts, max_new_tokens=4, temperature=0.0)
    for p, o in zip(prompts, out):
        with torch.no_grad():
            greedy = model(torch.tensor([p + o]))[0, len(p) - 1:-1].argmax(-1).tolist()
        assert o == greedy


def test_responses_keep_their_stop_token_and_pack_aligns_targets() -> None:
    model = Transformer(ModelConfig.preset("tiny", vocab_size=64, max_seq_len=32))
    free = sample_responses(model, [[1, 2, 3]], max_new_tokens=6, temperature=0.0)[0]
    stop = free[2]
    cut = sample_responses(model, [[1, 2, 3]], max_new_tokens=6, temperature=0.0, stop_ids=[stop])[0]
    assert cut == free[:free.index(stop) + 1] and cut[-1] == stop
    batch = pack([[1, 2, 3], [4]], [cut, [7, 8]], pad_id=0)
    R = batch["mask"].shape[1]
    targets = response_view(batch["input_ids"][:, 1:], batch["starts"], R)
    assert targets[0][batch["mask"][0]].tolist() == cut
    assert targets[1][batch["mask"][1]].tolist() == [7, 8]


def test_missing_eos_penalty_and_rule_based_scores() -> None:
    from training.core.rewards import resolve_reward_fn
    from training.core.tokenizer import train_tokenizer

    tok = train_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
    with_eos = tok.encode(" cat cat") + [tok.eos_id]
    without = tok.encode(" cat dog")
    scores, has_eos = score_responses(["p", "p"], [with_eos, without], tok, stop_ids=tok.stop_ids,
                                      missing_eos_penalty=1.0, reward_fn=resolve_reward_fn("keyword:cat"))
    assert has_eos.tolist() == [True, False]
    assert scores.tolist() == pytest.approx([1.0, 0.5 - 1.0])


def test_policy_with_value_is_a_transformer_for_generation_and_loading(tmp_path: Path) -> None:
    base = Transformer(ModelConfig.preset("tiny", vocab_size=64, max_seq_len=32))
    policy = PolicyWithValue.from_policy(base)
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits, values = policy(tokens, with_values=True)
        torch.testing.assert_close(logits, base(tokens))
    assert values.shape == (1, 3) and bool((values == 0).all())  # the value head starts at zero


# ---- the loop -------------------------------------------------------------------------------

def _prompts(records: list[dict], path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in records[:n]), encoding="utf-8")
    return path


def _cfg(tiny_policy: Path, train_file: Path, out: Path, **kw: object) -> PPOConfig:
    base = dict(init_from=str(tiny_policy), train_file=str(train_file), out_dir=str(out), steps=3,
                micro_batch_size=4, grad_accum_steps=1, num_mini_batches=2, ppo_epochs=2, max_seq_len=192,
                max_prompt_len=48, max_new_tokens=6, temperature=1.0, reward_fn="vowels", kl_coef=0.02,
                eval_every=0, ckpt_every=0, device="cpu", dtype="fp32", min_prompts=8,
                optim=OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=0.0, min_lr_ratio=1.0))
    base.update(kw)
    return PPOConfig(**base)  # type: ignore[arg-type]


def test_ppo_with_a_rule_based_reward_raises_the_mean_reward_with_bounded_kl(
        tiny_policy: Path, hhh_records: list[dict], tmp_path: Path) -> None:
    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 64)
    # length:20 rewards every word a response starts (up to 20): with 8 new tokens the score is the share of
    # tokens that begin a word, a dense signal even a random tiny policy can learn from
    cfg = _cfg(tiny_policy, train_file, tmp_path / "run", steps=24, micro_batch_size=16, max_new_tokens=8,
               reward_fn="length:20", optim=OptimConfig(lr=2e-3, warmup_steps=0, weight_decay=0.0, min_lr_ratio=1.0))
    rec = RecordingCallbacks()
    summary = train(cfg, rec)
    assert summary["status"] == "completed"
    steps = [m for _, m in rec.steps]
    for name in (*METRICS, *HEALTH_FLAGS, "time/scoring"):
        assert all(math.isfinite(m[name]) for m in steps), name
    first = sum(m["objective/scores"] for m in steps[:4]) / 4
    last = sum(m["objective/scores"] for m in steps[-4:]) / 4
    assert last > first + 0.03, (first, last)
    assert steps[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the first rollout
    assert max(m["objective/kl"] for m in steps) < 8 * 0.5  # under half a nat per generated token
    assert all(m[flag] == 0.0 for m in steps for flag in ("health/kl_runaway", "health/entropy_collapse"))


def test_every_trainable_parameter_changes_in_a_step(tiny_policy: Path, hhh_records: list[dict],
                                                   tmp_path: Path) -> None:
    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 16)
    train(_cfg(tiny_policy, train_file, tmp_path / "run", steps=1), RecordingCallbacks())
    ckpt = find_checkpoint(tmp_path / "run")
    after = PolicyWithValue(load_model(ckpt).cfg)
    from training.core.checkpoint import load_checkpoint

    load_checkpoint(ckpt, after, None, restore_rng=False)
    before = dict(PolicyWithValue.from_policy(load_model(tiny_policy)).named_parameters())
    unchanged = [n for n, p in after.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []  # the value head included


def test_resume_equals_uninterrupted(tiny_policy: Path, hhh_records: list[dict], tmp_path: Path) -> None:
    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 16)
    whole, split = whole_and_split_runs(train, lambda out, **kw: _cfg(tiny_policy, train_file, out, steps=4, **kw),
                                        tmp_path)
    keys = ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg")
    got = [m[k] for m in split for k in keys]
    want = [m[k] for m in whole for k in keys]
    assert got == pytest.approx(want, abs=1e-6)


def test_health_flags_follow_the_thresholds(tiny_policy: Path, hhh_records: list[dict], tmp_path: Path) -> None:
    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 16)
    rec = RecordingCallbacks()
    # entropy of a nearly uniform 512-token policy is about ln 512 = 6.2 nats: above 100 means collapse here
    train(_cfg(tiny_policy, train_file, tmp_path / "run", steps=2, entropy_warn=100.0, kl_warn=1e-9,
               ratio_warn=1e-9), rec)
    last = rec.steps[-1][1]
    assert last["health/entropy_collapse"] == 1.0
    assert last["health/ratio_drift"] == 1.0
    assert last["health/kl_runaway"] == float(last["objective/kl"] > 1e-9)


def test_too_few_prompts_are_refused_before_any_compute(tiny_policy: Path, hhh_records: list[dict],
                                                        tmp_path: Path) -> None:
    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 4)
    rec = RecordingCallbacks()
    with pytest.raises(ConfigError) as e:
        train(_cfg(tiny_policy, train_file, tmp_path / "run"), rec)
    assert e.value.field == "train_file" and "4 usable prompts" in e.value.message
    assert rec.steps == [] and not (tmp_path / "run").exists()


def _reward_checkpoint(tiny_policy: Path, hhh_records: list[dict], tmp_path: Path, **cfg: object) -> Path:
    """A one-step reward model trained with the reward loop (its real checkpoint format)."""
    from training.core.config import RewardConfig
    from training.core.loops.reward import train as train_reward

    tmp_path.mkdir(parents=True, exist_ok=True)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in hhh_records[:8]), encoding="utf-8")
    settings = dict(init_from=str(tiny_policy), train_file=str(pairs), out_dir=str(tmp_path / "rm"), steps=1,
                    micro_batch_size=4, max_seq_len=192, eval_fraction=0.0, eval_every=0, ckpt_every=0,
                    device="cpu", dtype="fp32", min_pairs=4)
    settings.update(cfg)
    fields = RewardConfig.__dataclass_fields__
    summary = train_reward(RewardConfig(**{k: v for k, v in settings.items() if k in fields}), RecordingCallbacks())
    assert summary["status"] == "completed"
    return tmp_path / "rm"


def test_reward_model_from_the_reward_loop_scores_rollouts(tiny_policy: Path, hhh_records: list[dict],
                                                           tmp_path: Path) -> None:
    rm = _reward_checkpoint(tiny_policy, hhh_records, tmp_path)
    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 16)
    rec = RecordingCallbacks()
    summary = train(_cfg(tiny_policy, train_file, tmp_path / "run", steps=2, reward_fn="", reward_model=str(rm)), rec)
    assert summary["status"] == "completed"
    assert all(math.isfinite(m["objective/scores"]) for _, m in rec.steps)


def test_reward_model_with_another_tokenizer_or_base_is_refused(tiny_policy: Path, hhh_records: list[dict],
                                                                tmp_path: Path) -> None:
    from training.core.checkpoint import export_model
    from training.core.tokenizer import train_tokenizer

    other = tmp_path / "other_base"
    tok = train_tokenizer([r["chosen"] for r in hhh_records], 400)  # another vocabulary
    export_model(Transformer(ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256)), other)
    tok.save(other)
    rm = _reward_checkpoint(other, hhh_records, tmp_path)
    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 16)
    with pytest.raises(ConfigError) as e:
        train(_cfg(tiny_policy, train_file, tmp_path / "run", reward_fn="", reward_model=str(rm)),
              RecordingCallbacks())
    assert e.value.field == "reward_model" and "tokenizer" in e.value.message
    assert not (tmp_path / "run").exists()

    # same tokenizer and architecture, but trained from another base model
    from training.core.tokenizer import StudioTokenizer

    same_shape = tmp_path / "same_shape"
    policy_tok = StudioTokenizer.load(tiny_policy)
    twin = Transformer(ModelConfig.preset("tiny", vocab_size=policy_tok.vocab_size, max_seq_len=256))
    twin.init_weights(seed=1)
    export_model(twin, same_shape)
    policy_tok.save(same_shape)
    rm2 = _reward_checkpoint(same_shape, hhh_records, tmp_path / "second")
    with pytest.raises(ConfigError) as e:
        train(_cfg(tiny_policy, train_file, tmp_path / "run", reward_fn="", reward_model=str(rm2)),
              RecordingCallbacks())
    assert e.value.field == "reward_model" and "another base" in e.value.message


def test_cli_runs_ppo_and_the_policy_chats(tiny_policy: Path, hhh_records: list[dict], tmp_path: Path) -> None:
    from training.core.cli import load_model_and_tokenizer, main
    from training.core.serve import generate

    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 16)
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(_cfg(tiny_policy, train_file, tmp_path / "run").to_json(), encoding="utf-8")
    events = tmp_path / "events.jsonl"
    assert main(["ppo", "--config", str(cfg_file), "--set", "steps=2", "--events", str(events), "--quiet"]) == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[0]["event"] == "start" and [e["event"] for e in lines].count("step") == 2
    assert "health/kl_runaway" in lines[1]["metrics"]
    model, tok = load_model_and_tokenizer(str(tmp_path / "run"))
    assert len(generate(model, [tok.encode("Hello")], max_new_tokens=3)[0]) == 3
    bad = main(["ppo", "--config", str(cfg_file), "--set", "reward_fn=nope", "--quiet"])
    assert bad == 2


@pytest.mark.slow
def test_two_rank_fsdp_run_completes(tiny_policy: Path, hhh_records: list[dict], tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks: policy, reference and reward model sharded; rollouts from a whole-weight copy."""
    from .test_sft import torchrun

    rm = _reward_checkpoint(tiny_policy, hhh_records, tmp_path / "rm_run")
    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 16)
    events = torchrun("ppo", _cfg(tiny_policy, train_file, tmp_path / "two", steps=2, micro_batch_size=2,
                                  reward_fn="", reward_model=str(rm)), tmp_path)
    steps = [e["metrics"] for e in events if e["event"] == "step"]
    assert len(steps) == 2 and all(math.isfinite(m["objective/scores"]) for m in steps)
    assert steps[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    model = load_model(find_checkpoint(tmp_path / "two"))  # a 2-rank checkpoint loads in one process
    assert isinstance(model, Transformer)


def test_sigterm_checkpoints_and_exits_cancelled(tiny_policy: Path, hhh_records: list[dict], tmp_path: Path) -> None:
    """A SIGTERM (the studio's cancel) ends the step, writes a checkpoint, exit code 3; resume continues."""
    train_file = _prompts(hhh_records, tmp_path / "prompts.jsonl", 16)
    cfg = _cfg(tiny_policy, train_file, tmp_path / "run", steps=100_000)
    lines = cancel_after_first_step("ppo", cfg, tmp_path)
    end = lines[-1]["summary"]
    assert end["status"] == "cancelled" and 0 < end["step"] < 100_000
    assert any(e["event"] == "checkpoint" and e["step"] == end["step"] for e in lines)
    summary = train(cfg.replace(steps=end["step"] + 1, resume_from="auto"), RecordingCallbacks())
    assert summary["start_step"] == end["step"] and summary["status"] == "completed"
