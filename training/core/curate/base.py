"""Shared vocabulary of the curation steps: documents, decisions and the step protocol.

A *document* is a plain dict with at least ``id`` (str) and ``text`` (str); every other key
(``source``, ``domain``, ``language``, ``licence``, ...) is metadata that steps carry along
unchanged. A *step* maps a batch of documents to the documents it keeps (possibly changed)
and one :class:`Decision` per drop or change, so that the studio can show what every step
removed and why:

>>> d = Decision(doc_id="a", step="length", rule="too_short", action="drop", value=3, threshold=50)
>>> d.to_dict()["rule"]
'too_short'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from training.core.config import BaseConfig, ConfigError

Doc = dict[str, Any]

DROP = "drop"
MODIFY = "modify"


class CurationError(ValueError):
    """A curation input or run was refused: ``code`` (stable, e.g. ``binary_file``), ``detail``
    (what is wrong) and ``hint`` (what to do)."""

    def __init__(self, code: str, detail: str, hint: str = "") -> None:
        self.code, self.detail, self.hint = code, detail, hint
        super().__init__(f"{code}: {detail}" + (f" (hint: {hint})" if hint else ""))

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail, "hint": self.hint}


@dataclass(frozen=True)
class Decision:
    """One drop or change made by a step: which document, which rule, measured value vs threshold.

    ``action`` is ``"drop"`` (document removed) or ``"modify"`` (text changed, e.g. redacted).
    ``value`` is what the rule measured (a ratio, a count, a score); ``threshold`` is the limit
    it was compared with (``None`` for rules without one, e.g. exact duplicates). ``detail``
    carries rule-specific extras (the id of the kept duplicate, the counts of placeholders...).
    """

    doc_id: str
    step: str
    rule: str
    action: str
    value: Any = None
    threshold: Any = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class StepResult:
    """What a step returns for one batch: the kept documents and the decisions it made."""

    kept: list[Doc]
    decisions: list[Decision]


def require(cond: bool, field_name: str, message: str, hint: str = "") -> None:
    """Raise :class:`ConfigError` unless ``cond``."""
    if not cond:
        raise ConfigError(field_name, message, hint)


def require_fraction(value: float | None, field_name: str) -> None:
    """A ratio threshold must lie in [0, 1] (``None`` switches the rule off)."""
    if value is not None:
        require(isinstance(value, (int, float)) and 0.0 <= value <= 1.0, field_name,
                f"must be a fraction between 0 and 1, got {value!r}",
                "use e.g. 0.3 for 30%, or null to turn the rule off")


@dataclass(frozen=True)
class StepConfig(BaseConfig):
    """Base of the steps' frozen configs (validated in ``__post_init__``)."""


class Step:
    """A curation step: ``step(batch) -> StepResult``.

    Subclasses set ``name`` (the reason-code prefix shown in the studio), ``config_class`` and
    implement :meth:`process`. Steps that measure a value per document (quality ratios, scores)
    also implement :meth:`measure`, which :func:`training.core.curate.pipeline.preview` uses to
    draw the histogram of a threshold before a run. Stateful steps (dedup) keep their index on
    the instance: use one instance per run.
    """

    name: ClassVar[str] = "step"
    config_class: ClassVar[type[StepConfig]] = StepConfig

    def __init__(self, config: StepConfig | None = None, **overrides: Any) -> None:
        cfg = config if config is not None else self.config_class()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        if not isinstance(cfg, self.config_class):
            raise ConfigError(self.name, f"expects a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.config = cfg

    def process(self, docs: list[Doc]) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, docs: list[Doc]) -> StepResult:
        return self.process(docs)

    def measure(self, doc: Doc) -> dict[str, float]:
        """The values this step's rules compare with thresholds, by value name."""
        return {}

    def thresholds(self) -> dict[str, Any]:
        """The threshold of each measured value (for previews), by value name."""
        return {}

    def reset(self) -> None:
        """Forget state gathered from earlier batches (dedup indexes); no-op for stateless steps."""

    def set_state_dir(self, folder: str | Path) -> None:
        """Keep the step's state (dedup indexes) in files under ``folder`` (a fixed place, so that
        an interrupted run can :meth:`restore` it); no-op for stateless steps."""

    def checkpoint(self) -> dict[str, Any]:
        """A small JSON marker of the state after the batches processed so far (empty when stateless)."""
        return {}

    def restore(self, marker: dict[str, Any]) -> None:
        """Return the state kept under :meth:`set_state_dir` to what ``marker`` describes,
        forgetting batches processed after that checkpoint."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class FilterStep(Step):
    """A step that keeps or drops each document independently by rules over :meth:`measure`.

    Subclasses implement :meth:`violations`, returning ``(rule, value, threshold)`` for every
    rule the document breaks; the first one is the reason code of the drop, all of them are in
    ``detail["rules"]``.
    """

    def violations(self, doc: Doc) -> list[tuple[str, float, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def process(self, docs: list[Doc]) -> StepResult:
        kept: list[Doc] = []
        decisions: list[Decision] = []
        for doc in docs:
            broken = self.violations(doc)
            if not broken:
                kept.append(doc)
                continue
            rule, value, threshold = broken[0]
            decisions.append(Decision(
                doc_id=str(doc["id"]), step=self.name, rule=rule, action=DROP, value=_plain(value),
                threshold=threshold,
                detail={"rules": [r for r, _, _ in broken]} if len(broken) > 1 else {}))
        return StepResult(kept, decisions)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, floats rounded for readable reports."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


def batched(docs: Iterable[Doc], size: int) -> Iterator[list[Doc]]:
    """Group an iterable of documents into lists of ``size`` (the last one may be shorter)."""
    if size < 1:
        raise ConfigError("batch_size", f"must be at least 1, got {size}")
    batch: list[Doc] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
