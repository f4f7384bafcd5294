"""Serving: KV-cache generation with streaming, sampling options and chat formatting.

>>> from training.core.serve import generate, chat, KVCache
"""

from training.core.model import KVCache
from training.core.serve.generate import GenerationError, chat, generate
from training.core.serve.sampling import apply_repetition_penalty, sample_next, top_k_filter, top_p_filter

__all__ = ["KVCache", "generate", "chat", "GenerationError", "apply_repetition_penalty", "sample_next",
           "top_k_filter", "top_p_filter"]
