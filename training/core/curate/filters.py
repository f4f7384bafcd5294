"""Model-based filters: offline language identification (py3langid) and profanity/toxicity
scoring (alt-profanity-check's linear SVM over TF-IDF). Both models ship inside their PyPI wheels.

>>> detect_language("The quick brown fox jumps over the lazy dog and runs into the forest.")[0]
'en'
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from training.core.curate.base import DROP, Decision, Doc, Step, StepConfig, StepResult, require, require_fraction


@functools.lru_cache(maxsize=1)
def _langid_model() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier  # lazily: loads a 4.6 MB model

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str, max_chars: int = 5000) -> tuple[str, float]:
    """``(ISO 639-1 code, probability)`` of the text's language (py3langid, 97 languages)."""
    lang, prob = _langid_model().classify(text[:max_chars])
    return str(lang), float(prob)


@dataclass(frozen=True)
class LanguageConfig(StepConfig):
    """Keep documents whose detected language is in ``allowed`` with probability >= ``threshold``.

    ``threshold`` 0.65 is datatrove's ``LanguageFilter`` default. The detected language and score
    are written into each kept document's ``language`` / ``language_score`` when ``annotate``.
    """

    allowed: tuple[str, ...] = ("en",)
    threshold: float = 0.65
    annotate: bool = True
    max_chars: int = 5000

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", tuple(self.allowed))
        require(len(self.allowed) > 0, "allowed", "list at least one language code", "e.g. ['en']")
        require_fraction(self.threshold, "threshold")
        require(self.max_chars > 0, "max_chars", "must be > 0")


class LanguageFilter(Step):
    """Drop documents in other languages (rule ``language_not_allowed``, value = the score of the
    detected language, detail = the language) or detected with too little confidence
    (rule ``language_low_score``)."""

    name = "language"
    config_class = LanguageConfig

    def measure(self, doc: Doc) -> dict[str, float]:
        lang, score = detect_language(doc["text"], self.config.max_chars)  # type: ignore[attr-defined]
        allowed = lang in self.config.allowed  # type: ignore[attr-defined]
        return {"language_score": score if allowed else 0.0}

    def thresholds(self) -> dict[str, Any]:
        return {"language_score": self.config.threshold}  # type: ignore[attr-defined]

    def process(self, docs: list[Doc]) -> StepResult:
        cfg: LanguageConfig = self.config  # type: ignore[assignment]
        kept: list[Doc] = []
        decisions: list[Decision] = []
        for doc in docs:
            lang, score = detect_language(doc["text"], cfg.max_chars)
            if lang not in cfg.allowed:
                decisions.append(Decision(str(doc["id"]), self.name, "language_not_allowed", DROP,
                                          value=round(score, 4), threshold=list(cfg.allowed),
                                          detail={"language": lang}))
            elif score < cfg.threshold:
                decisions.append(Decision(str(doc["id"]), self.name, "language_low_score", DROP,
                                          value=round(score, 4), threshold=cfg.threshold, detail={"language": lang}))
            else:
                kept.append({**doc, "language": lang, "language_score": round(score, 4)} if cfg.annotate else doc)
        return StepResult(kept, decisions)


@functools.lru_cache(maxsize=1)
def _profanity_model() -> tuple[Any, Any]:
    import warnings

    import joblib
    from profanity_check import profanity_check as pc  # lazily: scikit-learn model files

    folder = __import__("pathlib").Path(pc.__file__).parent / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return joblib.load(folder / "vectorizer.joblib"), joblib.load(folder / "model.joblib")


def profanity_scores(texts: list[str]) -> list[float]:
    """Probability that each text is offensive (alt-profanity-check: TF-IDF + calibrated linear SVM)."""
    if not texts:
        return []
    vectorizer, model = _profanity_model()
    return [float(p) for p in model.predict_proba(vectorizer.transform(texts))[:, 1]]


def split_for_scoring(text: str, max_chars: int) -> list[str]:
    """Paragraph pieces of at most about ``max_chars`` characters, cut at spaces (a long text
    dilutes the classifier, a cut word confuses it)."""
    pieces: list[str] = []
    for para in text.split("\n"):
        para = para.strip()
        while len(para) > max_chars:
            cut = para.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            pieces.append(para[:cut].strip())
            para = para[cut:].strip()
        if para:
            pieces.append(para)
    return pieces or [""]


@dataclass(frozen=True)
class ToxicityConfig(StepConfig):
    """Drop documents whose profanity score exceeds ``threshold``.

    ``granularity``: ``"document"`` scores the whole text; ``"paragraph"`` scores pieces of at most
    ``max_chars``: a document is dropped when its highest piece score exceeds ``threshold`` and
    more than ``max_fraction`` of its pieces do (0 = any toxic piece drops it; the default 0.05
    keeps a novel's chapter with one rude line, and drops a short rude message).
    """

    threshold: float = 0.9
    granularity: str = "paragraph"
    max_chars: int = 1000
    max_fraction: float = 0.05

    def __post_init__(self) -> None:
        require_fraction(self.threshold, "threshold")
        require_fraction(self.max_fraction, "max_fraction")
        require(self.granularity in ("document", "paragraph"), "granularity", "must be 'document' or 'paragraph'")
        require(self.max_chars >= 50, "max_chars", "must be >= 50")


class ToxicityFilter(Step):
    """Drop offensive documents (rule ``toxic``; value = the highest score, detail = fraction of
    toxic pieces)."""

    name = "toxicity"
    config_class = ToxicityConfig

    def _pieces(self, doc: Doc) -> list[str]:
        cfg: ToxicityConfig = self.config  # type: ignore[assignment]
        return [doc["text"]] if cfg.granularity == "document" else split_for_scoring(doc["text"], cfg.max_chars)

    def measure(self, doc: Doc) -> dict[str, float]:
        return {"toxicity": max(profanity_scores(self._pieces(doc)))}

    def thresholds(self) -> dict[str, Any]:
        return {"toxicity": self.config.threshold}  # type: ignore[attr-defined]

    def process(self, docs: list[Doc]) -> StepResult:
        cfg: ToxicityConfig = self.config  # type: ignore[assignment]
        pieces = [self._pieces(d) for d in docs]
        flat = profanity_scores([p for ps in pieces for p in ps])  # one vectorised call per batch
        kept: list[Doc] = []
        decisions: list[Decision] = []
        pos = 0
        for doc, ps in zip(docs, pieces):
            scores = flat[pos:pos + len(ps)]
            pos += len(ps)
            top = max(scores)
            frac = sum(s > cfg.threshold for s in scores) / len(scores)
            if top > cfg.threshold and frac > cfg.max_fraction:
                decisions.append(Decision(str(doc["id"]), self.name, "toxic", DROP, value=round(top, 4),
                                          threshold=cfg.threshold, detail={"toxic_fraction": round(frac, 4)}))
            else:
                kept.append(doc)
        return StepResult(kept, decisions)
