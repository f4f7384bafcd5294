"""Fine-tuning and RLHF runs (kinds ``sft``, ``reward``, ``dpo``, ``ppo``) on the studio's side.

The core's loops (``training/core/loops/{sft,reward,dpo,ppo}.py``) take one config dataclass each
(``SFTConfig``, ``RewardConfig``, ``DPOConfig``, ``PPOConfig``). This module turns what the run
form sends into that config, checks what only the studio can check before any compute is spent,
and prepares the run's folder when a worker launches it:

- **inputs** — the base model (``checkpoint:<id>`` or ``model:<id>``: a studio checkpoint or an
  imported model such as SmolLM2-135M-Instruct), the data (a labeling snapshot, read only through
  :mod:`labeling.export`) and, for PPO, the reward (a reward-model checkpoint or a rule);
- **refusals** (400 with a code and a hint): a snapshot with too few preference pairs, a reward
  model whose tokenizer differs from the policy's, a reward model trained from another base, a
  reward "model" that is not one;
- **phases** run by :func:`training.tasks.run_job`: ``data`` (the snapshot's records written to
  ``runs/<id>/data/train.jsonl``, temp name then rename), ``tokenizer`` (the base model's tokenizer
  copied to ``runs/<id>/tokenizer`` so that chat, serving, export and labeling generation find it
  next to every checkpoint) and the loop itself (``cli <kind> --config launch_config.json``).

The stored ``Run.config`` is the core config without paths plus a ``studio`` block with the
inputs (``base``, ``reward``), so a clone or a resume rebuilds the same launch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from studio.errors import StudioAPIError
from training import error_codes as codes

POSTTRAIN_KINDS = ("sft", "reward", "dpo", "ppo")
POLICY_KINDS = ("sft", "dpo", "ppo")  # their checkpoints are chat models
CONFIG_CLASSES = {"sft": "SFTConfig", "reward": "RewardConfig", "dpo": "DPOConfig", "ppo": "PPOConfig"}
# what each kind reads from a labeling snapshot (labeling.export formats, plus prompts for PPO)
SNAPSHOT_FORMATS = {"sft": "sft", "reward": "preference_conversational", "dpo": "preference_conversational",
                    "ppo": "prompts"}
# paths and inputs the studio fills in itself: a client may not set them in config
SERVER_FIELDS = ("init_from", "tokenizer_dir", "train_file", "eval_file", "out_dir", "resume_from",
                 "reward_model", "ref_model", "reward_tokenizer_dir")
DEFAULT_MIN_PAIRS = 8
# the core's setting that bounds how few records a kind accepts (refused before any compute)
MINIMUM_FIELDS = {"sft": "min_examples", "reward": "min_pairs", "dpo": "min_pairs", "ppo": "min_prompts"}
# rule-based rewards offered in the form (``training.core.rewards`` names, with an argument where one is needed)
RULE_EXAMPLES = ("vowels", "distinct", "brevity", "length:20", "keyword:thanks")

_TINY = {"steps": 20, "micro_batch_size": 2, "grad_accum_steps": 1, "max_seq_len": 128, "eval_every": 10,
         "ckpt_every": 10, "log_every": 1, "device": "cpu", "dtype": "fp32"}
_SMOL = {"micro_batch_size": 4, "grad_accum_steps": 4, "max_seq_len": 512, "eval_every": 50, "ckpt_every": 100,
         "log_every": 1, "device": "auto", "dtype": "auto"}

#: Presets of the fine-tuning form: settings of the kind's config (no paths), per kind.
POSTTRAIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "sft": {
        "tiny-cpu": {"label": "Tiny on CPU (a studio checkpoint, a minute)",
                     "config": {**_TINY, "optim": {"lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.0}}},
        "smollm2": {"label": "SmolLM2-135M-Instruct (GPU, or a slow CPU)",
                    "config": {**_SMOL, "steps": 300, "optim": {"lr": 2e-5, "warmup_steps": 20, "weight_decay": 0.0}}},
    },
    "reward": {
        "tiny-cpu": {"label": "Tiny on CPU (a studio checkpoint, a minute)",
                     "config": {**_TINY, "optim": {"lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.0}}},
        "smollm2": {"label": "SmolLM2-135M-Instruct (GPU, or a slow CPU)",
                    "config": {**_SMOL, "steps": 200, "optim": {"lr": 1e-5, "warmup_steps": 10, "weight_decay": 0.0}}},
    },
    "dpo": {
        "tiny-cpu": {"label": "Tiny on CPU (a studio checkpoint, a minute)",
                     "config": {**_TINY, "beta": 0.1, "max_prompt_len": 64, "optim": {"lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.0}}},
        "smollm2": {"label": "SmolLM2-135M-Instruct (GPU, or a slow CPU)",
                    "config": {**_SMOL, "steps": 200, "beta": 0.1, "optim": {"lr": 5e-7, "warmup_steps": 10, "weight_decay": 0.0}}},
    },
    "ppo": {
        "tiny-cpu": {"label": "Tiny on CPU (a studio checkpoint, a few minutes)",
                     "config": {**_TINY, "max_prompt_len": 64, "max_new_tokens": 16,
                                "optim": {"lr": 1e-4, "warmup_steps": 0, "weight_decay": 0.0}}},
        "smollm2": {"label": "SmolLM2-135M-Instruct (GPU, or a slow CPU)",
                    "config": {**_SMOL, "steps": 200, "optim": {"lr": 1e-6, "warmup_steps": 0, "weight_decay": 0.0}}},
    },
}


def _error(code: str, field: str, detail: str, hint: str = "", status: int = 400) -> StudioAPIError:
    return StudioAPIError(code, detail, hint or codes.HINTS.get(code, ""), status, {field: [detail]})


# ---- the core's config classes -----------------------------------------------------------------

def config_class(kind: str) -> Any:
    """The core's config dataclass of a post-training kind (None while the core does not have it)."""
    from training.core import config as core_config

    return getattr(core_config, CONFIG_CLASSES[kind], None)


