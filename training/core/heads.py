"""Scalar heads on the transformer: reward models and value functions.

A :class:`RewardModel` is a :class:`~training.core.model.Transformer` (its final-normed hidden
states, ``model(tokens, attention_mask=…, return_hidden=True)``) followed by a
:class:`ScalarHead`, a bias-free ``Linear(dim, 1)`` like Hugging Face's
``LlamaForSequenceClassification.score``. The reward of a sequence is the head's output at its
last non-padding token; :meth:`RewardModel.values` gives the output at every position (a PPO
value function). The backbone's blocks are exposed as ``layers`` so that
``training.core.distributed.parallelize`` shards a reward model exactly like a policy.

>>> from training.core.config import ModelConfig
>>> rm = RewardModel(Transformer(ModelConfig.preset("tiny")))
>>> tokens = torch.tensor([[5, 6, 7], [8, 9, 0]]); mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
>>> rm(tokens, attention_mask=mask).shape, rm.values(tokens, attention_mask=mask).shape
(torch.Size([2]), torch.Size([2, 3]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from training.core.model import Transformer

__all__ = ["ScalarHead", "RewardModel", "last_token_index", "gather_last", "is_right_padded", "reward_model_config"]


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token of each row of ``attention_mask`` (B, T); left or right padding.

    >>> last_token_index(torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])).tolist()
    [1, 3, 3]
    """
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)  # (B, T)
    return torch.where(attention_mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values  # (B,)


def is_right_padded(attention_mask: Tensor) -> bool:
    """True when every row's real tokens come first and the padding (0) only after them.

    >>> is_right_padded(torch.tensor([[1, 1, 0], [1, 1, 1]])), is_right_padded(torch.tensor([[0, 1, 1]]))
    (True, False)
    """
    m = attention_mask.bool()
    return bool((m[:, 1:] <= m[:, :-1]).all())


def gather_last(x: Tensor, attention_mask: Tensor | None) -> Tensor:
    """``x`` (B, T, ...) at each row's last real token: (B, ...). No mask: the last position."""
    if attention_mask is None:
        return x[:, -1]
    idx = last_token_index(attention_mask)  # (B,)
    return x[torch.arange(x.shape[0], device=x.device), idx]


class ScalarHead(nn.Module):
    """``Linear(dim, 1, bias=False)``: one number per hidden state (a reward or a value)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, dim))

    def reset_parameters(self, std: float, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            nn.init.normal_(self.weight, 0.0, std, generator=generator)

    def forward(self, hidden: Tensor) -> Tensor:
        return (hidden @ self.weight.t().to(hidden.dtype)).squeeze(-1).float()  # (..., C) -> (...)


class RewardModel(nn.Module):
    """A transformer backbone plus a scalar head; ``forward`` returns one reward per sequence.

    ``backbone`` is a decoder :class:`Transformer` (its vocabulary head is unused: frozen, and kept
    in the state dict so that a policy checkpoint loads unchanged). The head starts at normal(0,
    ``1/sqrt(dim+1)``) like Hugging Face's score layer, from ``seed``.
    """

    def __init__(self, backbone: Transformer, *, seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = backbone.cfg
        device = backbone.tok_embeddings.weight.device
        self.score = ScalarHead(backbone.cfg.dim).to(device)
        if not backbone.cfg.tie_embeddings:  # the vocabulary head is off the reward path: never trained
            backbone.output.weight.requires_grad_(False)
        if device.type != "meta":
            gen = torch.Generator(device=device).manual_seed(seed)
            self.score.reset_parameters(1.0 / (backbone.cfg.dim + 1) ** 0.5, gen)

    @property
    def layers(self) -> nn.ModuleList:
        """The backbone's transformer blocks (what FSDP and activation checkpointing wrap)."""
        return self.backbone.layers

    def hidden(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Final-normed hidden states (B, T, C).

        A right-padded batch runs as a plain causal batch (the fast attention kernels): real
        tokens never attend to the padding after them, so their states are the same as with
        the mask; only the padding positions differ, and nothing reads them.
        """
        if attention_mask is not None and is_right_padded(attention_mask):
            attention_mask = None
        return self.backbone(tokens, attention_mask=attention_mask, return_hidden=True)

    def values(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Scalar output at every position (B, T), fp32 (a value function for PPO)."""
        return self.score(self.hidden(tokens, attention_mask))

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Reward of each sequence (B,), fp32: the head at the last real token."""
        h = self.hidden(tokens, attention_mask)  # (B, T, C)
        return self.score(gather_last(h, attention_mask))  # (B,)


def reward_model_config(model: RewardModel) -> dict[str, Any]:
    """What a reward-model checkpoint records so that :func:`training.core.loops.reward.load_reward_model`
    can rebuild it: the backbone's model config and the head's kind."""
    return {"model": model.cfg.to_dict(), "head": {"kind": "scalar", "dim": model.cfg.dim}}
