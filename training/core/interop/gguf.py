"""GGUF (llama.cpp) import and export for Llama-architecture models.

Import: tensors are dequantized to fp32 with ``gguf.quants.dequantize`` (Q4_0, Q4_1, Q8_0, K-quants,
F16, BF16, F32, ...), llama.cpp's rotary permutation of the q/k projections is undone exactly
(see :func:`unpermute_qk`), and the byte-level BPE tokenizer stored in the metadata
(``tokenizer.ggml.tokens`` / ``merges`` / ``token_type``, bos/eos/pad ids and
``tokenizer.chat_template``) is rebuilt as a :class:`~training.core.tokenizer.StudioTokenizer`.

Export: a ``llama`` GGUF with F32 or F16 weights and the tokenizer, which
``gguf.GGUFReader`` (and llama.cpp) read back.

>>> q = torch.arange(24.0).reshape(8, 3)  # 2 heads of size 4, 3 input features
>>> torch.equal(unpermute_qk(permute_qk(q, 2), 2), q)
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from training.core.config import ConfigError, ModelConfig
from training.core.interop.common import InteropError, atomic_file, model_from_state_dict
from training.core.model import Transformer

if TYPE_CHECKING:
    from training.core.tokenizer import StudioTokenizer

__all__ = ["import_gguf", "export_gguf", "read_gguf", "read_gguf_config", "tokenizer_from_gguf", "permute_qk", "unpermute_qk"]

# GGUF tensor name -> our name ("{i}": layer index)
_LAYER = {
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "attn_norm.weight": "attention_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
_TOP = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
        "output.weight": "output.weight"}

# llama.cpp pre-tokenizer names whose splitting we reproduce
_DIGIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "exaone", "gpt3-finnish"}  # digits one by one
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3"}


def gguf_names(cfg: ModelConfig) -> dict[str, str]:
    """GGUF tensor name -> our parameter name."""
    names = dict(_TOP)
    for i in range(cfg.n_layers):
        for theirs, ours in _LAYER.items():
            names[f"blk.{i}.{theirs}"] = f"layers.{i}.{ours}"
    return names


# --------------------------------------------------------------------------------------------
# Pure functions: llama.cpp's q/k permutation
# --------------------------------------------------------------------------------------------

def permute_qk(w: Tensor, n_heads: int) -> Tensor:
    """llama.cpp's ``permute`` of a q or k projection ``(n_heads * D, in)``: within each head the
    "rotate half" layout (first half pairs with second half) becomes interleaved pairs."""
    out_dim = w.shape[0]
    return w.reshape(n_heads, 2, out_dim // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: Tensor, n_heads: int) -> Tensor:
    """Inverse of :func:`permute_qk`: interleaved pairs back to Hugging Face's "rotate half" layout."""
    out_dim = w.shape[0]
    return w.reshape(n_heads, out_dim // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------

@dataclass
class GGUFTensor:
    """One tensor of a GGUF file: ``shape`` in GGUF order (innermost first), ``data`` a numpy view
    of the file (float arrays for F32/F16, rows of bytes for quantized types)."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass
class GGUFFile:
    """The metadata (plain Python values) and tensors of a GGUF file, read by :func:`read_gguf`."""

    fields: dict[str, Any]
    tensors: list[GGUFTensor]


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP_SCALARS = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
               7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


def read_gguf(path: str | Path) -> GGUFFile:
    """Read a GGUF (v2/v3, little-endian) file: metadata into Python values, tensors as memory-mapped
    numpy views. Same content as ``gguf.GGUFReader`` (tested), but string arrays (a 50k-token
    vocabulary and its merges) are decoded in one pass, which makes it ~20x faster to open."""
    import struct

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    raw = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(raw)
    if bytes(buf[:4]) != b"GGUF":
        raise InteropError(f"{path} is not a GGUF file (bad magic)", "pass a .gguf file written by llama.cpp or gguf")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise InteropError(f"GGUF version {version} is not supported", "convert the file with a recent llama.cpp")
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        return str(buf[pos - n:pos], "utf-8")

    def value(vtype: int) -> Any:
        nonlocal pos
        if vtype == 8:
            return string()
        if vtype == 9:
            item, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item in _NP_SCALARS:
                array = np.frombuffer(buf, dtype=_NP_SCALARS[item], count=count, offset=pos)
                pos += array.nbytes
                return array.tolist()
            return [value(item) for _ in range(count)]
        fmt = _SCALARS[vtype]
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        fields[key] = value(vtype)
    infos = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        ttype, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        infos.append((name, tuple(int(d) for d in dims), GGMLQuantizationType(ttype), int(offset)))
    align = int(fields.get("general.alignment", 32))
    start = (pos + align - 1) // align * align
    tensors = []
    for name, dims, ttype, offset in infos:
        n = int(np.prod(dims))
        np_shape = tuple(reversed(dims))
        block, type_size = GGML_QUANT_SIZES[ttype]
        if ttype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            dtype, count = (np.float32 if ttype == GGMLQuantizationType.F32 else np.float16), n
        else:
            dtype, count = np.uint8, n * type_size // block
            np_shape = quant_shape_to_byte_shape(np_shape, ttype)
        data = np.frombuffer(buf, dtype=dtype, count=count, offset=start + offset).reshape(np_shape)
        tensors.append(GGUFTensor(name, ttype, dims, data))
    return GGUFFile(fields, tensors)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents() if hasattr(field, "contents") else field  # gguf.GGUFReader or GGUFFile


def _f32(value: float) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def read_gguf_config(reader: Any) -> ModelConfig:
    """Our :class:`ModelConfig` from the ``llama.*`` metadata of an open ``gguf.GGUFReader``."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise InteropError(f"GGUF architecture {arch!r} is not supported", "import 'llama' architecture GGUF files")
    g = lambda key, default=None: _field(reader, f"llama.{key}", default)  # noqa: E731
    names = {t.name for t in reader.tensors}
    dim, n_heads = int(g("embedding_length")), int(g("attention.head_count"))
    rope_dim = g("rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != dim // n_heads:
        raise InteropError(f"partial rotary (rope.dimension_count={rope_dim}) is not supported",
                           "only models that rotate the whole head")
    if _field(reader, "llama.rope.scaling.type", "none") not in ("none", None):
        raise InteropError("rope scaling is not supported", "only plain rotary embeddings")
    vocab = g("vocab_size")
    if vocab is None:
        vocab = len(_field(reader, "tokenizer.ggml.tokens"))
    try:
        return ModelConfig(
            vocab_size=int(vocab), dim=dim, n_layers=int(g("block_count")), n_heads=n_heads,
            n_kv_heads=int(g("attention.head_count_kv", n_heads)), ffn_dim=int(g("feed_forward_length")),
            max_seq_len=int(g("context_length", 2048)), rope_theta=_f32(g("rope.freq_base", 10000.0)),
            norm_eps=_f32(g("attention.layer_norm_rms_epsilon", 1e-5)),
            tie_embeddings="output.weight" not in names, mode="decoder",
        )
    except (TypeError, ConfigError) as e:
        raise InteropError(f"the GGUF metadata does not describe a usable model: {e}",
                           "check the llama.* keys of the file") from e


def _dequantize(tensor: Any) -> Tensor:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        array = np.array(tensor.data, dtype=np.float32)  # a copy: the reader's memmap is read-only
    else:
        array = dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(s) for s in reversed(tensor.shape))  # GGUF lists dims innermost first
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).reshape(shape))


