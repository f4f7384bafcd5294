"""Command line of the ML core: ``python -m training.core.cli <command> …``.

Commands::

    tokenizer  train a byte-level BPE tokenizer from text files, JSONL or a built-in corpus
    prepare    tokenize texts into train/val token shards
    pretrain   run pretraining from a config file and --set overrides (torchrun-able);
               with init_from, continued pretraining (domain-specific tuning) of a model
    sft        supervised fine-tuning on {messages} / {prompt, completion} records (torchrun-able)
    reward     train a reward model on preference pairs (torchrun-able)
    dpo        direct preference optimization on preference pairs (torchrun-able)
    ppo        RLHF with PPO: rollouts, reward, KL penalty, GAE (torchrun-able)
    generate   generate text or chat with a checkpoint, an export, a HF folder or a GGUF file
    export     write a model as a Hugging Face folder, a GGUF file or a safetensors export
    import     bring a HF folder or a GGUF file into the studio's checkpoint format

Every command accepts ``--events PATH`` (``-`` for stdout): JSON-lines events
(``{"event": "step", "step": 10, "metrics": {...}}``) that the studio tails to stream live
metrics. Progress bars go to stderr. Errors print one JSON line ``{"error": …}`` on stderr.

Exit codes: 0 done, 2 invalid config or input, 3 cancelled (SIGTERM; a checkpoint was
written), 4 diverged (non-finite loss), 1 anything else.

Under several processes: ``torchrun --nproc_per_node=N -m training.core.cli pretrain …``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

__all__ = ["main", "build_parser", "load_config_file", "apply_overrides", "build_pretrain_config", "iter_texts"]

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_CANCELLED, EXIT_DIVERGED = 0, 1, 2, 3, 4


class CliError(Exception):
    """A user mistake on the command line; printed with its hint, exit code 2."""

    def __init__(self, message: str, hint: str = "", field: str = "") -> None:
        self.message, self.hint, self.field = message, hint, field
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# Config files and --set overrides
# --------------------------------------------------------------------------------------------

def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"config file {p} does not exist", "check the path given to --config")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - JSON and YAML raise different types
        raise CliError(f"cannot parse {p}: {e}", "the config file must be JSON or YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CliError(f"{p} must hold a mapping of settings, got {type(data).__name__}")
    return data


def _parse_value(raw: str) -> Any:
    """``--set`` values are JSON, else YAML, else text.

    E.g. ``3``, ``1e-3``, ``true``, ``[0.9, 0.95]``, ``null``, ``tiny``.
    """
    import yaml

    try:
        return json.loads(raw)  # numbers such as 1e-3 (YAML 1.1 would read a string), lists, true/null
    except json.JSONDecodeError:
        pass
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (returns a new dict).

    >>> apply_overrides({"optim": {"lr": 1e-3}}, ["optim.lr=3e-4", "steps=10"])
    {'optim': {'lr': 0.0003}, 'steps': 10}
    """
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise CliError(f"--set {item!r} is not key=value", "e.g. --set optim.lr=3e-4", field=item)
        key, raw = item.split("=", 1)
        parts = [k for k in key.strip().split(".") if k]
        if not parts:
            raise CliError(f"--set {item!r} has an empty key", "e.g. --set steps=100", field=item)
        node = out
        for k in parts[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise CliError(f"--set {item!r}: {k} is a value, not a group of settings", field=key)
            node = nxt
        node[parts[-1]] = _parse_value(raw)
    return out


def build_pretrain_config(config_path: str | None, overrides: Sequence[str]) -> Any:
    """A :class:`PretrainConfig` from a file and overrides; ``model.preset`` expands a model preset.

    With ``init_from`` (continued pretraining) and no ``model`` settings, the model takes the
    shape saved with ``init_from`` (a checkpoint, a run folder or an export).
    """
    from training.core.config import ModelConfig, PretrainConfig

    data = load_config_file(config_path) if config_path else {}
    data = apply_overrides(data, overrides)
    model = data.get("model")
    if data.get("objective") == "mlm" and (model is None or (isinstance(model, dict) and "mode" not in model)):
        model = {**(model or {}), "mode": "encoder"}  # masked-LM means an encoder unless said otherwise
        data["model"] = model
    if isinstance(model, dict) and "preset" in model:
        model = dict(model)
        name = model.pop("preset")
        data["model"] = {**ModelConfig.preset(name).to_dict(), **model}
    if data.get("init_from") and model is None:  # continued pretraining: the model's own shape
        from training.core.checkpoint import read_checkpoint_config

        saved = read_checkpoint_config(data["init_from"]).get("model")
        if isinstance(saved, dict):
            data["model"] = saved
    return PretrainConfig.from_dict(data)


# --------------------------------------------------------------------------------------------
# Text inputs
# --------------------------------------------------------------------------------------------

TEXT_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".parquet")


