"""HTML-to-text extraction (trafilatura) and Unicode / whitespace normalization (ftfy + NFC).

>>> normalize_text("Caf\\u00c3\\u00a9  au   lait\\r\\n\\n\\n\\nNext", NormalizeConfig())
'Café au lait\\n\\nNext'
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from training.core.curate.base import DROP, MODIFY, Decision, Doc, Step, StepConfig, StepResult, require

_HTML_HINT = re.compile(r"<\s*(html|body|div|p|span|a|table|head|br|!doctype)\b", re.I)
_INLINE_SPACE = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_LINE_EDGE_SPACE = re.compile(r" ?\n ?")
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b\ufeff]")


@dataclass(frozen=True)
class ExtractConfig(StepConfig):
    """HTML extraction. ``only_if_html``: leave documents that do not look like HTML unchanged.

    ``favor_precision`` drops more boilerplate (FineWeb's setting); ``include_tables`` /
    ``include_comments`` keep those parts; documents with fewer than ``min_chars`` extracted
    characters are dropped with rule ``empty_extraction``.
    """

    only_if_html: bool = True
    favor_precision: bool = True
    include_tables: bool = True
    include_comments: bool = False
    min_chars: int = 1

    def __post_init__(self) -> None:
        require(self.min_chars >= 0, "min_chars", "must be >= 0")


def looks_like_html(text: str) -> bool:
    """True when the text contains common HTML tags near its start."""
    return bool(_HTML_HINT.search(text[:5000]))


def html_to_text(html: str, config: ExtractConfig | None = None) -> str:
    """Main text of an HTML page (navigation, scripts and boilerplate removed) via trafilatura."""
    import trafilatura  # lazily: only HTML sources need it

    cfg = config or ExtractConfig()
    out = trafilatura.extract(html, favor_precision=cfg.favor_precision, include_tables=cfg.include_tables,
                              include_comments=cfg.include_comments, include_links=False,
                              include_images=False, deduplicate=False, fast=True)
    return out or ""


class ExtractHTML(Step):
    """Replace HTML documents' text by their extracted main text; drop pages with nothing left."""

    name = "extract"
    config_class = ExtractConfig

    def process(self, docs: list[Doc]) -> StepResult:
        cfg: ExtractConfig = self.config  # type: ignore[assignment]
        kept: list[Doc] = []
        decisions: list[Decision] = []
        for doc in docs:
            text = doc["text"]
            if cfg.only_if_html and not looks_like_html(text):
                kept.append(doc)
                continue
            out = html_to_text(text, cfg)
            if len(out) < cfg.min_chars:
                decisions.append(Decision(str(doc["id"]), self.name, "empty_extraction", DROP,
                                          value=len(out), threshold=cfg.min_chars))
                continue
            decisions.append(Decision(str(doc["id"]), self.name, "html_extracted", MODIFY,
                                      value=len(out), detail={"chars_before": len(text)}))
            kept.append({**doc, "text": out})
        return StepResult(kept, decisions)


@dataclass(frozen=True)
class NormalizeConfig(StepConfig):
    """Unicode and whitespace normalization.

    ``fix_mojibake``: repair encoding errors with ftfy (``CafÃ©`` -> ``Café``); ``form``: Unicode
    normal form (NFC keeps characters as written, NFKC also folds compatibility forms);
    ``collapse_spaces``: runs of spaces/tabs become one space; ``max_blank_lines``: at most this
    many blank lines between paragraphs; ``strip_control``: remove control and zero-width chars.
    """

    fix_mojibake: bool = True
    form: str = "NFC"
    collapse_spaces: bool = True
    max_blank_lines: int = 1
    strip_control: bool = True
    newline_normalize: bool = True

    def __post_init__(self) -> None:
        require(self.form in ("NFC", "NFKC", "NFD", "NFKD", "none"), "form",
                f"unknown normal form {self.form!r}", "use NFC, NFKC, NFD, NFKD or none")
        require(self.max_blank_lines >= 0, "max_blank_lines", "must be >= 0")


def normalize_text(text: str, config: NormalizeConfig | None = None) -> str:
    """Normalize one text (see :class:`NormalizeConfig`)."""
    cfg = config or NormalizeConfig()
    if cfg.newline_normalize:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.fix_mojibake and not text.isascii():  # mojibake needs non-ASCII characters
        import ftfy  # lazily: a pure-Python dependency of this step only

        text = ftfy.fix_text(text, normalization="NFC" if cfg.form == "none" else cfg.form,
                             uncurl_quotes=False, fix_line_breaks=False)
    if cfg.form != "none":
        text = unicodedata.normalize(cfg.form, text)
    if cfg.strip_control:
        text = _CONTROL.sub("", text)
    if cfg.collapse_spaces:  # whole-text substitutions: one regex pass instead of one per line
        text = _LINE_EDGE_SPACE.sub("\n", _INLINE_SPACE.sub(" ", text))
    if cfg.max_blank_lines >= 0:
        text = re.sub(r"\n{%d,}" % (cfg.max_blank_lines + 2), "\n" * (cfg.max_blank_lines + 1), text)
    return text.strip()


class Normalize(Step):
    """Normalize every document's text; a change is recorded as rule ``normalized``."""

    name = "normalize"
    config_class = NormalizeConfig

    def process(self, docs: list[Doc]) -> StepResult:
        kept: list[Doc] = []
        decisions: list[Decision] = []
        for doc in docs:
            out = normalize_text(doc["text"], self.config)  # type: ignore[arg-type]
            if out != doc["text"]:
                decisions.append(Decision(str(doc["id"]), self.name, "normalized", MODIFY,
                                          value=len(doc["text"]) - len(out),
                                          detail={"chars_before": len(doc["text"]), "chars_after": len(out)}))
                doc = {**doc, "text": out}
            kept.append(doc)
        return StepResult(kept, decisions)
