"""The core CLI: help for every command, config files and overrides, typed errors, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.core.cli import CliError, apply_overrides, build_pretrain_config, main
from training.core.config import ModelConfig

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {
    "tokenizer": ["--vocab-size", "--corpus", "--input", "--out", "--events"],
    "prepare": ["--tokenizer", "--val-fraction", "--out", "--events"],
    "pretrain": ["--config", "--set", "--events", "--print-config"],
    "generate": ["--model", "--prompt", "--chat", "--temperature", "--top-p", "--events"],
    "export": ["--format", "--out", "--model"],
    "import": ["--source", "--out"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m training.core.cli " + command)
    for option in COMMANDS[command]:
        assert option in out, option


def test_top_level_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
    assert "torchrun" in out


def test_overrides_parse_numbers_booleans_lists_and_text() -> None:
    out = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=1e-3", "optim.betas=[0.9, 0.99]", "compile=true",
                                                   "out_dir=var/runs/a", "model.n_kv_heads=null"])
    assert out == {"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "compile": True, "out_dir": "var/runs/a",
                   "model": {"n_kv_heads": None}}
    with pytest.raises(CliError):
        apply_overrides({}, ["no_equals_sign"])
    with pytest.raises(CliError):
        apply_overrides({"steps": 3}, ["steps.sub=1"])


def test_yaml_config_with_preset_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tiny\n  n_layers: 3\nsteps: 50\noptim:\n  lr: 0.001\n")
    cfg = build_pretrain_config(str(path), ["steps=70", "data.seq_len=128"])
    assert cfg.model == ModelConfig.preset("tiny", n_layers=3)
    assert (cfg.steps, cfg.optim.lr, cfg.data.seq_len) == (70, 1e-3, 128)
    json_path = tmp_path / "run.json"
    json_path.write_text(cfg.to_json())
    assert build_pretrain_config(str(json_path), []) == cfg


def test_mlm_objective_selects_the_encoder(tmp_path: Path) -> None:
    cfg = build_pretrain_config(None, ["objective=mlm", "model.preset=tiny"])
    assert cfg.model.mode == "encoder"


def test_config_errors_exit_2_with_a_json_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.jsonl"
    code = main(["pretrain", "--set", "optim.lr=-1", "--events", str(events)])
    assert code == 2
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert err["type"] == "ConfigError" and err["field"] == "optim.lr" and err["hint"]
    last = json.loads(events.read_text().splitlines()[-1])
    assert last["event"] == "end" and last["summary"]["status"] == "failed"

    assert main(["pretrain", "--set", "model.wdith=3"]) == 2
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert err["field"] == "model.wdith" and "dim" in err["hint"]

    assert main(["pretrain", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["pretrain", "--set", "data.dataset_dir=" + str(tmp_path / "nothing"), "--set", "device=cpu"]) == 2
    assert "prepare" in json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]["hint"]


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "--set", "model.preset=tiny", "--set", "steps=5", "--print-config"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] == 5 and data["model"]["dim"] == ModelConfig.preset("tiny").dim


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "training.core.cli", *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_end_to_end_tokenizer_prepare_pretrain_generate_export_import(austen_sample: list[str],
                                                                      tmp_path: Path) -> None:
    from training.core.checkpoint import load_model
    from training.core.serve import chat, generate
    from training.core.tokenizer import StudioTokenizer

    texts = tmp_path / "austen.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in austen_sample))

    out = json.loads(_cli("tokenizer", "-q", "--input", str(texts), "--vocab-size", "512",
                          "--out", str(tmp_path / "tok")).stdout)
    assert out["vocab_size"] == 512 and out["documents"] == len(austen_sample) and out["chars_per_token"] > 1.5

    out = json.loads(_cli("prepare", "-q", "--input", str(texts), "--tokenizer", str(tmp_path / "tok"),
                          "--out", str(tmp_path / "ds"), "--val-fraction", "0.1").stdout)
    assert out["manifest"]["splits"]["train"]["tokens"] > 50_000

    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {vocab_size: 512, dim: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, max_seq_len: 64}\n"
        f"data: {{dataset_dir: {tmp_path / 'ds'}, seq_len: 64, micro_batch_size: 8, val_batches: 2}}\n"
        "optim: {lr: 0.003, warmup_steps: 3}\n"
        f"tokenizer_dir: {tmp_path / 'tok'}\n"
        "eval_every: 10\n")
    events = tmp_path / "events.jsonl"
    summary = json.loads(_cli("pretrain", "-q", "--config", str(config), "--set", "steps=20",
                              "--set", f"out_dir={tmp_path / 'run'}", "--events", str(events)).stdout)
    assert summary["status"] == "completed" and summary["step"] == 20
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds[0] == "start" and kinds.count("step") == 20 and kinds.count("eval") == 2 and kinds[-1] == "end"
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()

    # greedy generation from the run folder equals generating in-process from the checkpoint
    gen = json.loads(_cli("generate", "--model", str(tmp_path / "run"), "--prompt", "It is a truth",
                          "--max-new-tokens", "12", "--json").stdout)
    tok = StudioTokenizer.load(tmp_path / "tok")
    model = load_model(tmp_path / "run")
    expected = tok.decode(generate(model, [tok.encode("It is a truth")], max_new_tokens=12,
                                   stop_ids=tok.stop_ids, pad_id=tok.pad_id)[0], skip_special_tokens=True)
    assert gen["results"] == [{"prompt": "It is a truth", "text": expected}]
    assert expected.strip()

    reply = json.loads(_cli("generate", "--model", str(tmp_path / "run"), "--chat", "Who is Emma?",
                            "--max-new-tokens", "8", "--json").stdout)["results"][0]["text"]
    assert reply == chat(model, tok, [{"role": "user", "content": "Who is Emma?"}], max_new_tokens=8)

    # consolidated export, HF export, GGUF export; HF import back into a checkpoint
    _cli("export", "--model", str(tmp_path / "run"), "--format", "safetensors", "--out", str(tmp_path / "st"))
    assert (tmp_path / "st" / "model.safetensors").is_file() and (tmp_path / "st" / "tokenizer").is_dir()
    _cli("export", "--model", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    _cli("export", "--model", str(tmp_path / "run"), "--format", "gguf", "--out", str(tmp_path / "m.gguf"))
    assert (tmp_path / "m.gguf").stat().st_size > 100_000
    out = json.loads(_cli("import", "--source", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")).stdout)
    assert out["n_params"] == sum(p.numel() for p in model.parameters())

    tokens = torch.tensor([tok.encode("Mr. Darcy")])
    for source in (tmp_path / "st", tmp_path / "imported"):
        torch.testing.assert_close(load_model(source)(tokens), model(tokens), rtol=1e-5, atol=1e-5)
    # the GGUF file generates the same greedy text
    gen_gguf = json.loads(_cli("generate", "--model", str(tmp_path / "m.gguf"), "--prompt", "It is a truth",
                               "--max-new-tokens", "12", "--json").stdout)
    assert gen_gguf["results"][0]["text"] == expected

    # continued pretraining from the imported weights
    summary = json.loads(_cli("pretrain", "-q", "--config", str(config), "--set", "steps=2",
                              "--set", f"out_dir={tmp_path / 'continued'}",
                              "--set", f"init_from={tmp_path / 'imported'}").stdout)
    assert summary["status"] == "completed"


def test_text_inputs_read_parquet_shards_and_folders(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.core.cli import iter_texts

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["It is a truth", "", "universally acknowledged"]}),
                   data / "part-00000.parquet", row_group_size=2)
    (data / "part-00001.jsonl").write_text(json.dumps({"text": "that a single man"}) + "\n")
    assert list(iter_texts([str(data)])) == ["It is a truth", "universally acknowledged", "that a single man"]
    with pytest.raises(CliError, match="no 'body' column"):
        list(iter_texts([str(data / "part-00000.parquet")], field="body"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CliError, match="not a readable Parquet file"):
        list(iter_texts([str(tmp_path / "broken.parquet")]))
