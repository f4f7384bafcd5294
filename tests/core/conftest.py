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
