"""The tools' models' pre-annotations on the annotator page.

Argilla suggestions and Label Studio predictions about a record's listed responses are kept with
the prompt (``Prompt.metadata["pre_annotations"]``, see :func:`labeling.imports.pre_annotation_record`),
never as votes. A project decides what its annotators see of them (``Project.pre_annotations``):

- ``hidden`` (default): nothing;
- ``shown``: each suggestion that says something about the locked item, in the terms the annotator
  sees — the responses' labels as positioned in *this* task (``Answer A`` / ``Answer B`` for pairs,
  ``Answer 1`` … otherwise), not response ids;
- ``prefilled``: shown, and the answer the first fitting suggestion gives (a pairwise choice, a
  ranking, ratings) is returned as ``prefill`` for the page to start the form from. The annotator
  still submits; nothing is submitted for them.

A pre-annotation speaks about the responses the tool listed. A pairwise item of a record with more
responses (or one pairing a listed response with a model's written candidate) shows only two of
them, so a suggestion maps onto the pair only where it compares those two: a ranking that ranks
both, a preferred response whose rival was listed too, a tie / both-bad verdict over listed
responses. What does not map is left out rather than guessed.

:func:`task_suggestions` is the pure mapping; :func:`for_assignment` reads the locked item for the
API (the setting itself is a project field, changed like the others by
:func:`labeling.actions.update_project`).
"""

from __future__ import annotations

import json
from typing import Any

from django.utils import timezone

from labeling import actions
from labeling.models import (
    PRE_HIDDEN,
    PRE_PREFILLED,
    SOURCE_CHECKPOINT,
    TASK_PAIRWISE,
    TASK_RANKING,
    TASK_RATING,
    Assignment,
    Project,
)
from studio.errors import StudioAPIError

TOOLS = {"argilla": "Argilla", "label_studio": "Label Studio"}
MAX_VALUE_CHARS = 300  # a value kept as given (span labels, …) is shown cut to this length


def labels_for(task_type: str, shown: list[int]) -> dict[int, str]:
    """How the annotator page names each shown response: ``Answer A`` / ``Answer B`` … for a
    pairwise task (position 0 is A), ``Answer 1`` … otherwise.

    >>> labels_for("pairwise", [7, 3])
    {7: 'Answer A', 3: 'Answer B'}
    """
    if task_type == TASK_PAIRWISE:
        return {rid: f"Answer {chr(ord('A') + pos)}" for pos, rid in enumerate(shown)}
    return {rid: f"Answer {pos + 1}" for pos, rid in enumerate(shown)}


def _as_id(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _score_text(score: Any) -> str:
    if isinstance(score, (int, float)) and not isinstance(score, bool):
        return f"score {score:g}"
    if isinstance(score, list) and score and all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in score):
        return "scores " + ", ".join(f"{s:g}" for s in score)
    return ""


def _one(pre: dict[str, Any], task_type: str, shown: list[int], listed: set[int], labels: dict[int, str],
         criteria: list[str], likert_max: int) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """What one pre-annotation says about the task: ``(phrases, mapped, answer)`` — phrases in the
    annotator's terms, the mapped fields (``choice``, ``ranking``, ``ratings``) and the answer it
    would pre-fill (empty when it gives none that fits the task)."""
    says: list[str] = []
    mapped: dict[str, Any] = {}
    answer: dict[str, Any] = {}
    ranked = [i for i in (_as_id(r) for r in pre.get("ranking") or []) if i is not None]
    judged = listed | set(ranked)
    in_task = [i for i in ranked if i in shown]
    preferred = _as_id(pre.get("preferred"))
    verdict = pre.get("choice") if pre.get("choice") in ("tie", "both_bad") else None
    everyone_judged = all(r in judged for r in shown)

    if task_type == TASK_PAIRWISE and len(shown) == 2:
        choice = None
        if verdict and everyone_judged:
            choice = verdict
        elif preferred in shown and everyone_judged:
            choice = "a" if preferred == shown[0] else "b"
        elif len(in_task) == 2:
            choice = "a" if in_task[0] == shown[0] else "b"
        if choice is not None:
            mapped["choice"] = answer["choice"] = choice
            says.append({"a": f"prefers {labels[shown[0]]}", "b": f"prefers {labels[shown[-1]]}",
                         "tie": "calls it a tie", "both_bad": "finds both answers bad"}[choice])
    else:
        if len(in_task) >= 2:
            mapped["ranking"] = in_task
            says.append("ranks " + " > ".join(labels[i] for i in in_task))
            if task_type == TASK_RANKING and len(in_task) == len(shown):
                answer["ranking"] = in_task
        if preferred in shown and everyone_judged and len(in_task) < 2:
            mapped["preferred"] = preferred
            says.append(f"prefers {labels[preferred]}")
            if task_type == TASK_RANKING:
                answer["ranking"] = [preferred]
        if verdict and everyone_judged:
            mapped["choice"] = verdict
            says.append("calls them a tie" if verdict == "tie" else "finds all the answers bad")

    ratings: dict[str, dict[str, Any]] = {}
    for rid in shown:
        given = (pre.get("ratings") or {}).get(str(rid))
        if isinstance(given, dict) and given:
            ratings[str(rid)] = given
            # criteria in name order: PostgreSQL's jsonb does not keep the imported order
            says.append(f"rates {labels[rid]} " + ", ".join(f"{c} {v}" for c, v in sorted(given.items())))
    if ratings:
        mapped["ratings"] = ratings
        if task_type == TASK_RATING:
            fits = {rid: {c: v for c, v in crit.items()
                          if c in criteria and isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= likert_max}
                    for rid, crit in ratings.items()}
            fits = {rid: crit for rid, crit in fits.items() if crit}
            if fits:
                answer["ratings"] = fits
    return says, mapped, answer