def _texts_from_file(path: Path, field: str) -> Iterator[str]:
    if path.suffix.lower() == ".parquet":  # e.g. a data studio version's Parquet shards
        import pyarrow.parquet as pq  # lazily: only Parquet inputs need it

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise CliError(f"{path} is not a readable Parquet file ({e})", "re-export the file") from None
        if field not in pf.schema_arrow.names:
            raise CliError(f"{path} has no {field!r} column (columns: {', '.join(pf.schema_arrow.names)})",
                           "pass --field with the text column's name")
        for batch in pf.iter_batches(batch_size=1024, columns=[field]):  # bounded memory
            for text in batch.column(0).to_pylist():
                if isinstance(text, str) and text:
                    yield text
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CliError(f"{path}:{n} is not valid JSON ({e})", "one JSON object per line") from None
                text = obj.get(field) if isinstance(obj, dict) else None
                if isinstance(text, str) and text:
                    yield text
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text


def iter_texts(inputs: Sequence[str], corpus: str | None = None, *, field: str = "text",
               cache_dir: str | None = None, limit: int | None = None) -> Iterator[str]:
    """Documents from files (``.txt`` = one document, ``.jsonl`` = one per line with ``field``,
    ``.parquet`` = one per row of the ``field`` column), folders (their ``*.txt`` / ``*.jsonl`` /
    ``*.parquet``, sorted) and/or a built-in corpus name."""
    def generate() -> Iterator[str]:
        for item in inputs:
            p = Path(item)
            if p.is_dir():
                files = sorted(f for f in p.rglob("*") if f.suffix.lower() in TEXT_SUFFIXES)
                if not files:
                    raise CliError(f"{p} holds no .txt, .jsonl or .parquet files")
                for f in files:
                    yield from _texts_from_file(f, field)
            elif p.is_file():
                yield from _texts_from_file(p, field)
            else:
                raise CliError(f"input {p} does not exist", "pass text files, JSONL files or folders")
        if corpus:
            from training.core import corpora

            if corpus not in corpora.CORPORA:
                raise CliError(f"unknown corpus {corpus!r}", f"built-in corpora: {', '.join(sorted(corpora.CORPORA))}")
            for doc in corpora.iter_documents(corpus, cache_dir):
                yield doc["text"]

    if not inputs and not corpus:
        raise CliError("no input texts", "pass files/folders as --input, or --corpus NAME")
    n = 0
    for text in generate():
        if limit is not None and n >= limit:
            return
        n += 1
        yield text


def _events(args: argparse.Namespace) -> Any:
    from training.core.callbacks import Callbacks, JsonlCallbacks

    return JsonlCallbacks(args.events) if getattr(args, "events", None) else Callbacks()