def _byte_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _merges_from_scores(tokens: list[str], scores: list[float], usable: set[str]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a piece into two pieces of
    the vocabulary is a merge, ranked by the merged piece's score (highest first), which is the
    order in which llama.cpp's SentencePiece tokenizer applies them; ties are ordered as in
    transformers' ``generate_merges`` (longer left half first, then the vocabulary order)."""
    index = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[float, int, int, str, str]] = []
    for piece, score in zip(tokens, scores):
        if piece not in usable or len(piece) < 2:
            continue
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in usable and piece[k:] in usable]
        local.sort(key=lambda pair: (index[pair[0]], index[pair[1]]))
        found.extend((-score, len(a), len(b), a, b) for a, b in local)
    found.sort(key=lambda m: (m[0], -m[1], -m[2]))  # then longer left halves; stable: vocabulary order
    return [(a, b) for _, _, _, a, b in found]


def _role_token(reader: Any, tokens: list[str], key: str) -> str | None:
    """The token named by the file's ``tokenizer.ggml.<key>_token_id``, when set and in range."""
    i = _field(reader, f"tokenizer.ggml.{key}_token_id")
    return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None


def _studio_tokenizer(reader: Any, tok: Any, tokens: list[str], control: list[str],
                      unk: str | None) -> "StudioTokenizer":
    """Wrap a rebuilt ``tokenizers.Tokenizer`` with the file's special tokens, chat template and context."""
    from training.core.tokenizer import StudioTokenizer

    specials = {"bos": _role_token(reader, tokens, "bos"), "eos": _role_token(reader, tokens, "eos"),
                "pad": _role_token(reader, tokens, "padding"), "unk": unk, "mask": None}
    return StudioTokenizer(tok, special_tokens=specials, additional_special_tokens=control,
                           chat_template=_field(reader, "tokenizer.chat_template"),
                           model_max_length=_field(reader, "llama.context_length"))