def task_suggestions(pre_annotations: list[Any], task_type: str, shown: list[int], *, listed: set[int] | None = None,
                     criteria: list[str] | None = None, likert_max: int = 5,
                     hidden_models: set[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Map a prompt's pre-annotations onto one task (pure).

    ``shown``: the task's response ids by position; ``listed``: the responses the tool listed (a
    pre-annotation's verdicts speak about those; default: the shown ones); ``hidden_models``: model
    names never to show (those that wrote the prompt's responses: annotators do not learn who wrote
    an answer). Returns ``(suggestions, prefill)``: each suggestion ``{"tool", "source", "model",
    "score", "summary", "says", "comment", "values", "choice" | "ranking" | "preferred", "ratings"}``
    (ids of shown responses only) and the answer of the first one that fits the task, with its
    index as ``"suggestion"`` (None when none does).

    >>> out, prefill = task_suggestions([{"tool": "label_studio", "model": "rm", "score": 0.5,
    ...                                    "preferred": 11}], "pairwise", [12, 11])
    >>> out[0]["summary"], prefill
    ('Label Studio · rm · score 0.5: prefers Answer B', {'suggestion': 0, 'choice': 'b'})
    """
    listed = set(shown) if listed is None else set(listed)
    labels = labels_for(task_type, shown)
    out: list[dict[str, Any]] = []
    prefill: dict[str, Any] | None = None
    for pre in pre_annotations or []:
        if not isinstance(pre, dict):
            continue
        says, mapped, answer = _one(pre, task_type, shown, listed, labels, list(criteria or []), likert_max)
        comment = pre.get("comment") if isinstance(pre.get("comment"), str) and pre.get("comment").strip() else ""
        values = pre.get("values") if isinstance(pre.get("values"), dict) else {}
        values = {str(q): json.dumps(v, ensure_ascii=False)[:MAX_VALUE_CHARS] for q, v in values.items()}
        if not (says or comment or values):
            continue  # it says nothing about the responses of this task
        model = str(pre.get("model") or "")
        if model in (hidden_models or set()):
            model = ""
        source = TOOLS.get(str(pre.get("tool")), str(pre.get("tool") or "import"))
        head = " · ".join(p for p in (source, model or "a model", _score_text(pre.get("score"))) if p)
        out.append({"tool": pre.get("tool"), "source": source, "model": model or None, "score": pre.get("score"),
                    "summary": head + (": " + "; ".join(says) if says else ""), "says": says,
                    "comment": comment, "values": values, **mapped})
        if prefill is None and answer:
            prefill = {"suggestion": len(out) - 1, **answer}
    return out, prefill


def for_assignment(assignment: Assignment, user: Any) -> dict[str, Any]:
    """The pre-annotations of the item locked for ``user``, as its task shows them:
    ``{"assignment", "item", "mode", "suggestions", "prefill"}`` (``prefill`` only with the
    ``prefilled`` setting; ``suggestions`` empty with ``hidden``). Refused: someone else's
    assignment (403 ``not_your_item``), a finished one (409 ``not_active``), an expired lock (409
    ``lock_expired``)."""
    # the rule the lock's other requests (skip, extend) apply; a read, so the row is not locked
    a = actions.own_active_assignment(assignment, user, "its suggestions are no longer shown", for_update=False)
    if a.expires_at <= timezone.now():
        raise StudioAPIError("lock_expired", f"Your lock on this item expired at {a.expires_at:%H:%M:%S} UTC.",
                             "Ask for your next item.", status_code=409)
    project, item = a.project, a.item
    body: dict[str, Any] = {"assignment": a.pk, "item": item.pk, "mode": project.pre_annotations,
                            "suggestions": [], "prefill": None}
    pre = (item.prompt.metadata or {}).get("pre_annotations") if isinstance(item.prompt.metadata, dict) else None
    if project.pre_annotations == PRE_HIDDEN or not pre:
        return body
    shown = list(item.slots.order_by("position").values_list("response_id", flat=True))
    listed: set[int] = set()
    models: set[str] = set()
    for rid, name, kind, meta in item.prompt.responses.values_list("id", "model_name", "source_kind", "metadata"):
        if name:
            models.add(name)
        # the tool listed it (not a candidate a tool's model wrote, nor one generated here later)
        if kind != SOURCE_CHECKPOINT and not (isinstance(meta, dict) and "suggestion_for" in meta):
            listed.add(rid)
    suggestions, prefill = task_suggestions(pre, item.kind, shown, listed=listed, criteria=project.criteria_list(),
                                            likert_max=project.likert_max, hidden_models=models)
    body["suggestions"] = suggestions
    body["prefill"] = prefill if project.pre_annotations == PRE_PREFILLED else None
    return body
