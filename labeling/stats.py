"""Read-only views of a project: progress and quality (the maths lives in :mod:`labeling.quality`)."""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, Q

from labeling import quality
from labeling.models import (
    ASSIGN_ACTIVE,
    TASK_PAIRWISE,
    TASK_RANKING,
    TASK_RATING,
    Assignment,
    Item,
    Judgement,
    Project,
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def project_progress(project: Project) -> dict[str, Any]:
    """Items, completion and judgements; the target is (non-gold items) × overlap."""
    items = Item.objects.filter(project=project)
    agg = items.aggregate(total=Count("id"), gold=Count("id", filter=Q(is_gold=True)),
                          complete=Count("id", filter=Q(complete=True, is_gold=False)))
    judged = Judgement.objects.filter(project=project, imported=False)
    regular = agg["total"] - agg["gold"]
    return {
        "items": agg["total"], "gold_items": agg["gold"], "complete_items": agg["complete"],
        "judgements": judged.count(), "target_judgements": regular * project.overlap,
        "active_locks": Assignment.objects.filter(project=project, status=ASSIGN_ACTIVE).count(),
        "prompts": project.prompts.count(),
    }


def my_progress(project: Project, user: Any) -> dict[str, Any]:
    done = Judgement.objects.filter(project=project, annotator=user, imported=False).count()
    return {"judged": done, "cap": project.annotator_cap,
            "remaining_cap": None if project.annotator_cap is None else max(project.annotator_cap - done, 0)}


def _votes(project: Project) -> list[quality.Vote]:
    rows = (Judgement.objects.filter(project=project, imported=False).exclude(choice="")
            .select_related("item").prefetch_related("item__slots__response"))
    votes = []
    for j in rows:
        slots = sorted(j.item.slots.all(), key=lambda s: s.position)
        if len(slots) != 2:
            continue
        votes.append(quality.Vote(item=j.item_id, annotator=j.annotator_id, choice=j.choice,
                                  len_a=len(slots[0].response.text), len_b=len(slots[1].response.text),
                                  time_ms=j.time_on_task_ms, is_gold=j.is_gold, gold_correct=j.gold_correct))
    return votes


CHOICE_CODE = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}


def quality_report(project: Project, *, bootstrap_rounds: int = 100) -> dict[str, Any]:
    """Agreement (Krippendorff's α), per-annotator QC, adjudication queue and model leaderboard."""
    names = dict(get_user_model().objects.filter(labeling_judgements__project=project).distinct()
                 .values_list("id", "username"))
    alpha: dict[str, Any] = {}
    votes: list[quality.Vote] = []
    battles: list[tuple[str, str, str]] = []
    task = project.task_type
    if task == TASK_PAIRWISE:
        votes = _votes(project)
        regular = [v for v in votes if not v.is_gold]
        alpha["choice (nominal)"] = _clean(quality.krippendorff_alpha(quality.reliability_matrix(
            (v.annotator, v.item, CHOICE_CODE[v.choice]) for v in regular), "nominal")) if regular else None
        for j in (Judgement.objects.filter(project=project, is_gold=False).exclude(choice="")
                  .prefetch_related("item__slots__response")):
            slots = sorted(j.item.slots.all(), key=lambda s: s.position)
            if len(slots) == 2 and slots[0].response.model_name and slots[1].response.model_name \
                    and slots[0].response.model_name != slots[1].response.model_name:
                winner = {"a": "a", "b": "b"}.get(j.choice, "tie")
                battles.append((slots[0].response.model_name, slots[1].response.model_name, winner))
    elif task == TASK_RATING:
        rows = list(Judgement.objects.filter(project=project, imported=False, is_gold=False))
        for c in project.criteria_list():
            triples = [(j.annotator_id, f"{j.item_id}:{rid}", v[c]) for j in rows
                       for rid, v in (j.ratings or {}).items() if c in v]
            alpha[f"{c} (interval)"] = _clean(quality.krippendorff_alpha(
                quality.reliability_matrix(triples), "interval")) if triples else None
    elif task == TASK_RANKING:
        rows = list(Judgement.objects.filter(project=project, imported=False, is_gold=False))
        triples = [(j.annotator_id, f"{j.item_id}:{rid}", pos) for j in rows for pos, rid in enumerate(j.ranking)]
        alpha["rank (ordinal)"] = _clean(quality.krippendorff_alpha(
            quality.reliability_matrix(triples), "ordinal")) if triples else None
    annotators = quality.annotator_stats(votes, gold_warn=project.gold_warn_accuracy,
                                         gold_block=project.gold_block_accuracy, gold_min=project.gold_min_judged)
    if not votes:  # non-pairwise: counts and speed only
        counts = (Judgement.objects.filter(project=project, imported=False).values("annotator")
                  .annotate(n=Count("id")))
        annotators = [{"annotator": r["annotator"], "judgements": r["n"], "flags": []} for r in counts]
    for row in annotators:
        row["username"] = names.get(row["annotator"], str(row["annotator"]))
        for k, v in list(row.items()):
            row[k] = _clean(v)
    return {
        "progress": project_progress(project),
        "alpha": alpha,
        "annotators": annotators,
        "adjudication": quality.adjudication_queue([v for v in votes if not v.is_gold])[:50],
        "leaderboard": quality.leaderboard(battles, rounds=bootstrap_rounds) if battles else [],
    }
