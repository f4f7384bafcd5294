"""Text helpers shared by the steps: words, lines, paragraphs, n-grams, normalization for hashing.

>>> words("Hello, world! It's 2024.")
['Hello', 'world', "It's", '2024']
>>> normalize_for_hash("  Hello,\\n WORLD!! ")
'hello world'
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_PUNCT_SPACE = re.compile(r"[^\w\s]+")
_SPACES = re.compile(r"\s+")
_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")


def words(text: str) -> list[str]:
    """Word tokens: runs of letters/digits, keeping inner apostrophes (``don't``)."""
    return _WORD.findall(text)


def whitespace_words(text: str) -> list[str]:
    """Whitespace-separated tokens, punctuation attached (the Gopher/C4 notion of a word)."""
    return text.split()


def lines(text: str) -> list[str]:
    """Non-empty lines, stripped."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def paragraphs(text: str) -> list[str]:
    """Non-empty paragraphs (blocks separated by blank lines), stripped."""
    return [p.strip() for p in _PARAGRAPH_SPLIT.split(text) if p.strip()]


def normalize_for_hash(text: str) -> str:
    """Lower-case, NFKC, punctuation removed, whitespace collapsed: the key of (near-)dedup."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCT_SPACE.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def ngram_tokens(text: str) -> list[str]:
    """Lower-cased word tokens used for shingles and decontamination n-grams."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())
