"""Preference records → token pairs → padded chosen/rejected batches (reward models, DPO).

Records are TRL preference records as ``labeling/export.py`` writes them:

- standard: ``{"prompt": str, "chosen": str, "rejected": str[, "margin": float]}``; the text is
  ``prompt + answer`` followed by the eos token (as TRL's ``RewardTrainer`` does);
- conversational: ``prompt`` / ``chosen`` / ``rejected`` are lists of ``{"role", "content"}``
  messages, rendered with the tokenizer's chat template (the answer is what the template adds
  after the prompt's generation header, end-of-turn token included);
- an implicit prompt (no ``prompt`` key): the whole ``chosen`` / ``rejected`` text or
  conversation is the answer.

:func:`tokenize_pair` keeps the prompt and the answer apart (DPO scores the answer only).
:func:`collate_pairs` pads a list of pairs into one right-padded batch of ``2B`` rows, the
``B`` chosen rows first, then the ``B`` rejected rows, with ``attention_mask`` and
``completion_mask`` (1 on answer tokens).

>>> from training.core.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["good answer bad answer question"] * 20, vocab_size=300)
>>> pair = tokenize_pair({"prompt": "question ", "chosen": "good answer", "rejected": "bad"}, tok, max_seq_len=64)
>>> batch = collate_pairs([pair], pad_id=tok.pad_id)
>>> batch["input_ids"].shape[0], batch["completion_mask"][1].sum().item() == len(pair.rejected)
(2, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from training.core.tokenizer import StudioTokenizer, TokenizerError

__all__ = ["PreferencePair", "tokenize_pair", "tokenize_pairs", "collate_pairs", "is_conversational"]

Record = dict[str, Any]


@dataclass(frozen=True)
class PreferencePair:
    """Token ids of one pair: shared ``prompt``, ``chosen`` and ``rejected`` answers, and ``margin``."""

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    margin: float = 0.0


def is_conversational(record: Record) -> bool:
    """True when the record's answers are message lists (TRL's conversational format)."""
    return isinstance(record.get("chosen"), list)


def _render_answer(tok: StudioTokenizer, prompt: list[dict[str, Any]], answer: list[dict[str, Any]]) -> tuple[str, str]:
    """(prompt text with the generation header, answer text) through the chat template."""
    if not prompt:
        return "", tok.apply_chat_template(answer, add_generation_prompt=False)
    head = tok.apply_chat_template(prompt, add_generation_prompt=True)
    full = tok.apply_chat_template(prompt + answer, add_generation_prompt=False)
    if not full.startswith(head):  # templates that rewrite earlier turns: fall back to the bare prompt
        head = tok.apply_chat_template(prompt, add_generation_prompt=False)
        if not full.startswith(head):
            raise TokenizerError("the chat template renders the prompt differently once an answer follows",
                                 "use a tokenizer whose chat template extends the prompt's rendering")
    return head, full[len(head):]


def _fit(prompt: list[int], answer: list[int], max_seq_len: int, max_prompt_len: int | None
         ) -> tuple[list[int], list[int]]:
    """Cut the prompt to its last ``max_prompt_len`` tokens, then make prompt + answer fit ``max_seq_len``
    (the prompt loses its start first, down to a quarter of the budget; then the answer its end)."""
    if max_prompt_len is not None and len(prompt) > max_prompt_len:
        prompt = prompt[len(prompt) - max_prompt_len:]
    over = len(prompt) + len(answer) - max_seq_len
    if over > 0:
        keep = max(min(len(prompt), max_seq_len // 4), len(prompt) - over)
        prompt = prompt[len(prompt) - keep:] if keep else []
        answer = answer[: max_seq_len - len(prompt)]
    return prompt, answer


def tokenize_pair(record: Record, tokenizer: StudioTokenizer, *, max_seq_len: int,
                  max_prompt_len: int | None = None, use_margin: bool = True) -> PreferencePair:
    """One preference record as token ids (see the module docstring for the formats).

    Raises ``ValueError`` with the reason when the record is not a preference record.
    """
    if "chosen" not in record or "rejected" not in record:
        raise ValueError(f"a preference record needs 'chosen' and 'rejected', got keys {sorted(record)}")
    margin = float(record.get("margin") or 0.0) if use_margin else 0.0
    if is_conversational(record):
        prompt_msgs = record.get("prompt") or []
        if isinstance(prompt_msgs, str):
            prompt_msgs = [{"role": "user", "content": prompt_msgs}]
        if not isinstance(record["rejected"], list):
            raise ValueError("'chosen' is a message list but 'rejected' is not")
        head, chosen_text = _render_answer(tokenizer, prompt_msgs, record["chosen"])
        _, rejected_text = _render_answer(tokenizer, prompt_msgs, record["rejected"])
        prompt_ids = tokenizer.encode(head) if head else []
        chosen_ids, rejected_ids = tokenizer.encode(chosen_text), tokenizer.encode(rejected_text)
    else:
        prompt_text = record.get("prompt") or ""
        for key in ("chosen", "rejected"):
            if not isinstance(record[key], str):
                raise ValueError(f"'{key}' must be a string (standard format) or a message list (conversational)")
        if not isinstance(prompt_text, str):
            raise ValueError("'prompt' must be a string when the answers are strings")
        bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        prompt_ids = bos + (tokenizer.encode(prompt_text) if prompt_text else [])
        chosen_ids = tokenizer.encode(record["chosen"]) + [tokenizer.eos_id]
        rejected_ids = tokenizer.encode(record["rejected"]) + [tokenizer.eos_id]
    p1, c = _fit(prompt_ids, chosen_ids, max_seq_len, max_prompt_len)
    p2, r = _fit(prompt_ids, rejected_ids, max_seq_len, max_prompt_len)
    prompt = p1 if len(p1) <= len(p2) else p2  # one shared prompt: the shorter cut
    c, r = _fit(prompt, c, max_seq_len, None)[1], _fit(prompt, r, max_seq_len, None)[1]
    if not c or not r:
        raise ValueError("an answer is empty after truncation; raise max_seq_len or shorten the prompt")
    return PreferencePair(tuple(prompt), tuple(c), tuple(r), margin)


def tokenize_pairs(records: list[Record], tokenizer: StudioTokenizer, *, max_seq_len: int,
                   max_prompt_len: int | None = None, use_margin: bool = True
                   ) -> tuple[list[PreferencePair], list[str]]:
    """Tokenize many records; returns ``(pairs, problems)`` where ``problems`` says why records were skipped."""
    from jinja2 import TemplateError  # the chat template refuses, e.g., an unknown role

    pairs: list[PreferencePair] = []
    problems: list[str] = []
    for i, rec in enumerate(records):
        try:
            pairs.append(tokenize_pair(rec, tokenizer, max_seq_len=max_seq_len, max_prompt_len=max_prompt_len,
                                       use_margin=use_margin))
        except (ValueError, TypeError, KeyError, TemplateError) as e:
            problems.append(f"record {i + 1}: {e}")
    return pairs, problems


def collate_pairs(pairs: list[PreferencePair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of ``2B`` rows: chosen rows ``[0, B)``, rejected rows ``[B, 2B)``.

    Returns ``input_ids`` (2B, T) long, ``attention_mask`` (2B, T) long, ``completion_mask``
    (2B, T) long (1 on answer tokens), ``prompt_lengths`` (2B,) and ``margin`` (B,) float.
    """
    rows = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    prompt_lens = [len(p.prompt) for p in pairs] * 2
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    comp = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (row, pl) in enumerate(zip(rows, prompt_lens)):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attn[i, : len(row)] = 1
        comp[i, pl: len(row)] = 1
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp,
            "prompt_lengths": torch.tensor(prompt_lens, dtype=torch.long),
            "margin": torch.tensor([p.margin for p in pairs], dtype=torch.float32)}
