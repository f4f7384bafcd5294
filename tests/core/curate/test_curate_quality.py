"""Gopher, C4 and FineWeb rules on hand-made cases (values computed by hand)."""

from __future__ import annotations

import pytest

from training.core.config import ConfigError
from training.core.curate import (C4Config, C4Filter, FineWebQuality, GopherQuality, GopherQualityConfig,
                                  GopherRepetition, GopherRepetitionConfig, c4_filter_text, fineweb_stats,
                                  gopher_quality_stats, gopher_repetition_stats, presets_table)
from training.core.curate.quality import dup_ngram_char_frac, top_ngram_char_frac

PROSE = ("The history of the valley is long and it is told with care by the people who have lived there. "
         "They say that the river was once wider and that the old mill stood near the bridge. "
         "Children still walk to the school along the same path, and the teachers have kept the records. ") * 2


def _doc(text: str, i: str = "x") -> dict:
    return {"id": i, "text": text}


def test_gopher_quality_stats_by_hand() -> None:
    s = gopher_quality_stats("The cat and the dog.\n- item one\n- item two...\n# tag")
    # word tokens: The cat and the dog item one item two tag -> 10 words, 32 letters
    assert s["n_words"] == 10
    assert s["mean_word_length"] == pytest.approx(32 / 10)
    assert s["bullet_lines_frac"] == pytest.approx(2 / 4)
    assert s["ellipsis_lines_frac"] == pytest.approx(1 / 4)
    assert s["stop_words"] == 3  # the, and, the
    tokens = 13  # whitespace tokens, incl. "-", "-", "#"
    assert s["hash_to_word_ratio"] == pytest.approx(1 / tokens)
    assert s["alpha_words_frac"] == pytest.approx(10 / tokens)


def test_gopher_quality_drops_with_reason_codes() -> None:
    step = GopherQuality()
    docs = [_doc(PROSE, "good"), _doc("the and of " * 5, "short"), _doc("#tag " * 60 + PROSE, "hashes"),
            _doc(" ".join(["xyzxyzxyzxyzq"] * 60) + " the the", "longwords"),
            _doc(" ".join(["alpha beta gamma delta epsilon"] * 12), "nostop")]
    r = step.process(docs)
    assert [d["id"] for d in r.kept] == ["good"]
    rules = {d.doc_id: d.rule for d in r.decisions}
    assert rules == {"short": "gopher_too_few_words", "hashes": "gopher_hash_ratio",
                     "longwords": "gopher_word_length_too_long", "nostop": "gopher_stop_words"}
    short = next(d for d in r.decisions if d.doc_id == "short")
    assert short.value == 15 and short.threshold == 50 and short.action == "drop"


def test_gopher_repetition_by_hand() -> None:
    text = "a b c\na b c\nx y z\nlonger line here"
    s = gopher_repetition_stats(text)
    assert s["dup_line_frac"] == pytest.approx(1 / 4)
    assert s["dup_line_char_frac"] == pytest.approx(5 / (5 + 5 + 5 + 16))
    words = "a b c d e a b c d e x y z a b c d e".split()
    # the 5-gram "a b c d e" repeats twice after its first occurrence: 10 of 18 one-letter words
    assert dup_ngram_char_frac(words, 5) == pytest.approx(10 / 18)
    # most common 2-gram "a b" occurs 3 times, 2 letters each: 6 / 18
    assert top_ngram_char_frac(words, 2) == pytest.approx(6 / 18)
    assert top_ngram_char_frac("a b c d".split(), 2) == 0.0  # nothing repeats
    r = GopherRepetition().process([_doc(PROSE.split(". ")[0] + ".", "ok"), _doc("\n".join(["same line"] * 10), "rep")])
    assert [d["id"] for d in r.kept] == ["ok"]
    assert r.decisions[0].rule == "gopher_rep_dup_line_frac" and r.decisions[0].value == pytest.approx(0.9)


def test_real_prose_passes_gopher(austen_sample: list[str]) -> None:
    docs = [_doc(t, str(i)) for i, t in enumerate(austen_sample)]
    assert len(GopherQuality().process(docs).kept) == len(docs)
    assert len(GopherRepetition().process(docs).kept) >= len(docs) - 1


def test_c4_rules() -> None:
    text = ("Welcome to our site\nThis line is a proper sentence. It has two sentences.\n"
            "Please enable JavaScript to view this page properly.\nRead our privacy policy for details.\n"
            "Another good sentence here. And one more! Is this the fifth? Yes it is [1].")
    out, reason, removed = c4_filter_text(text)
    assert reason is None
    assert removed == {"c4_no_terminal_punct_line": 1, "c4_javascript_line": 1, "c4_policy_line": 1}
    assert out == ("This line is a proper sentence. It has two sentences.\n"
                   "Another good sentence here. And one more! Is this the fifth? Yes it is.")
    assert c4_filter_text("lorem ipsum dolor sit amet.")[1][0] == "c4_lorem_ipsum"
    assert c4_filter_text("var x = {a: 1}; This is code.")[1][0] == "c4_curly_bracket"
    assert c4_filter_text("Only one sentence here.")[1] == ("c4_too_few_sentences", 1.0, 5)
    r = C4Filter().process([_doc(text, "t")])
    assert r.decisions[0].action == "modify" and r.decisions[0].value == 3
    assert C4Filter(C4Config(filter_no_terminal_punct=False)).process([_doc(text, "t")]).kept[0]["text"].startswith(
        "Welcome to our site")


def test_fineweb_rules_by_hand() -> None:
    lines = ["Menu", "Home", "About us", "Contact", "A real sentence that ends well."]
    s = fineweb_stats("\n".join(lines))
    assert s["line_punct_ratio"] == pytest.approx(1 / 5)
    assert s["short_line_ratio"] == pytest.approx(4 / 5)
    assert s["new_line_ratio"] == pytest.approx(4 / 11)
    r = FineWebQuality().process([_doc("\n".join(lines), "menu"), _doc(PROSE, "prose")])
    assert [d["id"] for d in r.kept] == ["prose"]
    assert r.decisions[0].rule == "fineweb_short_line_ratio"
    assert set(r.decisions[0].detail["rules"]) == {"fineweb_short_line_ratio", "fineweb_new_line_ratio"}


def test_presets_side_by_side() -> None:
    assert GopherRepetitionConfig.preset("datatrove").dup_line_char_frac == 0.2
    assert GopherRepetitionConfig.preset("dolma").dup_line_char_frac == 0.3
    assert GopherQualityConfig.preset("dolma").word_length_stat == "median"
    rows = {(r["rule_set"], r["setting"]): r for r in presets_table()}
    assert rows[("GopherRepetition", "dup_line_char_frac")]["differs"]
    assert not rows[("GopherQuality", "min_words")]["differs"]
    with pytest.raises(ConfigError, match="preset"):
        GopherQualityConfig.preset("nope")
    with pytest.raises(ConfigError, match="max_hash_ratio"):
        GopherQualityConfig(max_hash_ratio=2.0)
    # median vs mean word length changes the verdict on a skewed document
    skewed = " ".join(["a"] * 40 + ["extraordinarily"] * 30) + " the and"
    dolma = GopherQuality(GopherQualityConfig.preset("dolma"))
    assert GopherQuality().violations(_doc(skewed)) != dolma.violations(_doc(skewed))