def add_llama_hparams(writer: Any, cfg: Any) -> None:
    """Write ``cfg``'s shape as the ``llama.*`` hyper-parameters of a ``gguf.GGUFWriter``."""
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)


def _sentencepiece_tokenizer(reader: Any, tokens: list[str], types: list[int]) -> "StudioTokenizer":
    """Rebuild a SentencePiece (``tokenizer.ggml.model == "llama"``) tokenizer: BPE over the pieces
    (spaces spelled ``▁``) with merges from the file or from the scores, ``<0xXX>`` byte fallback,
    a ``▁`` prefixed to the text when ``add_space_prefix`` (the default), and the matching decoder.
    No splitting before the merges, like llama.cpp's tokenizer.
    Unknown and control tokens become special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    scores: list[float] = _field(reader, "tokenizer.ggml.scores") or [-float(i) for i in range(len(tokens))]
    if len(scores) != len(tokens) or len(types) != len(tokens):
        raise InteropError("the GGUF tokenizer's tokens, scores and token types differ in length",
                           "the file's tokenizer metadata is damaged")
    vocab = {t: i for i, t in enumerate(tokens)}
    special = {t for t, ty in zip(tokens, types) if ty in (2, 3)}  # 2: UNKNOWN, 3: CONTROL
    user = [t for t, ty in zip(tokens, types) if ty == 4]  # 4: USER_DEFINED
    merges_field: list[str] | None = _field(reader, "tokenizer.ggml.merges")
    if merges_field:
        merges = [tuple(m.split(" ", 1)) for m in merges_field]
    else:  # the usual case: pieces that merge are the NORMAL ones (1) and unused (5), never bytes or specials
        usable = {t for t, ty in zip(tokens, types) if ty in (1, 5)}
        merges = _merges_from_scores(tokens, scores, usable)
    unk_id = _field(reader, "tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None and 0 <= int(unk_id) < len(tokens) else None
    has_bytes = all(f"<0x{b:02X}>" in vocab for b in range(256))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=has_bytes))
    prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
    # spaces become ▁ and the text (each span between special tokens) gets one ▁ in front, always, as
    # in sentencepiece and llama.cpp (a Metaspace pre-tokenizer would skip it when the text already
    # starts with a space, and " x" would decode to "x")
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend("\u2581")] if prefix else [])
                                          + [normalizers.Replace(" ", "\u2581")])
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    control = [t for t in tokens if t in special]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    if user:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    return _studio_tokenizer(reader, tok, tokens, control, unk)


def tokenizer_from_gguf(reader: Any) -> "StudioTokenizer":
    """Rebuild the tokenizer stored in a GGUF file's metadata: byte-level BPE (``gpt2``) or
    SentencePiece (``llama``)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = _field(reader, "tokenizer.ggml.model")
    if kind == "llama":
        return _sentencepiece_tokenizer(reader, _field(reader, "tokenizer.ggml.tokens"),
                                        _field(reader, "tokenizer.ggml.token_type")
                                        or [1] * len(_field(reader, "tokenizer.ggml.tokens")))
    if kind != "gpt2":
        raise InteropError(f"GGUF tokenizer type {kind!r} is not supported",
                           "byte-level BPE ('gpt2') and SentencePiece ('llama') tokenizers are rebuilt; import "
                           "the Hugging Face folder of this model instead")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    merges: list[str] = _field(reader, "tokenizer.ggml.merges") or []
    types: list[int] = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    byte_chars = _byte_unicode()
    alphabet = set(byte_chars.values())
    spelled = [t if set(t) <= alphabet else "".join(byte_chars[b] for b in t.encode("utf-8")) for t in tokens]
    vocab = {t: i for i, t in enumerate(spelled)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in _LLAMA3_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:  # "default", "gpt-2" and others: GPT-2's split
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, ty in zip(tokens, types) if ty == 3 and set(t) <= alphabet]  # 3: CONTROL
    user = [t for t, ty in zip(tokens, types) if ty == 4 and t in vocab]  # 4: USER_DEFINED
    if control:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    if user:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    return _studio_tokenizer(reader, tok, tokens, control, _role_token(reader, tokens, "unknown"))


