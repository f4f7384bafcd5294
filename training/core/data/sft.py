"""Chat records → token ids with an assistant-only loss mask → packed rows (supervised fine-tuning).

Records are ``{"messages": [{"role", "content"}, …]}`` (what ``labeling/export.py``
``sft_records`` writes) or ``{"prompt", "completion"}`` (strings, or message lists). Both are
rendered with the tokenizer's chat template. :func:`tokenize_chat` renders the conversation one
turn at a time, so that it knows which characters each assistant turn adds (its content and
end-of-turn token, after the ``assistant`` header the template writes), and encodes the text
segment by segment: ``mask[i]`` is True exactly on tokens an assistant turn produced.

:func:`pack_rows` turns examples into rows of ``seq_len + 1`` tokens (``inputs = row[:-1]``,
``targets = row[1:]`` with -100 where not scored). With packing each row holds several whole
examples one after the other (fewer padding tokens; an example attends to the earlier ones in
its row, as in TRL's packed datasets); without, one example per row. Examples longer than a
row lose their start (the answer at the end is kept).

>>> from training.core.tokenizer import train_tokenizer
>>> tok = train_tokenizer(["hello there how are you fine thanks"] * 20, vocab_size=300)
>>> ids, mask = tokenize_chat([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "fine"}], tok)
>>> tok.decode([i for i, m in zip(ids, mask) if m])
'fine<|end|>\\n'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from training.core.losses import IGNORE_INDEX
from training.core.tokenizer import StudioTokenizer, TokenizerError

__all__ = ["SFTExample", "record_messages", "tokenize_chat", "tokenize_examples", "pack_rows", "collate_rows"]

Record = dict[str, Any]
Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class SFTExample:
    """Token ids of one conversation and the loss mask (True where the token is scored)."""

    ids: tuple[int, ...]
    mask: tuple[bool, ...]


def record_messages(record: Record) -> Messages:
    """The conversation of an SFT record: ``messages``, or ``prompt`` + ``completion`` turned into turns."""
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list of {role, content}")
    elif "prompt" in record and "completion" in record:
        p, c = record["prompt"], record["completion"]
        prompt = [{"role": "user", "content": p}] if isinstance(p, str) else p
        completion = [{"role": "assistant", "content": c}] if isinstance(c, str) else c
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise ValueError("'prompt' and 'completion' must be strings or message lists")
        msgs = [*prompt, *completion]
    else:
        raise ValueError(f"an SFT record needs 'messages' or 'prompt' + 'completion', got keys {sorted(record)}")
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError("every message needs a string 'role' and 'content'")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError("the conversation has no assistant turn to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def tokenize_chat(messages: Messages, tokenizer: StudioTokenizer, *, assistant_only_loss: bool = True
                  ) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and a mask that is True on assistant-turn tokens.

    With ``assistant_only_loss=False`` the mask is True everywhere.
    """
    render = tokenizer.apply_chat_template
    full = render(messages, add_generation_prompt=False)
    cuts: list[tuple[int, int]] = []  # (start, end) character spans of the assistant turns
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], add_generation_prompt=True)) if i else 0
        end_text = render(messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(end_text) or start > len(end_text):
            raise TokenizerError("the chat template renders earlier turns differently once later turns follow",
                                 "use a tokenizer whose chat template renders each turn after the previous ones")
        cuts.append((start, len(end_text)))
    ids: list[int] = []
    mask: list[bool] = []
    pos = 0
    for start, end in cuts:
        for text, scored in ((full[pos:start], False), (full[start:end], True)):
            if text:
                piece = tokenizer.encode(text)
                ids += piece
                mask += [scored or not assistant_only_loss] * len(piece)
        pos = end
    if pos < len(full):
        piece = tokenizer.encode(full[pos:])
        ids += piece
        mask += [not assistant_only_loss] * len(piece)
    return ids, mask


def tokenize_examples(records: list[Record], tokenizer: StudioTokenizer, *, assistant_only_loss: bool = True
                      ) -> tuple[list[SFTExample], list[str]]:
    """Tokenize many records; returns ``(examples, problems)`` (why records were skipped)."""
    from jinja2 import TemplateError  # the chat template refuses, e.g., an unknown role

    examples: list[SFTExample] = []
    problems: list[str] = []
    for i, rec in enumerate(records):
        try:
            ids, mask = tokenize_chat(record_messages(rec), tokenizer, assistant_only_loss=assistant_only_loss)
        except (ValueError, TypeError, TemplateError) as e:
            problems.append(f"record {i + 1}: {getattr(e, 'message', e)}")
            continue
        examples.append(SFTExample(tuple(ids), tuple(mask)))
    return examples, problems


def pack_rows(examples: list[SFTExample], seq_len: int, *, packing: bool = True) -> list[SFTExample]:
    """Rows of at most ``seq_len + 1`` tokens, in the examples' order (not padded).

    With ``packing``, examples are appended to the current row while they fit (whole examples
    only). An example longer than a row loses its start (its last turns, where the answer to learn
    is, are kept) and gets a row of its own. Rows whose mask is all False (nothing to learn) are
    dropped.
    """
    cap = seq_len + 1
    rows: list[SFTExample] = []
    cur_ids: list[int] = []
    cur_mask: list[bool] = []
    for ex in examples:
        ids, mask = list(ex.ids[-cap:]), list(ex.mask[-cap:])  # too long: keep the end (the answer)
        if packing and cur_ids and len(cur_ids) + len(ids) <= cap:
            cur_ids += ids
            cur_mask += mask
            continue
        if cur_ids:
            rows.append(SFTExample(tuple(cur_ids), tuple(cur_mask)))
        cur_ids, cur_mask = ids, mask
        if not packing:
            rows.append(SFTExample(tuple(cur_ids), tuple(cur_mask)))
            cur_ids, cur_mask = [], []
    if cur_ids:
        rows.append(SFTExample(tuple(cur_ids), tuple(cur_mask)))
    return [r for r in rows if any(r.mask[1:])]


def collate_rows(rows: list[SFTExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` (B, T) for rows of up to T + 1 tokens, right-padded to the longest.

    ``targets[b, t] = row[t + 1]`` where that token is scored, else -100 (padding included).
    Right padding needs no attention mask: real tokens never attend to the padding after them.
    """
    T = max(len(r.ids) for r in rows) - 1
    inputs = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    for b, r in enumerate(rows):
        ids = torch.tensor(r.ids, dtype=torch.long)
        mask = torch.tensor(r.mask, dtype=torch.bool)
        n = len(r.ids) - 1
        inputs[b, :n] = ids[:-1]
        targets[b, :n] = torch.where(mask[1:], ids[1:], torch.full_like(ids[1:], IGNORE_INDEX))
    return inputs, targets
