"""Byte-level BPE tokenizers: training, saving, loading and chat templates.

A :class:`StudioTokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` (Rust, parallel batch
encoding) and knows its special tokens by role (bos, eos, pad, mask, unk) and its chat template.
Saved folders are ordinary Hugging Face tokenizer folders (``tokenizer.json``,
``tokenizer_config.json`` with the ``chat_template``, ``special_tokens_map.json``), so
``transformers.AutoTokenizer.from_pretrained(folder)`` loads them and encodes identically, and
:meth:`StudioTokenizer.load` reads Hugging Face folders whose special tokens have other names
(for example SmolLM2's ``<|im_start|>`` / ``<|im_end|>`` / ``<|endoftext|>``).

>>> tok = train_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300)
>>> tok.decode(tok.encode("the cat sat"))
'the cat sat'
>>> tok.apply_chat_template([{"role": "user", "content": "Hi"}])
'<|bos|><|user|>\\nHi<|end|>\\n<|assistant|>\\n'
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from training.core.config import ConfigError

# Role -> token text of the studio's own tokenizers. The ids follow this order (pad = 0).
SPECIAL_TOKENS: dict[str, str] = {
    "pad": "<|pad|>",
    "unk": "<|unk|>",
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "mask": "<|mask|>",
    "system": "<|system|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "end": "<|end|>",  # end of a chat turn
}
CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")

# The default chat template (Jinja, rendered like transformers renders ``chat_template``).
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown chat role ' + message['role'] + ': use system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Tokens that end an assistant turn in common chat formats (used for ``stop_ids``).
_END_OF_TURN_TOKENS = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")


class TokenizerError(ValueError):
    """A tokenizer cannot be built, loaded or used as asked; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f" (hint: {hint})" if hint else ""))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    chat_template: str = DEFAULT_CHAT_TEMPLATE,
    show_progress: bool = False,
) -> "StudioTokenizer":
    """Train a byte-level BPE tokenizer (GPT-2 style pre-tokenization, lossless round trip).

    ``texts`` is streamed (any iterable, e.g. a generator over a big file). ``vocab_size`` counts
    the 256 byte tokens, the merges and the special tokens of :data:`SPECIAL_TOKENS`; pairs seen
    fewer than ``min_frequency`` times are not merged, so the result may be smaller than asked.
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ConfigError("vocab_size", f"must be an integer >= {minimum}, got {vocab_size!r}",
                          f"byte-level BPE needs 256 byte tokens + {len(SPECIAL_TOKENS)} special tokens; "
                          "8192 to 32000 is usual")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ConfigError("min_frequency", f"must be a positive integer, got {min_frequency!r}", "2 is usual")

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"], fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer)
    names = {role: SPECIAL_TOKENS[role] for role in ("bos", "eos", "pad", "mask", "unk")}
    extra = [SPECIAL_TOKENS[r] for r in (*CHAT_ROLES, "end")]
    return StudioTokenizer(tok, special_tokens=names, additional_special_tokens=extra, chat_template=chat_template)


def compression_ratio(tokenizer: "StudioTokenizer", texts: Sequence[str]) -> float:
    """Characters per token over ``texts`` (higher is better compression).

    >>> tok = train_tokenizer(["aaaa bbbb"] * 10, vocab_size=270)
    >>> compression_ratio(tok, ["aaaa bbbb"]) > 1.0
    True
    """
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(list(texts)))
    if n_tokens == 0:
        raise TokenizerError("no tokens in the given texts", "pass at least one non-empty text")
    return n_chars / n_tokens


def tokenizer_stats(tokenizer: "StudioTokenizer", texts: Sequence[str], *, top_k: int = 20) -> dict[str, Any]:
    """Coverage and compression of ``tokenizer`` on ``texts`` (for the tokenizer page and reports).

    Keys: ``documents``, ``chars``, ``tokens``, ``chars_per_token``, ``tokens_per_document``,
    ``vocab_size``, ``vocab_used`` (distinct ids seen), ``vocab_used_fraction`` and ``top_tokens``
    (``[{"id", "token", "text", "count"}]``, most frequent first).

    >>> tok = train_tokenizer(["to be or not to be"] * 10, vocab_size=280)
    >>> s = tokenizer_stats(tok, ["to be or not to be"], top_k=1)
    >>> s["tokens"], s["top_tokens"][0]["text"]
    (6, ' be')
    """
    counts: Counter[int] = Counter()
    n_chars = 0
    for text, ids in zip(texts, tokenizer.encode_batch(list(texts))):
        n_chars += len(text)
        counts.update(ids)
    n_tokens = sum(counts.values())
    if n_tokens == 0:
        raise TokenizerError("no tokens in the given texts", "pass at least one non-empty text")
    top = [{"id": i, "token": tokenizer.id_to_token(i), "text": tokenizer.decode([i]), "count": c}
           for i, c in counts.most_common(top_k)]
    return {
        "documents": len(texts),
        "chars": n_chars,
        "tokens": n_tokens,
        "chars_per_token": n_chars / n_tokens,
        "tokens_per_document": n_tokens / max(1, len(texts)),
        "vocab_size": tokenizer.vocab_size,
        "vocab_used": len(counts),
        "vocab_used_fraction": len(counts) / tokenizer.vocab_size,
        "top_tokens": top,
    }


# --------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------

class StudioTokenizer:
    """A ``tokenizers.Tokenizer`` plus its special-token roles and chat template.

    Attributes: ``vocab_size`` (with added tokens), ``bos_id``, ``eos_id``, ``pad_id`` (falls back to
    eos when the folder has no pad token), ``mask_id`` and ``unk_id`` (``None`` when absent),
    ``special_ids`` (every special added token), ``stop_ids`` (eos and end-of-turn tokens).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        special_tokens: dict[str, str | None],
        additional_special_tokens: Sequence[str] = (),
        chat_template: str | None = None,
        model_max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.special_tokens: dict[str, str | None] = {
            role: special_tokens.get(role) for role in ("bos", "eos", "pad", "mask", "unk")
        }
        self.additional_special_tokens = list(additional_special_tokens)
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        if self.special_tokens["eos"] is None:
            raise TokenizerError("the tokenizer has no eos token",
                                 "set eos_token in tokenizer_config.json; documents are separated by eos")
        self.eos_id: int = self._require_id(self.special_tokens["eos"], "eos")
        self.bos_id: int | None = self._optional_id(self.special_tokens["bos"], "bos")
        self.mask_id: int | None = self._optional_id(self.special_tokens["mask"], "mask")
        self.unk_id: int | None = self._optional_id(self.special_tokens["unk"], "unk")
        pad = self._optional_id(self.special_tokens["pad"], "pad")
        self.pad_id: int = self.eos_id if pad is None else pad
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        added = tokenizer.get_added_tokens_decoder()  # {id: AddedToken}
        self.special_ids: set[int] = {i for i, t in added.items() if t.special}
        self.special_ids |= {i for i in (self.bos_id, self.eos_id, self.pad_id, self.mask_id, self.unk_id)
                             if i is not None}
        stops = [self.eos_id] + [tokenizer.token_to_id(t) for t in _END_OF_TURN_TOKENS]
        self.stop_ids: list[int] = sorted({i for i in stops if i is not None})

    def _optional_id(self, token: str | None, role: str) -> int | None:
        return None if token is None else self._require_id(token, role)

    def _require_id(self, token: str, role: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise TokenizerError(f"{role} token {token!r} is not in the vocabulary",
                                 "fix tokenizer_config.json or special_tokens_map.json")
        return i

    def __repr__(self) -> str:
        return (f"StudioTokenizer(vocab_size={self.vocab_size}, bos={self.special_tokens['bos']!r}, "
                f"eos={self.special_tokens['eos']!r}, pad_id={self.pad_id}, mask_id={self.mask_id})")

    def __len__(self) -> int:
        return self.vocab_size

    # ---- encoding --------------------------------------------------------------------------

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("this tokenizer has no bos token", "call encode(..., add_bos=False)")
            ids = [self.bos_id, *ids]
        if add_eos:
            ids = [*ids, self.eos_id]
        return ids

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (``<|eos|>``) become their ids."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, add_bos, add_eos)

    def encode_batch(self, texts: list[str], *, add_bos: bool = False, add_eos: bool = False,
                     split_special_tokens: bool = False) -> list[list[int]]:
        """Encode many texts at once; the Rust side spreads the work over all cores.

        ``split_special_tokens=True`` encodes special-token text found in raw documents as plain
        text (so a web page containing ``<|eos|>`` cannot inject an end of document).
        """
        previous = self.tokenizer.encode_special_tokens
        self.tokenizer.encode_special_tokens = split_special_tokens
        try:
            encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        finally:
            self.tokenizer.encode_special_tokens = previous
        return [self._wrap(e.ids, add_bos, add_eos) for e in encs]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (byte-level: ``decode(encode(x)) == x`` for any string)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.tokenizer.id_to_token(int(i))

    # ---- chat ------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """Render ``messages`` ([{"role", "content"}]) with the Jinja chat template, as transformers does.

        The template sees ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``,
        ``pad_token``, ``unk_token``, ``mask_token`` and any ``extra`` keyword.
        """
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template",
                                 "set chat_template in tokenizer_config.json, or assign tokenizer.chat_template")
        template = _compile_template(self.chat_template)
        context = {f"{role}_token": tok for role, tok in self.special_tokens.items()}
        context.update(extra)
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **context)

    def encode_chat(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat (the template already contains the special tokens)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt))

    # ---- identity and files ----------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """Short sha256 of the tokenizer (vocab, merges, pipeline, specials): shards record it."""
        h = hashlib.sha256(self.tokenizer.to_str().encode())
        h.update(json.dumps(self.special_tokens, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` (with ``chat_template``) and
        ``special_tokens_map.json`` into ``folder`` (each file replaced atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        specials = {f"{role}_token": tok for role, tok in self.special_tokens.items() if tok is not None}
        special_map: dict[str, Any] = dict(specials)
        if self.additional_special_tokens:
            special_map["additional_special_tokens"] = list(self.additional_special_tokens)
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_map,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        if self.chat_template:
            config["chat_template"] = self.chat_template
        _atomic_write(folder / "tokenizer.json", self.tokenizer.to_str(pretty=True))
        _atomic_write(folder / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
        _atomic_write(folder / "special_tokens_map.json", json.dumps(special_map, indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, folder: str | Path) -> "StudioTokenizer":
        """Load a folder written by :meth:`save` or any Hugging Face tokenizer folder with a
        ``tokenizer.json``; special-token roles come from ``tokenizer_config.json`` then
        ``special_tokens_map.json``; the chat template from ``tokenizer_config.json`` or
        ``chat_template.jinja``."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"no tokenizer.json in {folder}",
                                 "train one with `python -m training.core.cli tokenizer`, or point to a "
                                 "Hugging Face tokenizer folder")
        tok = Tokenizer.from_file(str(path))
        config = _read_json(folder / "tokenizer_config.json")
        special_map = _read_json(folder / "special_tokens_map.json")
        roles: dict[str, str | None] = {}
        for role in ("bos", "eos", "pad", "mask", "unk"):
            key = f"{role}_token"
            value = config.get(key) if config.get(key) is not None else special_map.get(key)
            roles[role] = _token_content(value)
        if roles["eos"] is None:  # e.g. a GPT-2 style folder with only tokenizer.json
            roles["eos"] = next((t for t in ("<|endoftext|>", "</s>", "<eos>") if tok.token_to_id(t) is not None),
                                None)
        extra_raw = (config.get("additional_special_tokens") or config.get("extra_special_tokens")
                     or special_map.get("additional_special_tokens") or [])
        if isinstance(extra_raw, dict):  # transformers 5 may store named extras: {"name": token}
            extra_raw = list(extra_raw.values())
        extra = [c for c in (_token_content(t) for t in extra_raw) if c is not None]
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = folder / "chat_template.jinja"
        if not template and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        max_len = config.get("model_max_length")
        max_len = int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e12 else None
        return cls(tok, special_tokens=roles, additional_special_tokens=extra, chat_template=template or None,
                   model_max_length=max_len)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def _token_content(value: Any) -> str | None:
    """Special tokens are stored as strings or as AddedToken dicts ({"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@lru_cache(maxsize=16)
def _compile_template(source: str) -> Any:
    """Compile a chat template in the same sandboxed Jinja environment transformers uses."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)