def config_fields(kind: str) -> set[str]:
    import dataclasses

    cls = config_class(kind)
    return {f.name for f in dataclasses.fields(cls)} if cls is not None else set()


def loop_available(kind: str) -> bool:
    """Whether this checkout's core has the loop and the config of ``kind``."""
    import importlib.util

    return config_class(kind) is not None and importlib.util.find_spec(f"training.core.loops.{kind}") is not None


# ---- model references ----------------------------------------------------------------------------

def model_source(ref: str, field: str = "base") -> dict[str, Any]:
    """``checkpoint:<id>`` or ``model:<id>`` → ``{ref, path, name, run, kind}`` (``run``/``kind`` of
    the checkpoint's run; ``kind`` "model" for imported models and exports)."""
    from training.models import Checkpoint, ModelArtifact

    kind, _, pk = str(ref or "").partition(":")
    if kind == "checkpoint" and pk.isdigit():
        ckpt = Checkpoint.objects.select_related("run").filter(pk=int(pk)).first()
        if ckpt is None or not Path(ckpt.path).exists():
            raise _error(codes.CHECKPOINT_MISSING, field, f"Checkpoint {pk} does not exist (or its files are gone).")
        if ckpt.run.kind in ("tokenizer", "eval") or ckpt.run.config.get("objective", "clm") != "clm":
            raise _error(codes.INVALID_CONFIG, field, f"Checkpoint {pk} is not a causal language model.",
                         "Pick a checkpoint of a pretraining (objective clm), SFT, DPO or PPO run.")
        return {"ref": ckpt.ref, "path": ckpt.path, "name": f"{ckpt.run.name} @ step {ckpt.step}",
                "run": ckpt.run, "kind": ckpt.run.kind, "checkpoint": ckpt}
    if kind == "model" and pk.isdigit():
        art = ModelArtifact.objects.filter(pk=int(pk), status="ready").first()
        if art is None:
            raise _error(codes.MODEL_MISSING, field, f"Model {pk} does not exist or is not ready.")
        if art.format == "safetensors":
            raise _error(codes.INVALID_CONFIG, field, f"Model {pk} is a studio safetensors export.",
                         "Start from its checkpoint, a Hugging Face export, a GGUF file or an imported model.")
        path = art.path
        if not path or not Path(path).exists():
            raise _error(codes.MODEL_MISSING, field, f"The files of model {pk} are gone from {path}.")
        return {"ref": art.ref, "path": path, "name": art.name, "run": art.checkpoint.run if art.checkpoint else None,
                "kind": "model", "artifact": art}
    raise _error(codes.MODEL_MISSING, field, f"{field} must be 'checkpoint:<id>' or 'model:<id>', got {ref!r}.")