def import_gguf(path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                with_tokenizer: bool = True) -> tuple[Transformer, "StudioTokenizer | None"]:
    """Load a ``llama`` GGUF file into our :class:`Transformer` (weights dequantized) and its tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise InteropError(f"no GGUF file at {path}", "check the path (a .gguf file)")
    reader = read_gguf(path)
    cfg = read_gguf_config(reader)
    names = gguf_names(cfg)
    state: dict[str, Tensor] = {}
    for tensor in reader.tensors:
        ours = names.get(tensor.name)
        if ours is None:
            if tensor.name.startswith("rope_freqs"):
                raise InteropError("the file has rope frequency factors (Llama 3.1 rope scaling)",
                                   "only plain rotary embeddings are supported")
            raise InteropError(f"unexpected GGUF tensor {tensor.name!r}", "only plain Llama weights can be imported")
        w = _dequantize(tensor)
        if ours.endswith("attention.wq.weight"):
            w = unpermute_qk(w, cfg.n_heads)
        elif ours.endswith("attention.wk.weight"):
            w = unpermute_qk(w, cfg.kv_heads)
        state[ours] = w
    model = model_from_state_dict(cfg, state, dtype=dtype, device=device)
    tokenizer = tokenizer_from_gguf(reader) if with_tokenizer and "tokenizer.ggml.model" in reader.fields else None
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

def _tokenizer_metadata(tokenizer: "StudioTokenizer") -> dict[str, Any]:
    """Tokens, types, merges and pre-tokenizer name of a byte-level BPE StudioTokenizer."""
    data = json.loads(tokenizer.tokenizer.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise InteropError(f"tokenizer model {model.get('type')!r} cannot be written to GGUF",
                           "only byte-level BPE tokenizers are exported")
    if model.get("byte_fallback"):
        raise InteropError("SentencePiece tokenizers (imported from a 'llama' GGUF) cannot be written to GGUF",
                           "export the model without its tokenizer, or export a Hugging Face folder")
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for t, i in vocab.items():
        tokens[i] = t
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    types = [(3 if added[i]["special"] else 4) if i in added else 1 for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        pre_name = "smollm"
    elif kinds == ["Split", "ByteLevel"]:
        pre_name = "llama-bpe"
    else:
        pre_name = "gpt-2"
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre_name}


def export_gguf(model: Transformer, tokenizer: "StudioTokenizer | None", path: str | Path, *,
                dtype: torch.dtype = torch.float32, name: str = "studio-model") -> Path:
    """Write ``model`` (and ``tokenizer``) as a ``llama`` GGUF file, weights in F32 or F16.

    The q/k projections are permuted the way llama.cpp expects; norms stay F32. The file is
    written to a temporary sibling and renamed into place.
    """
    import gguf

    if dtype not in (torch.float32, torch.float16):
        raise InteropError(f"GGUF export dtype {dtype} is not supported", "use torch.float32 or torch.float16")
    cfg = model.cfg
    if cfg.mode != "decoder":
        raise InteropError("only decoder models can be exported to GGUF", "encoder models stay in studio checkpoints")
    path = Path(path)
    meta = _tokenizer_metadata(tokenizer) if tokenizer is not None else None
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="llama")
        writer.add_name(name)
        add_llama_hparams(writer, cfg)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == torch.float32 else gguf.LlamaFileType.MOSTLY_F16)
        if tokenizer is not None and meta is not None:
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(meta["pre"])
            writer.add_token_list(meta["tokens"])
            writer.add_token_types(meta["types"])
            writer.add_token_merges(meta["merges"])
            if tokenizer.bos_id is not None:
                writer.add_bos_token_id(tokenizer.bos_id)
            writer.add_eos_token_id(tokenizer.eos_id)
            writer.add_pad_token_id(tokenizer.pad_id)
            if tokenizer.unk_id is not None:
                writer.add_unk_token_id(tokenizer.unk_id)
            writer.add_add_bos_token(False)
            if tokenizer.chat_template:
                writer.add_chat_template(tokenizer.chat_template)
        state = model.state_dict()
        np_dtype = np.float32 if dtype == torch.float32 else np.float16
        for theirs, ours in gguf_names(cfg).items():
            if theirs == "output.weight" and cfg.tie_embeddings:
                continue
            w = state[ours].detach().to("cpu", torch.float32)
            if ours.endswith("attention.wq.weight"):
                w = permute_qk(w, cfg.n_heads)
            elif ours.endswith("attention.wk.weight"):
                w = permute_qk(w, cfg.kv_heads)
            array = w.contiguous().numpy()
            writer.add_tensor(theirs, array.astype(np.float32 if array.ndim == 1 else np_dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path
