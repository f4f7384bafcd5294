"""Shared pieces of the import/export code: errors, weight names, atomic folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from training.core.config import ModelConfig
from training.core.model import Transformer


class InteropError(ValueError):
    """A model cannot be imported or exported as asked; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f" (hint: {hint})" if hint else ""))


# our name -> Hugging Face Llama name ("{i}" is the layer index)
_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_names(cfg: ModelConfig) -> dict[str, str]:
    """Map each of our parameter names to its Hugging Face ``LlamaForCausalLM`` name.

    >>> hf_names(ModelConfig.preset("tiny"))["layers.1.feed_forward.w1.weight"]
    'model.layers.1.mlp.gate_proj.weight'
    """
    names = dict(_TOP_NAMES)
    for i in range(cfg.n_layers):
        for ours, theirs in _LAYER_NAMES.items():
            names[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return names


def model_from_state_dict(cfg: ModelConfig, state: dict[str, Tensor], *, dtype: torch.dtype = torch.float32,
                          device: torch.device | str = "cpu") -> Transformer:
    """Build a :class:`Transformer` directly from ``state`` (our names) without a random init.

    A tied model may omit ``output.weight``. Missing or unexpected tensors are an error.
    """
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.reset_rope()
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    if cfg.tie_embeddings:
        state.pop("output.weight", None)
        state["output.weight"] = state.get("tok_embeddings.weight")  # type: ignore[assignment]
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected or any(v is None for v in state.values()):
        raise InteropError(f"weights do not match the model shape: missing {missing[:5]}, unexpected {unexpected[:5]}",
                           "the checkpoint is not a plain Llama-family model, or its config.json is wrong")
    for name, param in model.state_dict().items():
        if tuple(param.shape) != tuple(state[name].shape):
            raise InteropError(f"{name}: checkpoint shape {tuple(state[name].shape)} != model shape "
                               f"{tuple(param.shape)}", "the config does not describe these weights")
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    return model


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``folder``; on success it replaces ``folder`` by renames.

    Readers never see a half-written export: either the old folder or the complete new one.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield tmp
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