def base_root(ref: str, _depth: int = 0) -> str:
    """The model a chain of fine-tuning runs started from: ``smollm2``, ``model:<id>`` or
    ``pretrain:<run id>`` — two models share a base when their roots are equal."""
    from training.models import Checkpoint, ModelArtifact

    kind, _, pk = str(ref).partition(":")
    if _depth > 50 or not pk.isdigit():
        return str(ref)
    if kind == "model":
        art = ModelArtifact.objects.filter(pk=int(pk)).select_related("checkpoint").first()
        if art is None:
            return ref
        if art.source == "smollm2":
            return "smollm2"
        return base_root(art.checkpoint.ref, _depth + 1) if art.checkpoint_id else ref
    ckpt = Checkpoint.objects.select_related("run").filter(pk=int(pk)).first()
    if ckpt is None:
        return ref
    run = ckpt.run
    parent = (run.config.get("studio") or {}).get("base")
    if run.kind in POSTTRAIN_KINDS and parent:
        return base_root(parent, _depth + 1)
    return f"pretrain:{run.pk}"


def tokenizer_of(path: str) -> Any:
    """The tokenizer of a model source (a checkpoint, run folder, export, HF folder or .gguf file);
    None when none is found. A GGUF tokenizer is read from the file's metadata (memory-mapped)."""
    from training.core.tokenizer import StudioTokenizer

    p = Path(path)
    if p.suffix.lower() == ".gguf":
        from training.core.interop.gguf import read_gguf, tokenizer_from_gguf

        return tokenizer_from_gguf(read_gguf(p))
    folder = tokenizer_folder(p)
    return StudioTokenizer.load(folder) if folder is not None else None


def tokenizer_folder(path: Path) -> Path | None:
    """The tokenizer folder next to a checkpoint or export (as the core's loader looks for it), or
    the ``tokenizer_dir`` its saved config names."""
    for cand in (path, path / "tokenizer", path.parent / "tokenizer", path.parent.parent / "tokenizer",
                 path.parent.parent.parent / "tokenizer"):
        if (cand / "tokenizer.json").is_file():
            return cand
    for cfg_path in (path / "config.json", path / "run_config.json"):
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        tdir = cfg.get("tokenizer_dir") if isinstance(cfg, dict) else None
        if tdir and (Path(tdir) / "tokenizer.json").is_file():
            return Path(tdir)
    return None


def vocab_digest(tokenizer: Any) -> str:
    """A digest of the token → id table: two tokenizers with the same digest split text alike."""
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    return hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()[:16]


# ---- data from labeling snapshots ----------------------------------------------------------------

