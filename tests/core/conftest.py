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
