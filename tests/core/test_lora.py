"""LoRA: adapters from outside, only they train, merging keeps the outputs, runs save plain weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.core.callbacks import RecordingCallbacks
from training.core.checkpoint import load_checkpoint, load_model
from training.core.config import LoRAConfig, ModelConfig, OptimConfig, RewardConfig, SFTConfig
from training.core.heads import RewardModel
from training.core.lora import LoRALinear, apply_lora, lora_scales, merge_lora, merged_state_dict
from training.core.model import Transformer
from training.core.optim import build_optimizer


def tiny() -> Transformer:
    model = Transformer(ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64))
    model.init_weights(seed=0)
    return model


def lm_step(model: Transformer, optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> None:
    loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_only_the_adapters_change() -> None:
    model = tiny()
    tokens = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(tokens).clone()
    n = apply_lora(model, rank=4, alpha=8.0, targets=("wq", "wk", "wv", "wo", "w1", "w2", "w3"))
    assert n == 14
    with torch.no_grad():  # B starts at zero: the adapted model is the base model
        torch.testing.assert_close(model.eval()(tokens), reference, atol=0, rtol=0)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.0))
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
        {id(p) for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)}

    lm_step(model, optimizer, tokens)
    after1 = model.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after1[key])
        # step 1: every B moves; A has no gradient yet (B = 0), nothing else may move
        assert changed == key.endswith("lora_b"), key
    lm_step(model, optimizer, tokens)
    after2 = model.state_dict()
    for key, value in before.items():
        assert (not torch.equal(value, after2[key])) == key.endswith(("lora_a", "lora_b")), key


def test_merge_gives_the_adapted_logits() -> None:
    model = tiny()
    apply_lora(model, rank=8, alpha=16.0, targets=("wq", "wv", "w2"), seed=3)
    with torch.no_grad():  # give the adapters real values
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    model.eval()
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapted = model(tokens)
        plain_sd = merged_state_dict(model.state_dict(), lora_scales(model))
        merged = merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        torch.testing.assert_close(merged(tokens), adapted, atol=1e-5, rtol=0)
    fresh = tiny()  # the merged state dict loads into a plain model, strictly
    fresh.load_state_dict(plain_sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(tokens), adapted, atol=1e-5, rtol=0)


def test_lora_sft_run_resumes_exactly_and_saves_plain_weights(chat_base: dict[str, Path],
                                                              chatterbot_docs: list[dict], tmp_path: Path) -> None:
    from training.core.cli import load_model_and_tokenizer
    from training.core.loops.sft import train

    train_file = tmp_path / "sft.jsonl"
    train_file.write_text("".join(json.dumps({"messages": d["messages"]}) + "\n" for d in chatterbot_docs[:60]))

    def cfg(out: str, **kw: object) -> SFTConfig:
        return SFTConfig(init_from=str(chat_base["run"]), train_file=str(train_file), out_dir=str(tmp_path / out),
                         steps=4, micro_batch_size=4, max_seq_len=96, eval_every=0, device="cpu", dtype="fp32",
                         eval_fraction=0.0, lora=LoRAConfig(rank=4, alpha=8.0, targets=("wq", "wv", "w1")),
                         optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0), **kw)  # type: ignore[arg-type]

    straight = RecordingCallbacks()
    summary = train(cfg("straight"), straight)
    first = RecordingCallbacks(stop_at_step=2)
    train(cfg("resumed"), first)
    second = RecordingCallbacks()
    train(cfg("resumed", resume_from="auto"), second)
    assert first.losses + second.losses == straight.losses
    assert straight.info["n_trainable_params"] < straight.info["n_params"] / 10

    ckpt = Path(summary["checkpoint"])
    assert (ckpt / "model.safetensors").is_file()
    plain, tok = load_model_and_tokenizer(str(tmp_path / "straight"))  # what chat, serving and export use
    assert tok is not None and not any(isinstance(m, LoRALinear) for m in plain.modules())
    adapted = load_model(chat_base["run"])  # rebuild the adapted model from the resumable state
    apply_lora(adapted, 4, 8.0, ("wq", "wv", "w1"))
    load_checkpoint(ckpt, adapted, None, restore_rng=False)
    tokens = torch.tensor([tok.encode_chat([{"role": "user", "content": "What is AI?"}])])
    with torch.no_grad():
        torch.testing.assert_close(plain(tokens), adapted.eval()(tokens), atol=1e-5, rtol=0)
    base = load_model(chat_base["run"])
    torch.testing.assert_close(plain.tok_embeddings.weight, base.tok_embeddings.weight, atol=0, rtol=0)
    assert not torch.equal(plain.layers[0].attention.wq.weight, base.layers[0].attention.wq.weight)


def test_lora_reward_model_trains_adapters_and_head(chat_base: dict[str, Path], chatterbot_docs: list[dict],
                                                    tmp_path: Path) -> None:
    from training.core.data.preference import collate_pairs, tokenize_pair
    from training.core.loops.reward import load_reward_model, train
    from training.core.tokenizer import StudioTokenizer

    rows = [{"prompt": d["messages"][0]["content"], "chosen": d["messages"][1]["content"],
             "rejected": d["messages"][1]["content"].upper()} for d in chatterbot_docs[:40]]
    train_file = tmp_path / "pairs.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RewardConfig(init_from=str(chat_base["run"]), train_file=str(train_file), out_dir=str(tmp_path / "rm"),
                       steps=2, micro_batch_size=4, max_seq_len=96, eval_every=0, device="cpu", dtype="fp32",
                       eval_fraction=0.0, min_pairs=8, lora=LoRAConfig(rank=4, targets=("wq", "wv")),
                       optim=OptimConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0))
    rec = RecordingCallbacks()
    summary = train(cfg, rec)
    rm, _ = load_reward_model(summary["checkpoint"])  # merged weights + head
    base = RewardModel(load_model(chat_base["run"]), seed=0)
    assert not torch.equal(rm.score.weight, base.score.weight)
    torch.testing.assert_close(rm.backbone.layers[0].feed_forward.w1.weight,
                               base.backbone.layers[0].feed_forward.w1.weight, atol=0, rtol=0)
    adapted = RewardModel(load_model(chat_base["run"]), seed=0)
    apply_lora(adapted, 4, 16.0, ("wq", "wv"), trainable=[adapted.score])
    load_checkpoint(summary["checkpoint"], adapted, None, restore_rng=False)
    tok = StudioTokenizer.load(tmp_path / "rm" / "tokenizer")
    batch = collate_pairs([tokenize_pair(rows[0], tok, max_seq_len=96)], tok.pad_id)
    with torch.no_grad():
        torch.testing.assert_close(rm(batch["input_ids"], attention_mask=batch["attention_mask"]),
                                   adapted.eval()(batch["input_ids"], attention_mask=batch["attention_mask"]),
                                   atol=1e-5, rtol=0)


def test_lora_config_is_validated() -> None:
    from training.core.config import ConfigError

    with pytest.raises(ConfigError) as e:
        SFTConfig.from_dict({"init_from": "x", "train_file": "y", "lora": {"rank": 4, "targets": ["output"]}})
    assert e.value.field == "lora.targets" and "wq" in e.value.hint
    with pytest.raises(ConfigError):
        LoRAConfig(rank=-1)