def prompt_records(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Distinct prompts of a snapshot as ``{messages, id}`` records (PPO samples its answers itself)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for item in payload.get("items", []):
        messages = [{"role": m["role"], "content": m["content"]} for m in item.get("prompt") or []]
        key = json.dumps(messages, sort_keys=True)
        if not messages or key in seen:
            continue
        seen.add(key)
        out.append({"messages": messages, "id": item.get("external_id") or f"item-{item['id']}"})
    for rep in payload.get("reports", []):
        messages = [{"role": m["role"], "content": m["content"]} for m in rep.get("prompt") or []]
        key = json.dumps(messages, sort_keys=True)
        if messages and any(m["content"].strip() for m in messages) and key not in seen:
            seen.add(key)
            out.append({"messages": messages, "id": f"report-{rep['id']}"})
    return out


def snapshot_records(kind: str, snapshot_id: int) -> tuple[Any, list[dict[str, Any]]]:
    """``(snapshot, records)`` a run of ``kind`` trains on (through :mod:`labeling.export`)."""
    from labeling import export
    from labeling.models import Snapshot

    snap = Snapshot.objects.select_related("project").filter(pk=snapshot_id).first()
    if snap is None:
        raise _error(codes.SNAPSHOT_MISSING, "snapshot", f"Labeling snapshot {snapshot_id} does not exist.")
    fmt = SNAPSHOT_FORMATS[kind]
    if fmt == "prompts":
        return snap, prompt_records(snap.payload)
    options = {"margin": True} if kind == "reward" else {}
    return snap, export.records(snap.payload, fmt, **options)


def write_records(records: list[dict[str, Any]], path: Path) -> Path:
    """Write JSONL records atomically (temp name, then rename)."""
    from labeling.export import write_jsonl

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        write_jsonl(records, f)
    os.replace(tmp, path)
    return path


# ---- building and checking a config ----------------------------------------------------------------

def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_config(kind: str, preset: str) -> dict[str, Any]:
    presets = POSTTRAIN_PRESETS[kind]
    if preset not in presets:
        raise _error(codes.INVALID_CONFIG, "preset", f"Unknown {kind} preset {preset!r}.",
                     f"Presets: {', '.join(presets)}")
    return json.loads(json.dumps(presets[preset]["config"]))


def _reward_input(kind: str, reward: Any, base_ref: str, base_tok: Any) -> dict[str, Any]:
    """Check a PPO reward: ``checkpoint:<id>`` of a reward run (same tokenizer and base as the
    policy) or ``rule:<name>``."""
    if kind != "ppo":
        if reward not in (None, ""):
            raise _error(codes.INVALID_CONFIG, "reward", f"A {kind} run takes no reward model.")
        return {}
    if not reward:
        raise _error(codes.INVALID_CONFIG, "reward", "A PPO run needs a reward: a reward-model checkpoint "
                     "('checkpoint:<id>') or a rule ('rule:<name>').", "Train a reward model first, or pick a rule.")
    reward = str(reward)
    if reward.startswith("rule:"):
        return {"reward": reward, "rule": reward.partition(":")[2]}
    src = model_source(reward, "reward")
    if src["kind"] != "reward":
        raise _error(codes.NOT_A_REWARD_MODEL, "reward",
                     f"{reward} ({src['name']}) is a {src['kind']} model, not a reward model.")
    rtok = tokenizer_of(src["path"])
    if base_tok is not None and rtok is not None and vocab_digest(rtok) != vocab_digest(base_tok):
        raise _error(codes.TOKENIZER_MISMATCH, "reward",
                     f"The reward model {src['name']} uses another tokenizer than the policy "
                     f"({len(rtok)} vs {len(base_tok)} tokens, different vocabularies).")
    ours, theirs = base_root(base_ref), base_root(src["ref"])
    if ours != theirs:
        raise _error(codes.REWARD_OTHER_BASE, "reward",
                     f"The reward model {src['name']} was trained from another base ({theirs}) than the policy "
                     f"({ours}).")
    return {"reward": src["ref"], "reward_path": src["path"]}


def resolve(kind: str, config: dict[str, Any] | None, *, base: Any, snapshot: Any, reward: Any = None
            ) -> dict[str, Any]:
    """Validate a post-training run's inputs and config before any compute; returns what the run
    stores: ``{"config": core config without paths + {"studio": inputs}, "snapshot": Snapshot,
    "records": int, "base": model source, "total_steps": int}``. Raises :class:`StudioAPIError`."""
    if kind not in POSTTRAIN_KINDS:
        raise ValueError(kind)
    if not loop_available(kind):
        raise StudioAPIError(codes.KIND_NOT_LAUNCHABLE, f"This studio's core has no {kind} loop yet.",
                             codes.HINTS[codes.KIND_NOT_LAUNCHABLE], 400, {"kind": [f"{kind} is not available"]})
    if config is not None and not isinstance(config, dict):
        raise _error(codes.INVALID_CONFIG, "config", f"config must be an object of {CONFIG_CLASSES[kind]} settings.")
    data = json.loads(json.dumps(config or {}))
    inputs = data.pop("studio", None) or {}
    base = base or inputs.get("base")
    reward = reward if reward not in (None, "") else inputs.get("reward")
    for key in SERVER_FIELDS:
        if data.get(key) not in ("", None):
            raise _error(codes.INVALID_CONFIG, f"config.{key}", f"config.{key} is set by the studio; leave it out.",
                         "Pick the base model, the snapshot and the reward with their own fields.")
    if not base:
        raise _error(codes.MODEL_MISSING, "base", f"A {kind} run needs a base model.",
                     "Pick a studio checkpoint ('checkpoint:<id>') or an imported model ('model:<id>').")
    src = model_source(str(base), "base")
    if kind in POLICY_KINDS and src["kind"] == "reward":
        raise _error(codes.INVALID_CONFIG, "base", f"{src['name']} is a reward model, not a policy.",
                     "Start a policy from a pretraining, SFT, DPO or PPO checkpoint or an imported model.")
    if snapshot in (None, ""):
        raise _error(codes.SNAPSHOT_MISSING, "snapshot", f"A {kind} run needs a labeling snapshot.")
    try:
        snapshot_id = int(snapshot)
    except (TypeError, ValueError):
        raise _error(codes.SNAPSHOT_MISSING, "snapshot", f"snapshot must be an id, got {snapshot!r}.") from None
    snap, records = snapshot_records(kind, snapshot_id)
    base_tok = tokenizer_of(src["path"])
    if base_tok is None:
        raise _error(codes.TOKENIZER_MISSING, "base", f"No tokenizer was found next to {src['name']}.",
                     "Export the model with its tokenizer, or pick another base.")
    reward_in = _reward_input(kind, reward, src["ref"], base_tok)

    # the core validates every setting; paths are stand-ins here, the worker fills the real ones
    fields = config_fields(kind)
    probe = {**data, "init_from": src["path"], "out_dir": "runs/pending", "train_file": "train.jsonl"}
    if "reward_model" in fields and reward_in.get("reward_path"):
        probe["reward_model"] = reward_in["reward_path"]
    probe = _apply_rule(probe, fields, reward_in)
    try:
        cfg = config_class(kind).from_dict(probe)
    except Exception as e:  # noqa: BLE001 - ConfigError (or a TypeError from a wrong type)
        field = getattr(e, "field", "") or ""
        message = getattr(e, "message", str(e))
        hint = getattr(e, "hint", "")
        name = "reward" if field == "reward_fn" and reward_in.get("rule") else f"config.{field}" if field else "config"
        raise StudioAPIError(codes.INVALID_CONFIG, f"{name}: {message}", hint or codes.HINTS[codes.INVALID_CONFIG],
                             400, {name: [message + (f" — {hint}" if hint else "")]}) from None
    resolved = cfg.to_dict()
    minimum_field = MINIMUM_FIELDS[kind]
    minimum = max(int(resolved.get(minimum_field, DEFAULT_MIN_PAIRS) or 1), 1)
    if len(records) < minimum:
        what = {"sft": "corrected answers", "ppo": "prompts"}.get(kind, "preference pairs")
        raise _error(codes.TOO_FEW_PAIRS, "snapshot",
                     f"Snapshot {snap.label} yields {len(records)} {what}; a {kind} run needs at least {minimum} "
                     f"(config.{minimum_field}).",
                     f"Collect more judgements and take a new snapshot, or lower config.{minimum_field}.")
    for key in SERVER_FIELDS:
        resolved.pop(key, None)
    resolved["studio"] = {"base": src["ref"], "base_name": src["name"], "base_root": base_root(src["ref"]),
                          "snapshot": snap.pk, "snapshot_label": snap.label, "snapshot_sha256": snap.content_sha256,
                          "records": len(records), "tokenizer_vocab": vocab_digest(base_tok),
                          **{k: v for k, v in reward_in.items() if k in ("reward", "rule")}}
    return {"config": resolved, "snapshot": snap, "records": len(records), "base": src,
            "total_steps": int(resolved.get("steps") or 0)}


def _apply_rule(probe: dict[str, Any], fields: set[str], reward_in: dict[str, Any]) -> dict[str, Any]:
    """Pass a rule-based reward to the PPO config in the field the core names for it."""
    rule = reward_in.get("rule")
    if not rule:
        return probe
    for name in ("reward_fn", "reward_rule", "rule"):
        if name in fields:
            return {**probe, name: rule}
    raise _error(codes.INVALID_CONFIG, "reward", "This core's PPO loop takes no rule-based reward.",
                 "Pick a reward-model checkpoint.")


# ---- launching (called by the worker) ----------------------------------------------------------------

def launch_config(run: Any) -> tuple[Path, dict[str, Any]]:
    """Prepare a post-training run's folder and write ``launch_config.json``: the snapshot's records
    to ``data/train.jsonl``, the base model's tokenizer to ``tokenizer/``; paths filled in and
    ``resume_from=auto`` (so a resumed run continues from its last checkpoint)."""
    cfg = json.loads(json.dumps(run.config))
    inputs = cfg.pop("studio", {})
    src = model_source(inputs["base"], "base")
    out = Path(run.out_dir)
    train_file = out / "data" / "train.jsonl"
    if not train_file.exists():  # written once: a resumed run reads the same records in the same order
        _, records = snapshot_records(run.kind, run.labeling_snapshot_id)
        write_records(records, train_file)
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        tok = tokenizer_of(src["path"])
        if tok is None:
            raise RuntimeError(f"no tokenizer found next to {src['path']}")
        tmp = out / "tokenizer.tmp"
        tok.save(tmp)
        os.replace(tmp, tok_dir)
    fields = config_fields(run.kind)
    cfg.update(init_from=src["path"], tokenizer_dir=str(tok_dir), train_file=str(train_file), out_dir=str(out),
               resume_from="auto")
    if inputs.get("reward", "").startswith("checkpoint:"):
        rsrc = model_source(inputs["reward"], "reward")
        if "reward_model" in fields:
            cfg["reward_model"] = rsrc["path"]
    cfg = {k: v for k, v in cfg.items() if not fields or k in fields}
    path = out / "launch_config.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path, cfg


# ---- pages -------------------------------------------------------------------------------------------

#: Charts of each kind's run page: (title, metrics drawn together), metric names as the loops emit them.
CHARTS: dict[str, list[tuple[str, list[str]]]] = {
    "sft": [("Loss", ["loss", "eval/loss"]), ("Perplexity", ["eval/perplexity"]), ("Learning rate", ["lr"]),
            ("Gradient norm", ["grad_norm"]), ("Tokens per second", ["tokens/s"])],
    "reward": [("Loss", ["loss", "eval/loss"]), ("Pairwise accuracy", ["accuracy", "eval/accuracy"]),
               ("Margin", ["margin", "eval/margin"]),
               ("Rewards", ["mean_reward", "min_reward", "max_reward", "eval/mean_reward"])],
    "dpo": [("Loss", ["loss", "eval/loss"]),
            ("Implicit rewards", ["rewards/chosen", "rewards/rejected", "rewards/margins"]),
            ("Preference accuracy", ["rewards/accuracies", "eval/rewards/accuracies"]),
            ("Log-probabilities", ["logps/chosen", "logps/rejected"])],
    "ppo": [("Reward", ["objective/rlhf_reward", "objective/scores"]), ("KL to the reference", ["objective/kl"]),
            ("Entropy", ["objective/entropy"]), ("Policy updates", ["policy/approxkl_avg", "policy/clipfrac_avg"]),
            ("Probability ratio", ["val/ratio"]), ("Losses", ["loss/policy_avg", "loss/value_avg"]),
            ("Answers", ["val/response_length", "val/eos_fraction"]),
            ("Seconds per step", ["time/generation", "time/scoring", "time/training"])],
}

def health_rules(config: dict[str, Any]) -> dict[str, Any]:
    """RL-health rules the run page checks on every new point, with the run's own thresholds
    (PPOConfig ``kl_warn``, ``entropy_warn``, ``ratio_warn``). The core's ``health/*`` flags
    (1 = warn) are shown as well; a rule and its flag make one warning."""
    ratio = float(config.get("ratio_warn", 0.5))
    return {
        "kl_max": float(config.get("kl_warn", 10.0)),  # objective/kl above: the policy runs away from the reference
        "kl_min": -1.0,                                 # a clearly negative KL estimate: sampling or masking is broken
        "entropy_min": float(config.get("entropy_warn", 0.05)),  # objective/entropy below: collapse
        "entropy_floor": 0.25,                          # ... or below this fraction of its first value
        "ratio_band": [max(1.0 - ratio, 0.0), 1.0 + ratio],  # val/ratio outside: far from the sampling policy
    }


def form_context() -> dict[str, Any]:
    """What the fine-tuning form offers: base models, snapshots, reward models, presets, loops."""
    from training import actions
    from training.models import CHAT_KINDS, Checkpoint, ModelArtifact

    actions.ensure_smollm2()
    bases = [{"ref": a.ref, "name": a.name, "group": "Imported and exported models"}
             for a in ModelArtifact.objects.filter(status="ready").exclude(format="safetensors")]
    rewards = []
    for c in Checkpoint.objects.select_related("run").filter(run__kind__in=(*CHAT_KINDS, "reward")).order_by("-id")[:200]:
        if c.run.config.get("objective", "clm") != "clm" or not Path(c.path).exists():
            continue
        entry = {"ref": c.ref, "name": f"run {c.run_id} · {c.run.name} @ step {c.step}",
                 "group": f"{c.run.get_kind_display()} checkpoints"}
        (rewards if c.run.kind == "reward" else bases).append(entry)
    groups = [b["group"] for b in bases]
    bases.sort(key=lambda b: groups.index(b["group"]))  # one block per group for the select's optgroups
    snapshots = []
    try:
        from labeling.models import Snapshot

        for snap in Snapshot.objects.select_related("project").order_by("-id")[:100]:
            snapshots.append({"id": snap.pk, "label": snap.label, "counts": snap.counts,
                              "created_at": snap.created_at})
    except Exception:  # noqa: BLE001 - the labeling app is optional
        pass
    return {"bases": bases, "reward_models": rewards, "snapshots": snapshots, "rules": reward_rules(),
            "posttrain_presets": POSTTRAIN_PRESETS,
            "loops": {k: loop_available(k) for k in POSTTRAIN_KINDS}}


def reward_rules() -> list[str]:
    """Rule-based rewards the form offers: the examples whose rule the core knows."""
    try:
        from training.core.rewards import REWARD_RULES
    except ImportError:
        return []
    return [r for r in RULE_EXAMPLES if r.partition(":")[0] in REWARD_RULES]


def run_page_context(run: Any) -> dict[str, Any] | None:
    """The run page's extra parts for a fine-tuning / RLHF run (None for other kinds)."""
    if run.kind not in POSTTRAIN_KINDS:
        return None
    inputs = run.config.get("studio") or {}
    projects = []
    if run.kind in POLICY_KINDS:
        try:
            from labeling.models import Project

            projects = list(Project.objects.order_by("-id").values("id", "name")[:100])
        except Exception:  # noqa: BLE001 - the labeling app is optional
            projects = []
    summary = run.summary or {}
    calibration = summary.get("calibration") if isinstance(summary.get("calibration"), list) else None
    return {"charts": [{"id": f"chart-{i}", "title": t, "metrics": ",".join(m)} for i, (t, m) in
                       enumerate(CHARTS[run.kind])],
            "inputs": inputs, "health": health_rules(run.config), "projects": projects, "policy": run.kind in POLICY_KINDS,
            "calibration": calibration}