def _print_result(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The final result as one JSON line on stdout (unless events already go to stdout)."""
    if getattr(args, "events", None) != "-":
        print(json.dumps(result, default=str))


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------

def cmd_tokenizer(args: argparse.Namespace) -> int:
    from training.core.tokenizer import compression_ratio, train_tokenizer

    events = _events(args)
    texts = list(iter_texts(args.input, args.corpus, field=args.field, cache_dir=args.cache_dir, limit=args.limit))
    if not texts:
        raise CliError("the inputs hold no text")
    events.on_start({"command": "tokenizer", "documents": len(texts), "vocab_size": args.vocab_size})
    tok = train_tokenizer(texts, args.vocab_size, min_frequency=args.min_frequency, show_progress=not args.quiet)
    tok.save(args.out)
    sample = texts[: min(len(texts), 200)]
    result = {"status": "completed", "out": str(args.out), "vocab_size": tok.vocab_size, "documents": len(texts),
              "chars_per_token": round(compression_ratio(tok, sample), 4)}
    events.on_end(result)
    _print_result(args, result)
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from training.core.data.shards import prepare_shards
    from training.core.tokenizer import StudioTokenizer

    events = _events(args)
    tok = StudioTokenizer.load(args.tokenizer)
    texts = iter_texts(args.input, args.corpus, field=args.field, cache_dir=args.cache_dir, limit=args.limit)
    if not args.quiet:
        from tqdm import tqdm

        texts = tqdm(texts, desc="prepare", unit="doc", file=sys.stderr, total=args.limit)
    events.on_start({"command": "prepare", "tokenizer": str(args.tokenizer), "out": str(args.out)})
    manifest = prepare_shards(texts, tok, args.out, val_fraction=args.val_fraction, seed=args.seed,
                              num_workers=args.workers)
    result = {"status": "completed", "out": str(args.out), "manifest": manifest}
    events.on_end(result)
    _print_result(args, result)
    return EXIT_OK


def cmd_pretrain(args: argparse.Namespace) -> int:
    from training.core.callbacks import CallbackList, JsonlCallbacks, ProgressBarCallbacks
    from training.core.loops.pretrain import train

    cfg = build_pretrain_config(args.config, args.set or [])
    if args.print_config:
        print(cfg.to_json())
        return EXIT_OK
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    callbacks = CallbackList([
        JsonlCallbacks(args.events) if args.events and rank0 else None,
        None if args.quiet or not rank0 else ProgressBarCallbacks("pretrain"),
    ])
    summary = train(cfg, callbacks)
    if rank0:
        _print_result(args, summary)
    return {"completed": EXIT_OK, "cancelled": EXIT_CANCELLED, "diverged": EXIT_DIVERGED}.get(
        summary["status"], EXIT_ERROR)


#: post-training commands: command -> (config class name in training.core.config, loop module)
POST_TRAINING: dict[str, tuple[str, str]] = {
    "sft": ("SFTConfig", "training.core.loops.sft"),
    "reward": ("RewardConfig", "training.core.loops.reward"),
    "dpo": ("DPOConfig", "training.core.loops.dpo"),
    "ppo": ("PPOConfig", "training.core.loops.ppo"),
}


def build_post_training_config(command: str, config_path: str | None, overrides: Sequence[str]) -> Any:
    """The config of a post-training command (e.g. :class:`DPOConfig`) from a file and overrides."""
    from training.core import config as config_module

    data = load_config_file(config_path) if config_path else {}
    data = apply_overrides(data, overrides)
    return getattr(config_module, POST_TRAINING[command][0]).from_dict(data)


def cmd_post_training(args: argparse.Namespace) -> int:
    """Run one post-training loop (``dpo``, ``ppo`` …) with the same events and exit codes as pretrain."""
    import importlib

    from training.core.callbacks import CallbackList, JsonlCallbacks, ProgressBarCallbacks

    cfg = build_post_training_config(args.command, args.config, args.set or [])
    if args.print_config:
        print(cfg.to_json())
        return EXIT_OK
    loop = importlib.import_module(POST_TRAINING[args.command][1])
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    callbacks = CallbackList([
        JsonlCallbacks(args.events) if args.events and rank0 else None,
        None if args.quiet or not rank0 else ProgressBarCallbacks(args.command),
    ])
    summary = loop.train(cfg, callbacks)
    if rank0:
        _print_result(args, summary)
    return {"completed": EXIT_OK, "cancelled": EXIT_CANCELLED, "diverged": EXIT_DIVERGED}.get(
        summary["status"], EXIT_ERROR)

def _tokenizer_near(path: Path) -> Path | None:
    """A tokenizer folder next to a checkpoint / export: the folder itself, or a run's tokenizer/."""
    for cand in (path, path / "tokenizer", path.parent / "tokenizer", path.parent.parent / "tokenizer",
                 path.parent.parent.parent / "tokenizer"):
        if (cand / "tokenizer.json").is_file():
            return cand
    return None


def _source_kind(path: Path) -> str:
    """``gguf``, ``checkpoint``, ``export`` (our safetensors export) or ``hf``."""
    if path.suffix.lower() == ".gguf":
        return "gguf"
    if path.is_dir() and (path / "config.json").is_file():
        try:
            meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = {}
        if (path / "checkpoint.json").is_file():
            return "checkpoint"
        if meta.get("format") == "llm-studio" and (path / "model.safetensors").is_file():
            return "export"
        if "model_type" in meta or "architectures" in meta:
            return "hf"
    return "checkpoint"  # run folders and checkpoints/ folders resolve through find_checkpoint


def load_model_and_tokenizer(model_path: str, tokenizer_path: str | None = None,
                             device: str = "cpu") -> tuple[Any, Any]:
    """Any model source the studio knows, and its tokenizer (None when none is found)."""
    from training.core.tokenizer import StudioTokenizer

    if model_path == "smollm2":
        from training.core.corpora import default_cache_dir
        from training.core.interop import load_smollm2

        model, tokenizer = load_smollm2(default_cache_dir())  # keeps an HF copy in the cache: fast next time
        return model.to(device).eval(), tokenizer
    path = Path(model_path)
    if not path.exists():
        raise CliError(f"model {path} does not exist", "pass a checkpoint, run folder, export, HF folder or .gguf")
    kind = _source_kind(path)
    tokenizer = None
    if kind == "gguf":
        from training.core.interop import import_gguf

        model, tokenizer = import_gguf(path)
    elif kind == "hf":
        from training.core.interop import import_hf

        model, tokenizer = import_hf(path)
    else:
        from training.core.checkpoint import find_checkpoint, load_model

        if kind == "checkpoint":
            path = find_checkpoint(path)
        model = load_model(path)
        near = _tokenizer_near(path)
        if tokenizer_path is None and near is None:
            try:
                cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
                near = Path(cfg["tokenizer_dir"]) if cfg.get("tokenizer_dir") else None
            except (OSError, json.JSONDecodeError, KeyError):
                near = None
        if near is not None and tokenizer_path is None:
            tokenizer = StudioTokenizer.load(near)
    if tokenizer_path is not None:
        tokenizer = StudioTokenizer.load(tokenizer_path)
    return model.to(device).eval(), tokenizer


def cmd_generate(args: argparse.Namespace) -> int:
    from training.core.serve import chat, generate

    model, tok = load_model_and_tokenizer(args.model, args.tokenizer)
    if tok is None:
        raise CliError("no tokenizer found next to the model", "pass --tokenizer DIR")
    events = _events(args)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty, seed=args.seed)
    stream = sys.stdout if args.stream and args.events != "-" else None
    results: list[dict[str, str]] = []
    if args.chat is not None:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": args.chat})
        on_text = (lambda piece: (stream.write(piece), stream.flush())) if stream else None
        reply = chat(model, tok, messages, max_new_tokens=args.max_new_tokens, on_text=on_text, **sampling)
        if stream:
            stream.write("\n")
        results.append({"prompt": args.chat, "text": reply})
    else:
        prompts = args.prompt or [""]
        ids = [tok.encode(p, add_bos=tok.bos_id is not None and args.add_bos) or [tok.eos_id] for p in prompts]
        outs = generate(model, ids, max_new_tokens=args.max_new_tokens, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                        **sampling)
        for p, out in zip(prompts, outs):
            results.append({"prompt": p, "text": tok.decode(out, skip_special_tokens=True)})
    for r in results:
        events.on_log(json.dumps(r))
    result = {"status": "completed", "results": results}
    events.on_end(result)
    if args.json:
        _print_result(args, result)
    elif not stream:
        for r in results:
            print(r["prompt"] + r["text"] if args.chat is None else r["text"])
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    model, tok = load_model_and_tokenizer(args.model, args.tokenizer)
    events = _events(args)
    fmt = args.format
    if fmt == "hf":
        from training.core.interop import export_hf

        out = export_hf(model, tok, args.out)
    elif fmt == "gguf":
        from training.core.interop import export_gguf

        if tok is None:
            raise CliError("GGUF files embed the tokenizer, and none was found", "pass --tokenizer DIR")
        out = export_gguf(model, tok, args.out)
    else:
        from training.core.checkpoint import export_model

        out = export_model(model, args.out)
        if tok is not None:
            tok.save(Path(args.out) / "tokenizer")
    result = {"status": "completed", "format": fmt, "out": str(out)}
    events.on_end(result)
    _print_result(args, result)
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from training.core.checkpoint import save_checkpoint

    model, tok = load_model_and_tokenizer(args.source, args.tokenizer)
    events = _events(args)
    out = Path(args.out)
    config = {"model": model.cfg.to_dict(), "imported_from": str(args.source)}
    if tok is not None:
        tok.save(out / "tokenizer")
        config["tokenizer_dir"] = str(out / "tokenizer")
    path = save_checkpoint(out, 0, model, None, config=config)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    result = {"status": "completed", "checkpoint": str(path), "n_params": sum(p.numel() for p in model.parameters()),
              "tokenizer": config.get("tokenizer_dir")}
    events.on_end(result)
    _print_result(args, result)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------

