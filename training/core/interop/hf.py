"""Hugging Face folders: export a model that ``transformers`` loads as ``LlamaForCausalLM``, and
import Llama-family weights from such a folder.

Our :class:`~training.core.model.Transformer` uses the same rotary layout as Hugging Face Llama
("rotate half"), so weights are copied by name only, never permuted::

    export_hf(model, tokenizer, "var/exports/my-model")
    # transformers.AutoModelForCausalLM.from_pretrained("var/exports/my-model") gives the same logits
    model, tokenizer = import_hf("var/exports/my-model")

Neither function needs ``transformers``: the files are written and read with ``safetensors``
and ``json`` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from training.core.config import ConfigError, ModelConfig
from training.core.interop.common import InteropError, atomic_folder, hf_names, model_from_state_dict
from training.core.model import Transformer

if TYPE_CHECKING:
    from training.core.tokenizer import StudioTokenizer

__all__ = ["export_hf", "import_hf", "hf_config", "config_from_hf"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def hf_config(cfg: ModelConfig, tokenizer: "StudioTokenizer | None" = None,
              dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``config.json`` of a ``LlamaForCausalLM`` with the shape of ``cfg``.

    >>> hf_config(ModelConfig.preset("tiny"))["num_key_value_heads"]
    2
    """
    if cfg.mode != "decoder":
        raise InteropError("only decoder models can be exported as LlamaForCausalLM",
                           "encoder (masked-LM) models are saved with the studio checkpoint format instead")
    dtype_name = next(k for k, v in _DTYPES.items() if v == dtype)
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # read by transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # transformers 5.x
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
        "use_cache": True,
    }
    if tokenizer is not None:
        config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    return config


def config_from_hf(config: dict[str, Any]) -> ModelConfig:
    """Our :class:`ModelConfig` from a Llama-family ``config.json`` dict (errors name what is unsupported)."""
    model_type = config.get("model_type", "llama")
    if model_type not in ("llama", "mistral"):
        raise InteropError(f"model_type {model_type!r} is not supported",
                           "import Llama-family models (model_type 'llama' or 'mistral')")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise InteropError(f"{flag}=true is not supported", "the studio's Llama blocks have no biases")
    if config.get("hidden_act", "silu") != "silu":
        raise InteropError(f"hidden_act {config.get('hidden_act')!r} is not supported", "only SwiGLU (silu) MLPs")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise InteropError(f"rope scaling {rope_type!r} is not supported", "only plain rotary embeddings")
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    theta = float(theta if theta is not None else config.get("rope_theta", 10000.0))
    dim, n_heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = config.get("head_dim")
    if head_dim is not None and int(head_dim) != dim // n_heads:
        raise InteropError(f"head_dim={head_dim} differs from hidden_size/num_attention_heads={dim // n_heads}",
                           "models with a free head_dim are not supported")
    try:
        return ModelConfig(
            vocab_size=int(config["vocab_size"]), dim=dim, n_layers=int(config["num_hidden_layers"]),
            n_heads=n_heads, n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            ffn_dim=int(config["intermediate_size"]), max_seq_len=int(config.get("max_position_embeddings", 2048)),
            rope_theta=theta, norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)), mode="decoder",
            init_std=float(config.get("initializer_range", 0.02)),
        )
    except (KeyError, ConfigError) as e:
        raise InteropError(f"config.json cannot be turned into a ModelConfig: {e}",
                           "check hidden_size, num_attention_heads, num_key_value_heads") from e


def export_hf(model: Transformer, tokenizer: "StudioTokenizer | None", folder: str | Path, *,
              dtype: torch.dtype = torch.float32, generation: dict[str, Any] | None = None) -> Path:
    """Write ``folder`` as a Hugging Face ``LlamaForCausalLM`` folder and return its path.

    Files: ``config.json``, ``model.safetensors`` (``dtype``, tied embeddings stored once),
    ``generation_config.json`` (``generation`` overrides the defaults) and, when ``tokenizer`` is
    given, its ``tokenizer.json`` / ``tokenizer_config.json`` (with the chat template). The folder
    is written to a temporary sibling and renamed into place.
    """
    from safetensors.torch import save_file

    if dtype not in _DTYPES.values():
        raise InteropError(f"dtype {dtype} is not supported for export", "use float32, float16 or bfloat16")
    cfg = model.cfg
    config = hf_config(cfg, tokenizer, dtype)
    names = hf_names(cfg)
    state = model.state_dict()
    tensors: dict[str, Tensor] = {}
    for ours, theirs in names.items():
        if ours == "output.weight" and cfg.tie_embeddings:
            continue
        tensors[theirs] = state[ours].detach().to("cpu", dtype).contiguous()
    gen: dict[str, Any] = {"do_sample": False}
    if tokenizer is not None:
        eos = [tokenizer.eos_id] + [i for i in tokenizer.stop_ids if i != tokenizer.eos_id]
        gen.update(bos_token_id=tokenizer.bos_id, eos_token_id=eos if len(eos) > 1 else eos[0],
                   pad_token_id=tokenizer.pad_id)
    gen.update(generation or {})
    with atomic_folder(folder) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(folder)


def _read_safetensors(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_file(str(folder / shard)))
        return state
    raise InteropError(f"no model.safetensors (or model.safetensors.index.json) in {folder}",
                       "export the model with safetensors; .bin pickles are not loaded for safety")


def import_hf(folder: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
              ) -> tuple[Transformer, "StudioTokenizer | None"]:
    """Load a Llama-family Hugging Face folder into our :class:`Transformer` (+ its tokenizer).

    Reads ``config.json`` and ``model.safetensors`` (or sharded safetensors); embeddings may be
    tied (no ``lm_head.weight``) or not. The tokenizer is ``None`` when the folder has no
    ``tokenizer.json``.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InteropError(f"no config.json in {folder}", "point to a Hugging Face model folder")
    config = json.loads(config_path.read_text())
    raw = _read_safetensors(folder)
    if "lm_head.weight" not in raw:
        config["tie_word_embeddings"] = True
    cfg = config_from_hf(config)
    state: dict[str, Tensor] = {}
    for ours, theirs in hf_names(cfg).items():
        if theirs in raw:
            state[ours] = raw.pop(theirs)
    if cfg.tie_embeddings:
        raw.pop("lm_head.weight", None)
    leftovers = [k for k in raw if "rotary_emb" not in k]
    if leftovers:
        raise InteropError(f"unexpected tensors in the checkpoint: {leftovers[:5]}",
                           "only plain Llama-family weights can be imported")
    model = model_from_state_dict(cfg, state, dtype=dtype, device=device)
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        from training.core.tokenizer import StudioTokenizer

        tokenizer = StudioTokenizer.load(folder)
    return model, tokenizer