def _add_text_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", "-i", nargs="*", default=[], metavar="PATH",
                   help="text files (.txt = one document), JSONL files (one document per line) or folders")
    p.add_argument("--corpus", help="a built-in corpus name (see training.core.corpora), e.g. austen")
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--cache-dir", default=None,
                   help="corpus cache folder (default: $STUDIO_DATA_DIR/cache or var/cache)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many documents")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", metavar="PATH", help="write JSON-lines events to PATH ('-' for stdout)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all commands."""
    parser = argparse.ArgumentParser(
        prog="python -m training.core.cli",
        description="LLM Studio ML core: tokenizer → prepare → pretrain → generate / export / import.",
        epilog="Multi-process: torchrun --nproc_per_node=N -m training.core.cli pretrain --config run.yaml",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer",
                       description="Train a byte-level BPE tokenizer and save it as a HF-compatible folder.")
    _add_text_inputs(p)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--out", "-o", required=True, help="output folder")
    _add_common(p)
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("prepare", help="tokenize texts into token shards",
                       description="Tokenize documents (eos-separated) into train_*.bin / val_*.bin shards.")
    _add_text_inputs(p)
    p.add_argument("--tokenizer", "-t", required=True, help="tokenizer folder")
    p.add_argument("--out", "-o", required=True, help="output folder for the shards")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out (default 0.01)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="tokenizer threads (default: all cores)")
    _add_common(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("pretrain", help="pretrain a model (clm or mlm); torchrun-able",
                       description="Pretrain from a JSON/YAML config (PretrainConfig) with --set overrides. "
                                   "Example: --set model.preset=tiny --set data.dataset_dir=var/shards "
                                   "--set steps=200 --set optim.lr=1e-3")
    p.add_argument("--config", "-c", help="JSON or YAML file with PretrainConfig settings")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. optim.lr=3e-4 or model.preset=tiny (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    _add_common(p)
    p.set_defaults(func=cmd_pretrain)

    for command, summary in (("sft", "supervised fine-tuning on chat records, optionally with LoRA"),
                             ("reward", "train a reward model (scalar head, Bradley-Terry) on preference pairs"),
                             ("dpo", "direct preference optimization on chosen/rejected pairs"),
                             ("ppo", "RLHF with PPO against a reward model or a rule-based reward")):
        config_name = POST_TRAINING[command][0]
        p = sub.add_parser(command, help=f"{summary}; torchrun-able",
                           description=f"{summary[0].upper()}{summary[1:]}, from a JSON/YAML config ({config_name}) "
                                       "with --set overrides. Example: --set init_from=smollm2 "
                                       "--set train_file=pairs.jsonl --set steps=100")
        p.add_argument("--config", "-c", help=f"JSON or YAML file with {config_name} settings")
        p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                       help="override a setting, e.g. beta=0.1 or optim.lr=1e-6 (repeatable)")
        p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
        _add_common(p)
        p.set_defaults(func=cmd_post_training)

    p = sub.add_parser("generate", help="generate text or chat with a model",
                       description="Generate from a checkpoint, run folder, export, HF folder, .gguf file or "
                                   "'smollm2'.")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--tokenizer", "-t", default=None, help="tokenizer folder (default: found next to the model)")
    p.add_argument("--prompt", "-p", action="append", help="prompt to continue (repeatable)")
    p.add_argument("--chat", help="ask a question through the chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--add-bos", action="store_true", help="prefix prompts with the bos token")
    p.add_argument("--stream", action="store_true", help="print --chat replies as they are generated")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    _add_sampling(p)
    _add_common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="export a model (HF folder, GGUF, safetensors)",
                       description="Export a checkpoint (or any model source) as a Hugging Face folder, a GGUF "
                                   "file, or the studio's consolidated safetensors + config.json.")
    p.add_argument("--model", "-m", required=True)
    p.add_argument("--tokenizer", "-t", default=None)
    p.add_argument("--format", "-f", choices=("hf", "gguf", "safetensors"), default="hf")
    p.add_argument("--out", "-o", required=True, help="output folder (hf, safetensors) or .gguf file")
    _add_common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="import a HF folder or GGUF file as a checkpoint",
                       description="Import a Hugging Face Llama folder, a .gguf file or 'smollm2' into a run folder "
                                   "(model-only checkpoint at step 0, tokenizer/); continue training with "
                                   "--set init_from=OUT.")
    p.add_argument("--source", required=True, help="HF folder, .gguf file or 'smollm2'")
    p.add_argument("--tokenizer", "-t", default=None)
    p.add_argument("--out", "-o", required=True, help="run folder to create")
    _add_common(p)
    p.set_defaults(func=cmd_import)
    return parser


def _error(args_events: str | None, payload: dict[str, Any]) -> None:
    print(json.dumps({"error": payload}), file=sys.stderr)
    if args_events:
        from training.core.callbacks import JsonlCallbacks

        JsonlCallbacks(args_events).on_end({"status": "failed", "error": payload})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    from training.core.checkpoint import CheckpointError
    from training.core.config import ConfigError

    args = build_parser().parse_args(argv)
    events = getattr(args, "events", None)
    try:
        return int(args.func(args))
    except ConfigError as e:
        _error(events, {"type": "ConfigError", **e.to_dict()})
    except CheckpointError as e:
        _error(events, {"type": "CheckpointError", "path": e.path, "detail": e.message, "hint": e.hint})
    except CliError as e:
        _error(events, {"type": "UsageError", "field": e.field, "detail": e.message, "hint": e.hint})
    except (ValueError, FileNotFoundError) as e:
        if not hasattr(e, "hint") and not isinstance(e, FileNotFoundError):
            raise  # not one of the core's typed errors: a bug, show the traceback
        _error(events, {"type": type(e).__name__, "detail": getattr(e, "message", str(e)),
                        "hint": getattr(e, "hint", "")})
    return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
