"""Labeling actions: the only code that changes labeling records.

Every write is one transaction. On SQLite the hot writes (assignment, submission, skip, edit)
queue on the database's write lock (:func:`studio.dbwrite.write_transaction`, shared by every
web worker process) and open with ``BEGIN IMMEDIATE``; on PostgreSQL the item row is locked with
``SELECT … FOR UPDATE`` while a slot is handed out, and a hand-out that would break
``unique(item, slot)`` / ``unique(item, annotator)`` writes nothing (``ON CONFLICT DO NOTHING``)
and the next free item is looked for. Events go to the project's group (``labeling.project.<id>``)
for the live dashboard.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone

from labeling import sql
from labeling.imports import ItemSpec, parse_jsonl, pre_annotation_record
from labeling.models import (
    ASSIGN_ACTIVE,
    ASSIGN_EXPIRED,
    ASSIGN_SKIPPED,
    ASSIGN_SUBMITTED,
    BIAS_KINDS,
    CHOICES,
    REPORT_CATEGORIES,
    REPORT_DISMISSED,
    REPORT_OPEN,
    REPORT_RESOLVED,
    REPORT_TRIAGED,
    SEVERITIES,
    TASK_CORRECTION,
    TASK_PAIRWISE,
    TASK_RANKING,
    TASK_RATING,
    Assignment,
    Item,
    ItemResponse,
    Judgement,
    Project,
    Prompt,
    Report,
    Response,
    Snapshot,
)
from studio.dbwrite import write_transaction
from studio.errors import StudioAPIError
from studio.events import deliver, publish
from studio.models import Event

PROJECT_FIELDS = ("name", "description", "guidelines", "task_type", "criteria", "likert_max", "allow_strength",
                  "overlap", "gold_rate", "annotator_cap", "lock_ttl_seconds", "edit_window_seconds",
                  "gold_warn_accuracy", "gold_block_accuracy", "gold_min_judged", "pre_annotations", "archived")
MAX_TIME_ON_TASK_MS = 24 * 3600 * 1000


def _invalid(field_name: str, message: str, hint: str = "") -> StudioAPIError:
    return StudioAPIError("invalid", f"{field_name}: {message}", hint or "Fix the field and send it again.",
                          fields={field_name: [message]})


# ---- projects ----------------------------------------------------------------------------------

def create_project(user: Any, **fields: Any) -> Project:
    """Create a project (builders). Unknown fields are ignored by the serializer before this."""
    with transaction.atomic():
        project = Project.objects.create(created_by=user, **{k: v for k, v in fields.items() if k in PROJECT_FIELDS})
        publish("labeling.project.created", {"project": project.pk, "name": project.name}, actor=user)
    return project


def update_project(project: Project, user: Any, **fields: Any) -> Project:
    """Change settings; a change of guidelines bumps ``guidelines_version`` (snapshots record it)."""
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project.pk)
        changed = [k for k, v in fields.items() if k in PROJECT_FIELDS and getattr(project, k) != v]
        if "task_type" in changed and project.items.exists():
            raise StudioAPIError("task_type_locked", "The task type cannot change once items exist.",
                                 "Create a new project for another task type.", status_code=409)
        for k in changed:
            setattr(project, k, fields[k])
        if "guidelines" in changed:
            project.guidelines_version += 1
        project.save()
        if changed:
            publish("labeling.project.updated", {"project": project.pk, "fields": changed},
                    group=project.event_group, actor=user)
    return project


# ---- imports -----------------------------------------------------------------------------------

@dataclass
class ImportResult:
    prompts: int = 0
    responses: int = 0
    items: int = 0
    judgements: int = 0
    # of the responses: candidates written by the tools' models (Argilla suggestions, Label Studio
    # predictions); and those models' answers about the responses, kept as pre-annotations
    suggested_responses: int = 0
    pre_annotations: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    stored: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "responses": self.responses, "items": self.items,
                "judgements": self.judgements, "suggested_responses": self.suggested_responses,
                "pre_annotations": self.pre_annotations, "errors": self.errors, "stored": self.stored}


class ImportRefused(StudioAPIError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        first = errors[0]
        super().__init__("import_refused", f"{len(errors)} line(s) could not be imported; nothing was stored "
                         f"(first: line {first['line']}: {first['message']}).",
                         "Fix the listed lines, or send on_error=skip to store the good lines and skip these.",
                         status_code=400)
        self.errors = errors


def _check_spec(project: Project, spec: ItemSpec) -> str | None:
    """Why a parsed line cannot go into this project, or None."""
    n = len(spec.responses)
    task = project.task_type
    for ann in spec.annotations:
        fits = {TASK_PAIRWISE: sorted(ann.get("order", [])) == list(range(n)) or ("choice" in ann and n == 2),
                TASK_RANKING: sorted(ann.get("order", [])) == list(range(n)),
                TASK_RATING: sorted(ann.get("ratings", {})) == list(range(n))}.get(task, False)
        if not fits:
            given = ", ".join(k for k in ("order", "choice", "ratings", "comment") if k in ann) or "nothing"
            return (f"{ann['annotator']}'s answer ({given}) does not fit a {task} project with {n} responses"
                    + (" (a ranking must rank every response, ratings must rate each one)"
                       if task in (TASK_RANKING, TASK_RATING) else ""))
    total = n + len(spec.suggested)
    if spec.kind == "item" and spec.judgement is None and total:
        if task in (TASK_PAIRWISE, TASK_RANKING) and total < 2:
            return f"a {task} project needs at least 2 responses per prompt (got {total})"
        if spec.gold and task == TASK_PAIRWISE and n != 2:
            return "a pairwise gold item needs exactly 2 responses"
        if spec.gold and "ranking" in spec.gold and sorted(spec.gold["ranking"]) != list(range(n)):
            return "gold 'ranking' must list every response index (0-based) once"
    return None


def _authors(specs: list[ItemSpec]) -> dict[str, Any]:
    names = {r["author"] for s in specs for r in s.responses if r.get("author")}
    if not names:
        return {}
    return {u.get_username(): u for u in get_user_model().objects.filter(username__in=names)}


def _annotation_fields(task: str, listed: list[int], responses: list[Response], ann: dict[str, Any]) -> dict[str, Any]:
    """Judgement fields of another tool's annotation on the item showing ``listed`` responses in order."""
    out: dict[str, Any] = {k: ann[k] for k in ("comment", "time_on_task_ms") if k in ann}
    if task == TASK_PAIRWISE:
        if "order" in ann:
            first = next(i for i in ann["order"] if i in listed)
            out["choice"] = "a" if first == listed[0] else "b"
        else:
            out["choice"] = ann["choice"]
    elif task == TASK_RANKING:
        out["ranking"] = [responses[i].pk for i in ann["order"]]
    elif task == TASK_RATING:
        out["ratings"] = {str(responses[i].pk): crit for i, crit in ann["ratings"].items()}
    return out


def _tool_annotator(username: str, cache: dict[str, Any]) -> Any:
    """An inactive account (no usable password) standing for another tool's annotator."""
    username = username[:150]
    if username not in cache:
        user, created = get_user_model().objects.get_or_create(username=username, defaults={"is_active": False})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        cache[username] = user
    return cache[username]


def _shuffle(n: int, rng: random.Random) -> list[int]:
    order = list(range(n))
    rng.shuffle(order)
    return order  # order[position] = listed index


def _item_groups(project: Project, spec: ItemSpec, n: int, total: int) -> list[list[int]]:
    """Listed indices of each item a line makes: a pairwise project's unjudged line one item per
    pair, else one item. Candidates the tools' models wrote (indices ``n…total-1``) join the items
    of an unjudged line; next to what the tools' annotators judged they get items of their own."""
    if spec.kind == "item" and spec.judgement is None and project.task_type == TASK_PAIRWISE and total > 2:
        return ([[i, j] for i in range(n) for j in range(i + 1, n)]
                + [[i, j] for j in range(n, total) for i in range(j)])
    if spec.annotations and total > n:
        return [list(range(n)), list(range(total))]
    return [list(range(total))]


def _store_spec(project: Project, spec: ItemSpec, user: Any, rng: random.Random, result: ImportResult,
                authors: dict[str, Any]) -> None:
    prompt = Prompt.objects.create(project=project, messages=spec.messages, external_id=spec.external_id,
                                   metadata=spec.metadata)
    result.prompts += 1
    responses = [Response.objects.create(prompt=prompt, text=r["text"], source_kind=r["source"],
                                         model_name=r.get("model", ""), author=authors.get(r.get("author", "")),
                                         metadata=r.get("metadata") or {})
                 for r in spec.responses + spec.suggested]
    result.responses += len(responses)
    result.suggested_responses += len(spec.suggested)
    if spec.pre_annotations:  # the tools' models' answers: kept with the prompt, never judgements
        prompt.metadata = {**prompt.metadata, "pre_annotations": [
            pre_annotation_record(p, [r.pk for r in responses]) for p in spec.pre_annotations]}
        prompt.save(update_fields=["metadata"])
        result.pre_annotations += len(spec.pre_annotations)
    if not responses:
        return
    n = len(spec.responses)
    for listed in _item_groups(project, spec, n, len(responses)):
        order = _shuffle(len(listed), rng)
        if spec.keep_order and spec.judgement is None and not spec.gold:
            order = list(range(len(listed)))
        task_type = TASK_PAIRWISE if spec.kind == "preference" else ""
        item = Item.objects.create(project=project, prompt=prompt, task_type=task_type,
                                   is_gold=bool(spec.gold) and spec.judgement is None)
        ItemResponse.objects.bulk_create([ItemResponse(item=item, response=responses[listed[k]], position=pos)
                                          for pos, k in enumerate(order)])
        result.items += 1
        # listed index of what sits at position 0 (A): choices refer to the listed order
        swapped = len(order) == 2 and order[0] == 1
        if spec.gold:
            gold = dict(spec.gold)
            if "choice" in gold and swapped:
                gold["choice"] = {"a": "b", "b": "a"}.get(gold["choice"], gold["choice"])
            if "ranking" in gold:
                gold["ranking"] = [responses[listed[k]].pk for k in gold["ranking"]]
            item.gold_answer = gold
            item.save(update_fields=["gold_answer"])
        if spec.judgement is not None:
            j = dict(spec.judgement)
            if "choice" in j and swapped:
                j["choice"] = {"a": "b", "b": "a"}.get(j["choice"], j["choice"])
                if j.get("strength") is not None:
                    j["strength"] = -j["strength"]
            Judgement.objects.create(project=project, item=item, annotator=user, imported=True, **j)
            item.submitted_count = 1
            item.complete = True
            item.save(update_fields=["submitted_count", "complete"])
            result.judgements += 1
        if spec.annotations and max(listed) < n:  # other tools' annotators: one judgement each; the item is done
            for ann in spec.annotations:
                Judgement.objects.create(project=project, item=item, imported=True,
                                         annotator=_tool_annotator(ann["annotator"], authors),
                                         **_annotation_fields(item.kind, listed, responses, ann))
            item.submitted_count = len(spec.annotations)
            item.complete = True
            item.save(update_fields=["submitted_count", "complete"])
            result.judgements += len(spec.annotations)


def import_jsonl(project: Project, user: Any, text: str, *, on_error: str = "refuse", seed: int | None = None) -> ImportResult:
    """Import prompts, items or finished records from JSONL (see :mod:`labeling.imports`).

    ``on_error="refuse"``: any bad line refuses the whole file and nothing is stored (the error lists
    every bad line). ``on_error="skip"``: the good lines are stored and the bad ones listed.
    Response order is randomized per item and recorded; imported judgements are remapped to it.
    """
    if on_error not in ("refuse", "skip"):
        raise _invalid("on_error", "must be 'refuse' or 'skip'")
    specs, errors = parse_jsonl(text)
    bad = [e.as_dict() for e in errors]
    good = []
    for spec in specs:
        problem = _check_spec(project, spec)
        if problem:
            bad.append({"line": spec.line, "message": problem})
        else:
            good.append(spec)
    bad.sort(key=lambda e: e["line"])
    if bad and on_error == "refuse":
        raise ImportRefused(bad)
    if not good and not bad:
        raise StudioAPIError("empty_import", "The file has no records.", "Send one JSON object per line.")
    result = ImportResult(errors=bad)
    rng = random.Random(seed)
    with transaction.atomic():
        authors = _authors(good)
        for spec in good:
            _store_spec(project, spec, user, rng, result, authors)
        publish("labeling.imported", {"project": project.pk, **{k: v for k, v in result.as_dict().items()
                                                                 if k != "errors"}, "skipped_lines": len(bad)},
                group=project.event_group, actor=user)
    refresh_planner_statistics()
    return result


# ---- generated candidates ----------------------------------------------------------------------

GENERATION_OPTIONS = ("k", "max_new_tokens", "temperature", "top_p", "seed", "prompt_ids")


def request_candidates(project: Project, user: Any, models: list[dict[str, str]], **options: Any) -> dict[str, Any]:
    """Queue candidate generation (see :func:`labeling.tasks.generate_candidates`)."""
    from pathlib import Path

    from labeling.tasks import generate_candidates_task

    if not models:
        raise _invalid("models", "name at least one model: [{\"path\": …, \"name\": …}]")
    for i, m in enumerate(models):
        if not isinstance(m, dict) or not m.get("path") or not m.get("name"):
            raise _invalid("models", f"model {i}: give 'path' and 'name'")
        if m["path"] != "smollm2" and not Path(m["path"]).exists():
            raise _invalid("models", f"model {i}: {m['path']} does not exist on the studio's machine",
                           "Use a checkpoint, run folder, export, Hugging Face folder or .gguf path.")
    opts = {k: v for k, v in options.items() if k in GENERATION_OPTIONS and v is not None}
    if not 1 <= int(opts.get("k", 2)) <= 16:
        raise _invalid("k", "between 1 and 16 answers per prompt and model")
    with transaction.atomic():
        event = publish("labeling.generation.requested", {"project": project.pk, "models": [m["name"] for m in models],
                                                          **opts}, group=project.event_group, actor=user)
        transaction.on_commit(lambda: generate_candidates_task(project.pk, models, opts))
    return {"queued": True, "event": event.pk}


def add_candidates(project: Project, produced: dict[int, list[dict[str, Any]]], *,
                   seed: int | None = None) -> dict[str, int]:
    """Store generated answers (``{prompt id: [{"text", "model", "metadata"}]}``) and their items:
    pairwise projects get one item per pair of distinct answers, others one item per prompt."""
    rng = random.Random(seed)
    counts = {"responses": 0, "items": 0}
    with transaction.atomic():
        for prompt_id, answers in produced.items():
            prompt = Prompt.objects.get(pk=prompt_id, project=project)
            responses = [Response.objects.create(prompt=prompt, text=a["text"], source_kind="checkpoint",
                                                 model_name=a["model"][:200], metadata=a.get("metadata") or {})
                         for a in answers]
            counts["responses"] += len(responses)
            if project.task_type == TASK_PAIRWISE:
                groups = [[x, y] for i, x in enumerate(responses) for y in responses[i + 1:] if x.text != y.text]
            else:
                groups = [responses] if responses else []
            for group in groups:
                order = _shuffle(len(group), rng)
                item = Item.objects.create(project=project, prompt=prompt)
                ItemResponse.objects.bulk_create([ItemResponse(item=item, response=group[k], position=pos)
                                                  for pos, k in enumerate(order)])
                counts["items"] += 1
    refresh_planner_statistics()
    return counts


def refresh_planner_statistics() -> None:
    """PostgreSQL: refresh the statistics of the tables the next-item query reads, after a bulk load.

    The planner picks the next-item plan from them. A table just filled in bulk has none until
    autovacuum comes by (a minute or more later); meanwhile PostgreSQL scans and sorts every open
    item (and counts each one's held slots) instead of walking the item index and stopping at the
    first free one: ~5 ms instead of ~0.5 ms per assignment with 3,000 items, for every annotator.
    """
    if connection.vendor != "postgresql":
        return
    tables = ", ".join(sql.table(m) for m in (Item, Assignment, ItemResponse, Response))
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {tables}")


# ---- assignment ----------------------------------------------------------------------------------
# The annotator's two hot requests (next item; submit a judgement) run hand-written SQL through
# :mod:`labeling.sql`: a handful of statements each, no model instances. Through the ORM most of
# their cost was building the statements, not running them.

class NoItem(Exception):
    """No item can be handed out now; ``reason`` is a stable code and ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


RULE_FIELDS = ("archived", "task_type", "criteria", "likert_max", "allow_strength", "overlap", "gold_rate",
               "annotator_cap", "lock_ttl_seconds", "gold_block_accuracy", "gold_min_judged")


@dataclass(frozen=True)
class ProjectRules:
    """The project settings the assignment and judgement rules read, without a model instance."""

    pk: int
    archived: bool
    task_type: str
    criteria: list[str]
    likert_max: int
    allow_strength: bool
    overlap: int
    gold_rate: float
    annotator_cap: int | None
    lock_ttl_seconds: int
    gold_block_accuracy: float
    gold_min_judged: int

    criteria_list = Project.criteria_list

    @classmethod
    def of(cls, project: "Project | ProjectRules | int") -> "ProjectRules":
        """The rules of a project given as a model instance, as rules already, or by id."""
        if isinstance(project, ProjectRules):
            return project
        if isinstance(project, Project):
            return cls(project.pk, *(getattr(project, f) for f in RULE_FIELDS))
        rules = project_rules(project)
        if rules is None:
            raise StudioAPIError("not_found", f"No project {project}.", status_code=404)
        return rules


def project_rules(pk: int) -> ProjectRules | None:
    """One project's rules (one statement), or None when there is no such project."""
    row = sql.one(f"SELECT {', '.join(RULE_FIELDS)} FROM {sql.table(Project)} WHERE id = %s", [pk])
    return None if row is None else _rules_from_row(pk, row)


def _rules_from_row(pk: int, row: tuple[Any, ...]) -> ProjectRules:
    """Rules from the values of ``RULE_FIELDS`` as the database returns them."""
    archived, task_type, criteria, likert_max, strength, overlap, gold_rate, cap, ttl, block, min_judged = row
    return ProjectRules(pk, bool(archived), task_type, sql.py_json(criteria), likert_max, bool(strength), overlap,
                        gold_rate, cap, ttl, block, min_judged)


def release_expired(project: Any, now: Any = None) -> int:
    """Reclaim the project's expired locks: their slots go back to the pool."""
    at = sql.db_datetime(now or timezone.now())
    return sql.execute(f"UPDATE {sql.table(Assignment)} SET status = %s, slot = NULL, finished_at = %s "
                       "WHERE project_id = %s AND status = %s AND expires_at <= %s",
                       [ASSIGN_EXPIRED, at, project.pk, ASSIGN_ACTIVE, at])


def _release_expired_and_current(project: Any, user: Any, now: Any) -> tuple[Any, ...] | None:
    """:func:`release_expired`, then ``(id, item id, expires at)`` of ``user``'s unexpired lock in the
    project, or None. PostgreSQL: one statement (the update in a CTE; the select, which does not see
    its changes, leaves out the locks it expires by the same ``expires_at`` test)."""
    at = sql.db_datetime(now)
    assignments = sql.table(Assignment)
    current = (f"SELECT id, item_id, expires_at FROM {assignments} WHERE project_id = %s AND annotator_id = %s "
               "AND status = %s AND expires_at > %s ORDER BY id LIMIT 1")
    current_params = [project.pk, user.pk, ASSIGN_ACTIVE, at]
    if connection.vendor == "postgresql":
        return sql.one(f"WITH released AS (UPDATE {assignments} SET status = %s, slot = NULL, finished_at = %s "
                       f"WHERE project_id = %s AND status = %s AND expires_at <= %s) {current}",
                       [ASSIGN_EXPIRED, at, project.pk, ASSIGN_ACTIVE, at, *current_params])
    release_expired(project, now)
    return sql.one(current, current_params)


def gold_standing(project: Any, user: Any) -> tuple[float | None, int]:
    """(gold accuracy, gold judgements) of a user in a project."""
    n, ok = sql.one(f"SELECT COUNT(*), SUM(CASE WHEN gold_correct THEN 1 ELSE 0 END) FROM {sql.table(Judgement)} "
                    "WHERE project_id = %s AND annotator_id = %s AND is_gold = %s AND gold_correct IS NOT NULL",
                    [project.pk, user.pk, True])
    if not n:
        return None, 0
    return ok / n, n


def _eligible_sql(project: Project, user: Any, *, gold: bool) -> tuple[str, list[Any]]:
    """FROM/WHERE over the items (alias ``i``) ``user`` may be handed, full or not: in this project,
    gold or not, not complete, never assigned to this user, no response written by this user (no
    self-review). Hand-written: this runs for every judgement, and the ORM spends longer building
    the equivalent query than the database spends answering it. Order by :data:`ITEM_ORDER`."""
    item, assignment = Item._meta.db_table, Assignment._meta.db_table
    slots, response = ItemResponse._meta.db_table, Response._meta.db_table
    params: list[Any] = [project.pk, gold]
    if connection.vendor == "postgresql":
        is_open = "NOT i.complete"  # see ITEM_ORDER
    else:
        is_open = "i.complete = %s"
        params.append(False)
    clause = (f"FROM {item} i WHERE i.project_id = %s AND i.is_gold = %s AND {is_open} "
              f"AND NOT EXISTS (SELECT 1 FROM {assignment} m WHERE m.item_id = i.id AND m.annotator_id = %s) "
              f"AND NOT EXISTS (SELECT 1 FROM {slots} s JOIN {response} r ON r.id = s.response_id "
              "WHERE s.item_id = i.id AND r.author_id = %s) ")
    return clause, [*params, user.pk, user.pk]


# Eligible items in id order (all are open: the same order as by id). Spelled so that only the
# (project, complete, is_gold, id) index yields it: with ``ORDER BY i.id`` PostgreSQL walked the
# primary key from the first item, complete or not, because it assumes open items are spread
# evenly — but items are handed out in id order, so the completed ones pile up at the front, and
# that walk grew with every judgement. (``NOT i.complete`` instead of ``= false`` keeps the planner
# from treating the column as a constant and dropping it from the order.)
ITEM_ORDER = "ORDER BY i.complete, i.id"


def _held_slots_sql() -> str:
    """The number of slots held on item ``i`` (a subquery)."""
    return f"(SELECT COUNT(*) FROM {sql.table(Assignment)} h WHERE h.item_id = i.id AND h.slot IS NOT NULL)"


def _free_item(project: Project, user: Any, *, gold: bool) -> tuple[int, int] | None:
    """``(item id, slots held)`` of the first eligible item (:func:`_eligible_sql`, in id order)
    ``user`` may be handed now — for regular items, one with fewer held slots than the overlap —
    or None (PostgreSQL locks the regular item it hands out with :func:`_take_free_item`).
    """
    eligible, params = _eligible_sql(project, user, gold=gold)
    held = _held_slots_sql()
    query = f"SELECT i.id, {held} {eligible}"
    if not gold:
        query += f"AND {held} < %s "
        params.append(project.overlap)
    query += f"{ITEM_ORDER} LIMIT 1"
    row = sql.one(query, params)
    return None if row is None else (row[0], row[1])


def _take_free_item(project: ProjectRules, user: Any, now: Any, expires: Any) -> dict[str, Any] | None:
    """PostgreSQL: lock the first free regular item (as :func:`_free_item` finds it, its row locked,
    rows another transaction is handing out skipped) for ``user`` on its lowest free slot, and read
    the task (:func:`task_data`), in one statement; None when none is free. The slots are those of
    the statement's snapshot: one taken since conflicts with ``unique(item, slot)`` and the
    statement writes nothing (``ON CONFLICT DO NOTHING``: look again)."""
    eligible, params = _eligible_sql(project, user, gold=False)
    assignments = sql.table(Assignment)
    candidate = f"SELECT i.id {eligible}AND {_held_slots_sql()} < %s {ITEM_ORDER} LIMIT 1 FOR UPDATE OF i SKIP LOCKED"
    slot = (f"(SELECT MIN(n) FROM generate_series(0, %s - 1) n WHERE NOT EXISTS "
            f"(SELECT 1 FROM {assignments} h WHERE h.item_id = c.id AND h.slot = n))")
    taken = (f"INSERT INTO {assignments} (project_id, item_id, annotator_id, slot, status, is_gold, created_at, "
             f"expires_at, finished_at) SELECT %s, c.id, %s, {slot}, %s, %s, %s, %s, NULL "
             f"FROM ({candidate}) c ON CONFLICT DO NOTHING RETURNING id, item_id")
    shown = sql.rows(f"WITH taken AS ({taken}) " + _task_query("taken", lead="t.id, t.item_id, "),
                     [project.pk, user.pk, project.overlap, ASSIGN_ACTIVE, False, sql.db_datetime(now),
                      sql.db_datetime(expires), *params, project.overlap])
    if not shown:
        return None
    return task_data(project, shown[0][0], shown[0][1], expires, [row[2:] for row in shown])


def _held_by_active_locks(project: Project, user: Any) -> bool:
    """Whether a regular item ``user`` could still label holds a slot under an unfinished lock
    (asked once :func:`_free_item` found none, so its slots are all taken; another annotator may
    skip it or let the lock expire, so "nothing left" would be wrong)."""
    eligible, params = _eligible_sql(project, user, gold=False)
    query = (f"SELECT 1 {eligible}AND EXISTS (SELECT 1 FROM {Assignment._meta.db_table} a "
           "WHERE a.item_id = i.id AND a.status = %s AND a.slot IS NOT NULL) LIMIT 1")
    return sql.one(query, [*params, ASSIGN_ACTIVE]) is not None


def _lock(project: ProjectRules, item_id: int, user: Any, slot: int | None, now: Any, expires: Any) -> int | None:
    """Lock ``item_id`` for ``user`` on ``slot`` (None: a gold item): the assignment id, or None when
    a concurrent request took that slot or item meanwhile (``ON CONFLICT DO NOTHING``: no error, so
    the caller's transaction goes on)."""
    at = sql.db_datetime(now)
    return sql.insert(Assignment, {"project_id": project.pk, "item_id": item_id, "annotator_id": user.pk,
                                   "slot": slot, "status": ASSIGN_ACTIVE, "is_gold": slot is None,
                                   "created_at": at, "expires_at": sql.db_datetime(expires), "finished_at": None},
                      on_conflict_nothing=True)


def next_item(project: Project | ProjectRules | int, user: Any, *, rng: random.Random | None = None) -> dict[str, Any]:
    """Lock the next item for ``user`` (or return their current unexpired lock): the task as the
    annotator sees it (:func:`task_data`).

    Honours overlap (slots 0..N-1 per item), expired locks (reclaimed), no self-review (items with
    a response the user wrote are never shown to them), the per-annotator cap and the gold block
    threshold. Gold items are mixed in at ``gold_rate``. Raises :class:`NoItem` when nothing is left.

    One transaction, or part of the caller's without a savepoint (a submission with its next
    item): nothing in it raises on purpose — a refusal comes back from :func:`_hand_out` and is
    raised afterwards — and no hand-out breaks a constraint (a slot or item taken meanwhile is
    ``ON CONFLICT DO NOTHING``: look again), so the next item never rolls back a judgement.
    """
    project = ProjectRules.of(project)
    if project.archived:
        raise NoItem("archived", "This project is archived.")
    with write_transaction(savepoint=False):
        outcome = _hand_out(project, user, rng or random, timezone.now())
    if isinstance(outcome, NoItem):
        raise outcome
    return outcome


def _hand_out(project: ProjectRules, user: Any, rng: Any, now: Any) -> dict[str, Any] | NoItem:
    """:func:`next_item`'s work in its transaction: the task, or the refusal (not raised)."""
    current = _release_expired_and_current(project, user, now)
    if current is not None:
        return task_data(project, current[0], current[1], sql.py_datetime(current[2]))
    # gold judgements accrue only while gold items are served (gold_rate > 0)
    accuracy, judged = gold_standing(project, user) if project.gold_rate > 0 else (None, 0)
    if accuracy is not None and judged >= project.gold_min_judged and accuracy < project.gold_block_accuracy:
        return NoItem("gold_blocked", f"Your accuracy on gold items is {accuracy:.0%}, below the "
                      f"project's {project.gold_block_accuracy:.0%}; a builder must review your work.")
    if project.annotator_cap is not None:
        done = sql.one(f"SELECT COUNT(*) FROM {sql.table(Judgement)} WHERE project_id = %s "
                       "AND annotator_id = %s AND imported = %s", [project.pk, user.pk, False])[0]
        if done >= project.annotator_cap:
            return NoItem("cap_reached", f"You have reached this project's cap of {project.annotator_cap} judgements.")
    expires = now + timedelta(seconds=project.lock_ttl_seconds)
    if project.gold_rate > 0 and rng.random() < project.gold_rate:
        gold = _free_item(project, user, gold=True)
        locked = None if gold is None else _lock(project, gold[0], user, None, now, expires)
        if locked is not None:
            return task_data(project, locked, gold[0], expires)
    skip_locked = connection.features.has_select_for_update_skip_locked
    attempts = 25  # PostgreSQL: each look is a new statement, with a fresh snapshot (READ COMMITTED)
    for attempt in range(attempts):
        if skip_locked:
            # PostgreSQL: the item row locked so that two transactions cannot both take its last
            # slot, rows another annotator's transaction is locking right now skipped; the
            # assignment written and the task read by the same statement
            task = _take_free_item(project, user, now, expires)
            if task is not None:
                return task
            if attempt < attempts - 1 and _free_item(project, user, gold=False) is not None:
                continue  # every free item is being handed out to someone else: look again
            break
        candidate = _free_item(project, user, gold=False)
        if candidate is None:
            break
        item_id, held = candidate
        # SQLite: the write lock serializes writers, so the counted slots are current
        if held == 0:
            free = list(range(project.overlap))
        else:
            used = {r[0] for r in sql.rows(f"SELECT slot FROM {sql.table(Assignment)} WHERE item_id = %s "
                                           "AND slot IS NOT NULL", [item_id])}
            free = [s for s in range(project.overlap) if s not in used]
        locked = _lock(project, item_id, user, free[0], now, expires) if free else None
        if locked is not None:
            return task_data(project, locked, item_id, expires)
    else:
        return NoItem("busy", "Items are being handed out to others right now; try again.")
    if _held_by_active_locks(project, user):
        return NoItem("all_locked", "The items left are being labeled by others right now; a slot "
                      "comes free if one of them skips or their lock expires. Ask again shortly.")
    return NoItem("no_items", "Nothing left for you to label in this project right now.")


SLOT_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _task_query(source: str = "", lead: str = "") -> str:
    """The statement reading a task's rows (``lead`` columns, then item task type, prompt messages,
    and per shown response its id, position and text, in position order): of the item ``%s`` when
    ``source`` is empty, else of the item that the ``source`` row set (alias ``t``, with ``item_id``)
    names."""
    items = f"{source} t JOIN {sql.table(Item)} i ON i.id = t.item_id" if source else f"{sql.table(Item)} i"
    return (f"SELECT {lead}i.task_type, p.messages, s.response_id, s.position, r.text FROM {items} "
            f"JOIN {sql.table(Prompt)} p ON p.id = i.prompt_id "
            f"LEFT JOIN {sql.table(ItemResponse)} s ON s.item_id = i.id "
            f"LEFT JOIN {sql.table(Response)} r ON r.id = s.response_id "
            f"{'' if source else 'WHERE i.id = %s '}ORDER BY s.position")


def task_data(project: ProjectRules, assignment_id: int, item_id: int, expires_at: Any,
              shown: list[tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """A locked item as the annotator sees it: prompt and responses in their recorded order (one
    statement, or ``shown``: its rows as :func:`_task_query` reads them). Model names are hidden
    (no identity leaks)."""
    if shown is None:
        shown = sql.rows(_task_query(), [item_id])
    task_type, messages = shown[0][0], shown[0][1]
    return {
        "assignment": assignment_id, "item": item_id, "project": project.pk,
        "task_type": task_type or project.task_type,
        "expires_at": expires_at.isoformat(), "lock_ttl_seconds": project.lock_ttl_seconds,
        "prompt": sql.py_json(messages),
        "responses": [{"id": rid, "position": pos, "label": SLOT_LABELS[pos % 26], "text": text}
                      for _, _, rid, pos, text in shown if rid is not None],
        "criteria": project.criteria_list(), "likert_max": project.likert_max,
        "allow_strength": project.allow_strength,
    }


def next_or_reason(project: Project | ProjectRules | int, user: Any) -> dict[str, Any]:
    """:func:`next_item`, or ``{"assignment": None, "reason", "detail"}`` when there is nothing to do
    (the body of ``POST …/next/`` and the ``next`` of a submission)."""
    try:
        return next_item(project, user)
    except NoItem as e:
        return {"assignment": None, "reason": e.reason, "detail": e.detail}


def own_active_assignment(assignment: Assignment, user: Any, doing: str, *, for_update: bool = True) -> Assignment:
    """The assignment row (locked for update unless ``for_update`` is False: a read); refused
    unless it is ``user``'s and still active."""
    rows = Assignment.objects.select_for_update(of=("self",)) if for_update else Assignment.objects
    a = rows.select_related("project").get(pk=assignment.pk)
    if a.annotator_id != user.pk:
        raise StudioAPIError("not_your_item", "This item is locked for another annotator.",
                             "Ask for your next item.", status_code=403)
    if a.status != ASSIGN_ACTIVE:
        raise StudioAPIError("not_active", f"This assignment is {a.status}; {doing}.",
                             "Ask for your next item.", status_code=409)
    return a


def skip_assignment(assignment: Assignment, user: Any) -> Assignment:
    """Give an item back; the slot is freed and the item is not offered to this user again."""
    with write_transaction():
        a = own_active_assignment(assignment, user, "it cannot be skipped")
        a.status, a.slot, a.finished_at = ASSIGN_SKIPPED, None, timezone.now()
        a.save(update_fields=["status", "slot", "finished_at"])
        publish("labeling.skipped", {"project": a.project_id, "item": a.item_id},
                group=f"labeling.project.{a.project_id}")
    return a


LOCK_MAX_HOLD_FACTOR = 6  # a lock can be extended until this many lock times after it was handed out


def extend_lock(assignment: Assignment, user: Any) -> Assignment:
    """Push an active lock's expiry to now + the project's lock time (the page's heartbeat while
    the annotator works). Refused with a reason: someone else's item (403), a lock that is no longer
    active or has already expired, or one held for longer than ``LOCK_MAX_HOLD_FACTOR`` lock times (409).
    """
    with write_transaction():
        a = own_active_assignment(assignment, user, "its lock cannot be extended")
        now = timezone.now()
        ttl = a.project.lock_ttl_seconds
        if a.expires_at <= now:
            raise StudioAPIError("lock_expired", f"Your lock on this item expired at {a.expires_at:%H:%M:%S} UTC "
                                 "and the item may have gone to someone else.", "Ask for your next item.",
                                 status_code=409)
        limit = a.created_at + timedelta(seconds=LOCK_MAX_HOLD_FACTOR * ttl)
        if now >= limit:
            raise StudioAPIError("lock_limit", f"This item has been locked for you since {a.created_at:%H:%M:%S} UTC; "
                                 f"a lock can be held for at most {LOCK_MAX_HOLD_FACTOR * ttl} s.",
                                 "Submit or skip it; other annotators are waiting for items.", status_code=409)
        a.expires_at = min(now + timedelta(seconds=ttl), limit)
        a.save(update_fields=["expires_at"])
    return a


# ---- judgements --------------------------------------------------------------------------------

def validate_answer(task_type: str, response_ids: list[int], data: dict[str, Any], *, allow_strength: bool = True,
                    criteria: list[str] | None = None, likert_max: int = 5) -> dict[str, Any]:
    """Check an answer against the task and return the judgement fields to store (pure)."""
    out: dict[str, Any] = {}
    if task_type == TASK_PAIRWISE:
        choice = data.get("choice")
        if choice not in dict(CHOICES):
            raise _invalid("choice", "must be one of a, b, tie, both_bad")
        out["choice"] = choice
        strength = data.get("strength")
        if strength is not None:
            if not allow_strength:
                raise _invalid("strength", "this project does not ask for a strength")
            if not isinstance(strength, int) or isinstance(strength, bool) or not -3 <= strength <= 3:
                raise _invalid("strength", "must be a whole number from -3 (A much better) to +3 (B much better)")
            ok = {"a": strength < 0, "b": strength > 0, "tie": strength == 0, "both_bad": strength == 0}[choice]
            if not ok:
                raise _invalid("strength", f"strength {strength:+d} contradicts choice '{choice}'",
                               "Negative strengths favour A, positive favour B, 0 is a tie.")
            out["strength"] = strength
    elif task_type == TASK_RANKING:
        ranking = data.get("ranking")
        if not isinstance(ranking, list) or sorted(ranking) != sorted(response_ids):
            raise _invalid("ranking", f"must list every response id once, best first: {sorted(response_ids)}")
        out["ranking"] = ranking
    elif task_type == TASK_RATING:
        ratings = data.get("ratings")
        crit = criteria or []
        if not isinstance(ratings, dict):
            raise _invalid("ratings", "must map response id → {criterion: score}")
        clean = {}
        for rid in response_ids:
            given = ratings.get(str(rid), ratings.get(rid))
            if not isinstance(given, dict):
                raise _invalid("ratings", f"missing ratings for response {rid}")
            row = {}
            for c in crit:
                v = given.get(c)
                if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= likert_max:
                    raise _invalid("ratings", f"response {rid}, {c}: give a whole number from 1 to {likert_max}")
                row[c] = v
            clean[str(rid)] = row
        out["ratings"] = clean
    elif task_type == TASK_CORRECTION:
        text = data.get("corrected_text")
        if not isinstance(text, str) or not text.strip():
            raise _invalid("corrected_text", "write the corrected answer")
        out["corrected_text"] = text
    if isinstance(data.get("corrected_text"), str) and data["corrected_text"].strip():
        out["corrected_text"] = data["corrected_text"]  # optional rewrite on any task
    if isinstance(data.get("comment"), str):
        out["comment"] = data["comment"][:5000]
    t = data.get("time_on_task_ms")
    if t is not None:
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise _invalid("time_on_task_ms", "must be a non-negative whole number of milliseconds")
        out["time_on_task_ms"] = min(t, MAX_TIME_ON_TASK_MS)
    return out


def gold_correct(is_gold: bool, gold_answer: dict[str, Any] | None, fields: dict[str, Any]) -> bool | None:
    """Whether an answer matches the item's gold answer (None: not a gold item, or no answer to compare)."""
    gold = gold_answer or {}
    if not is_gold or not gold:
        return None
    if "choice" in gold:
        return fields.get("choice") == gold["choice"]
    if "ranking" in gold:
        return fields.get("ranking") == gold["ranking"]
    return None


def _answer_fields(kind: str, item_id: int, project: Any, data: dict[str, Any]) -> dict[str, Any]:
    ids: list[int] = []
    if kind in (TASK_RANKING, TASK_RATING):  # only these answers name response ids
        ids = [r[0] for r in sql.rows(f"SELECT response_id FROM {sql.table(ItemResponse)} WHERE item_id = %s "
                                      "ORDER BY position", [item_id])]
    return validate_answer(kind, ids, data, allow_strength=project.allow_strength,
                           criteria=project.criteria_list(), likert_max=project.likert_max)


# a judgement's columns in the API's order (JudgementSerializer); judgement_data renames the keys
JUDGEMENT_COLUMNS = ("id", "project_id", "item_id", "assignment_id", "annotator_id", "choice", "strength", "ranking",
                     "ratings", "corrected_text", "label", "comment", "time_on_task_ms", "client_token", "is_gold",
                     "imported", "edit_count", "created_at", "updated_at")
_API_NAMES = {c: c[:-3] if c.endswith("_id") and c != "id" else c for c in JUDGEMENT_COLUMNS}


def judgement_data(row: tuple[Any, ...] | dict[str, Any]) -> dict[str, Any]:
    """A judgement row (``JUDGEMENT_COLUMNS``, as stored) in the API's shape (that of
    :class:`labeling.serializers.JudgementSerializer`)."""
    values = row if isinstance(row, dict) else dict(zip(JUDGEMENT_COLUMNS, row))
    out = {_API_NAMES[c]: values[c] for c in JUDGEMENT_COLUMNS}
    out["ranking"], out["ratings"] = sql.py_json(out["ranking"]), sql.py_json(out["ratings"])
    for k in ("is_gold", "imported"):
        out[k] = bool(out[k])
    if out["label"] is not None:
        out["label"] = bool(out["label"])
    out["created_at"] = sql.api_datetime(sql.py_datetime(out["created_at"]))
    out["updated_at"] = sql.api_datetime(sql.py_datetime(out["updated_at"]))
    return out


def _stored_for_token(user: Any, client_token: str | None) -> tuple[dict[str, Any], bool, int] | None:
    """What :func:`_submit` returns for a submission whose client token is already stored: the
    stored judgement (``created=False``) and its project; refused when the token is another
    annotator's (409 ``token_in_use``); None for a new token (or none)."""
    if not client_token:
        return None
    existing = sql.one(f"SELECT {', '.join(JUDGEMENT_COLUMNS)} FROM {sql.table(Judgement)} WHERE client_token = %s",
                       [client_token])
    if existing is None:
        return None
    if existing[JUDGEMENT_COLUMNS.index("annotator_id")] != user.pk:
        raise StudioAPIError("token_in_use", "This client token belongs to another judgement.",
                             "Use a fresh random token per judgement.", status_code=409)
    return judgement_data(existing), False, existing[JUDGEMENT_COLUMNS.index("project_id")]


def _submit(user: Any, assignment_id: int, data: dict[str, Any],
            client_token: str | None) -> tuple[dict[str, Any], bool, ProjectRules | int]:
    """Record a judgement for the user's locked item, in the caller's transaction. Returns
    ``(judgement, created, project)``: the judgement in the API's shape (:func:`judgement_data`), and
    the project's rules as read for it (its id when the judgement was already stored), for
    :func:`next_or_reason`.

    The same ``client_token`` sent again returns the stored judgement (``created=False``). Refused
    with a reason: someone else's item (403), an expired lock, a skipped or already judged item (409).
    """
    if client_token is not None and (not isinstance(client_token, str) or not 1 <= len(client_token) <= 100):
        raise _invalid("client_token", "must be text of 1 to 100 characters (a UUID is a good choice)")
    again = _stored_for_token(user, client_token)
    if again is not None:
        return again
    # lock the assignment row only: locking the joined item and project rows as well would queue
    # every submission of a project behind one another on PostgreSQL
    row = sql.one(
        "SELECT a.annotator_id, a.status, a.expires_at, a.project_id, a.item_id, i.is_gold, i.gold_answer, "
        f"i.task_type, {', '.join('p.' + f for f in RULE_FIELDS)} "
        f"FROM {sql.table(Assignment)} a JOIN {sql.table(Item)} i ON i.id = a.item_id "
        f"JOIN {sql.table(Project)} p ON p.id = a.project_id WHERE a.id = %s"
        + (" FOR UPDATE OF a" if connection.features.has_select_for_update_of else ""), [assignment_id])
    if row is None:
        raise StudioAPIError("not_found", f"No assignment {assignment_id}.", "Ask for your next item.",
                             status_code=404)
    annotator_id, status, expires_at, project_id, item_id, is_gold, gold_answer, item_task = row[:8]
    project = _rules_from_row(project_id, row[8:])
    if annotator_id != user.pk:
        raise StudioAPIError("not_your_item", "This item is assigned to another annotator.",
                             "Ask for your next item; you can only judge items locked for you.", status_code=403)
    now = timezone.now()
    expires_at = sql.py_datetime(expires_at)
    if status == ASSIGN_SUBMITTED:
        # the same submission sent twice at once: the first one committed while this one waited
        # for the assignment's row lock, after its token look-up; now the stored judgement shows
        again = _stored_for_token(user, client_token)
        if again is not None:
            return again
        raise StudioAPIError("already_submitted", "You have already judged this item.",
                             "Edit your judgement instead (PATCH /api/labeling/judgements/<id>/) within the "
                             "edit window.", status_code=409)
    if status == ASSIGN_SKIPPED:
        raise StudioAPIError("skipped", "You skipped this item.", "Ask for your next item.", status_code=409)
    if status == ASSIGN_EXPIRED or expires_at <= now:
        raise StudioAPIError("lock_expired", f"Your lock on this item expired at {expires_at:%H:%M:%S} UTC "
                             "and the item may have gone to someone else.",
                             "Ask for your next item; answer within the project's lock time "
                             f"({project.lock_ttl_seconds} s).", status_code=409)
    is_gold = bool(is_gold)
    fields = _answer_fields(item_task or project.task_type, item_id, project, data)
    values = {"project_id": project_id, "item_id": item_id, "assignment_id": assignment_id,
              "annotator_id": user.pk, "choice": "", "strength": None, "ranking": [], "ratings": {},
              "corrected_text": "", "label": None, "comment": "", "time_on_task_ms": None,
              "client_token": client_token or None, "is_gold": is_gold, "imported": False, "edit_count": 0,
              "created_at": now, "updated_at": now}
    values.update(fields)
    at = sql.db_datetime(now)
    stored = {**values, "ranking": sql.db_json(Judgement, "ranking", values["ranking"]),
              "ratings": sql.db_json(Judgement, "ratings", values["ratings"]),
              "gold_correct": gold_correct(is_gold, sql.py_json(gold_answer), fields),
              "created_at": at, "updated_at": at}
    writes = [(f"UPDATE {sql.table(Assignment)} SET status = %s, finished_at = %s WHERE id = %s",
               [ASSIGN_SUBMITTED, at, assignment_id])]
    if not is_gold:
        writes.append((f"UPDATE {sql.table(Item)} SET submitted_count = submitted_count + 1, "
                       "complete = CASE WHEN submitted_count >= %s THEN %s ELSE complete END WHERE id = %s",
                       [project.overlap - 1, True, item_id]))
    event = Event(group=f"labeling.project.{project_id}", kind="labeling.judgement", created_at=now,
                  payload={"project": project_id, "item": item_id, "annotator": user.pk, "gold": is_gold})
    if connection.vendor == "postgresql":
        # one statement: the updates, the judgement, and its event (whose payload names the
        # judgement's new id) as CTEs
        ctes = ", ".join(f"w{n} AS ({q})" for n, (q, _) in enumerate(writes))
        event_cols = ", ".join(connection.ops.quote_name(c) for c in ("group", "kind", "payload", "created_at"))
        values["id"], event.id = sql.one(
            f"WITH {ctes}, j AS ({sql.insert_statement(Judgement, stored)} RETURNING id), "
            f"e AS (INSERT INTO {sql.table(Event)} ({event_cols}) SELECT %s, %s, "
            "%s || jsonb_build_object('judgement', j.id), %s FROM j RETURNING id) SELECT j.id, e.id FROM j, e",
            [*(p for _, ps in writes for p in ps), *stored.values(), event.group, event.kind,
             sql.db_json(Event, "payload", event.payload), at])
        event.payload["judgement"] = values["id"]
    else:
        values["id"] = sql.insert(Judgement, stored)
        for query, params in writes:
            sql.execute(query, params)
        event.payload["judgement"] = values["id"]
        event.id = sql.insert(Event, {"group": event.group, "kind": event.kind, "created_at": at,
                                      "payload": sql.db_json(Event, "payload", event.payload)})
    deliver(event)
    return judgement_data(values), True, project


def submit_judgement(user: Any, data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Record a submission as ``JudgementInputSerializer`` validates it (``assignment``, the answer
    fields, optional ``client_token`` and ``next``): ``(body, created)``. With ``next`` the body holds
    the next item (:func:`next_or_reason`) under ``next``, in the same transaction (on SQLite one
    turn of the write lock instead of two). The DRF view and :mod:`labeling.lean` both call it."""
    data = dict(data)
    assignment_id = data.pop("assignment")
    client_token = data.pop("client_token", None)
    want_next = data.pop("next", False)
    with write_transaction():  # no savepoint for the submission: if it fails, nothing is kept
        body, created, project = _submit(user, assignment_id, data, client_token)
        if want_next:
            body["next"] = next_or_reason(project, user)
    return body, created


def edit_judgement(judgement: Judgement, user: Any, data: dict[str, Any]) -> Judgement:
    """Change one's own judgement within the project's edit window."""
    with write_transaction():
        j = Judgement.objects.select_for_update(of=("self",)).select_related("item", "project").get(pk=judgement.pk)
        if j.annotator_id != user.pk:
            raise StudioAPIError("not_your_judgement", "You can only edit your own judgements.",
                                 status_code=403)
        if j.imported:
            raise StudioAPIError("imported", "Imported judgements cannot be edited.", status_code=409)
        deadline = j.created_at + timedelta(seconds=j.project.edit_window_seconds)
        if timezone.now() > deadline:
            raise StudioAPIError("edit_window_closed", f"The edit window closed at {deadline:%Y-%m-%d %H:%M:%S} UTC.",
                                 f"Judgements can be edited for {j.project.edit_window_seconds} s; "
                                 "report a problem to a moderator instead.", status_code=409)
        merged = {"choice": j.choice or None, "strength": j.strength, "ranking": j.ranking, "ratings": j.ratings,
                  "corrected_text": j.corrected_text, "time_on_task_ms": j.time_on_task_ms}
        merged.update({k: v for k, v in data.items() if k in merged or k == "comment"})
        if "choice" in data and "strength" not in data:
            merged["strength"] = None
        fields = _answer_fields(j.item.kind, j.item_id, j.project, merged)
        for k in ("choice", "strength", "ranking", "ratings", "corrected_text"):
            default = "" if k in ("choice", "corrected_text") else ([] if k == "ranking" else
                                                                     ({} if k == "ratings" else None))
            setattr(j, k, fields.get(k, default))
        if "time_on_task_ms" in fields:
            j.time_on_task_ms = fields["time_on_task_ms"]
        if "comment" in fields:
            j.comment = fields["comment"]
        j.gold_correct = gold_correct(j.item.is_gold, j.item.gold_answer, fields)
        j.edit_count += 1
        j.save()
        publish("labeling.judgement.edited", {"project": j.project_id, "item": j.item_id, "judgement": j.pk},
                group=f"labeling.project.{j.project_id}")
    return j


# ---- reports -----------------------------------------------------------------------------------

def create_report(user: Any, data: dict[str, Any]) -> Report:
    """File a report (any signed-in user). ``data`` is validated by the serializer."""
    if data.get("category") not in dict(REPORT_CATEGORIES):
        raise _invalid("category", f"one of {', '.join(dict(REPORT_CATEGORIES))}")
    if data.get("bias_kind") and data.get("category") != "bias":
        raise _invalid("bias_kind", "only for category 'bias'")
    if data.get("bias_kind") and data["bias_kind"] not in dict(BIAS_KINDS):
        raise _invalid("bias_kind", f"one of {', '.join(dict(BIAS_KINDS))}")
    if data.get("severity", "medium") not in dict(SEVERITIES):
        raise _invalid("severity", f"one of {', '.join(dict(SEVERITIES))}")
    response = data.get("response")
    item = data.get("item")
    fields = {k: data[k] for k in ("category", "bias_kind", "severity", "description", "source", "model_name")
              if data.get(k) is not None}
    text = data.get("response_text") or (response.text if response else "")
    messages = data.get("prompt_messages") or (response.prompt.messages if response else [])
    project = data.get("project") or (item.project if item else (response.prompt.project if response else None))
    if response and not fields.get("model_name"):
        fields["model_name"] = response.model_name
    if not text:
        raise _invalid("response_text", "say which answer you are reporting (response_text or response)")
    with transaction.atomic():
        report = Report.objects.create(reporter=user, response=response, item=item, project=project,
                                       response_text=text, prompt_messages=messages, **fields)
        publish("labeling.report.created", {"report": report.pk, "category": report.category,
                                            "severity": report.severity}, group="labeling.reports", actor=user)
    return report


def _transition(report: Report, moderator: Any, to: str, allowed_from: tuple[str, ...], **changes: Any) -> Report:
    with transaction.atomic():
        r = Report.objects.select_for_update().get(pk=report.pk)
        if r.status not in allowed_from:
            raise StudioAPIError("invalid_transition", f"A {r.status} report cannot become {to}.",
                                 "Reports go open → triaged → resolved or dismissed.", status_code=409)
        now = timezone.now()
        r.status, r.moderator = to, moderator
        if to == REPORT_TRIAGED:
            r.triaged_at = now
        else:
            r.closed_at = now
            r.triaged_at = r.triaged_at or now
        for k, v in changes.items():
            setattr(r, k, v)
        r.save()
        publish(f"labeling.report.{to}", {"report": r.pk, "category": r.category, "corrected": bool(r.corrected_text)},
                group="labeling.reports", actor=moderator)
    return r


def triage_report(report: Report, moderator: Any, note: str = "", severity: str | None = None) -> Report:
    changes: dict[str, Any] = {"resolution_note": note} if note else {}
    if severity:
        if severity not in dict(SEVERITIES):
            raise _invalid("severity", f"one of {', '.join(dict(SEVERITIES))}")
        changes["severity"] = severity
    return _transition(report, moderator, REPORT_TRIAGED, (REPORT_OPEN,), **changes)


def resolve_report(report: Report, moderator: Any, corrected_text: str = "", note: str = "") -> Report:
    """Resolve; a corrected answer becomes a preference pair (corrected ≻ reported) and a KTO
    negative in the next snapshot, keeping the report's category as metadata."""
    return _transition(report, moderator, REPORT_RESOLVED, (REPORT_OPEN, REPORT_TRIAGED),
                       corrected_text=corrected_text.strip(), resolution_note=note)


def dismiss_report(report: Report, moderator: Any, note: str = "") -> Report:
    return _transition(report, moderator, REPORT_DISMISSED, (REPORT_OPEN, REPORT_TRIAGED), resolution_note=note)


# ---- snapshots ---------------------------------------------------------------------------------

def build_snapshot_payload(project: Project | None) -> dict[str, Any]:
    """Plain data for a snapshot: judged items with their prompts, responses (shown order) and
    judgements, plus resolved reports that carry a correction."""
    items_out = []
    if project is not None:
        items = (Item.objects.filter(project=project, judgements__isnull=False).distinct()
                 .select_related("prompt").prefetch_related("slots__response", "judgements").order_by("id"))
        for item in items:
            responses = [ir.response for ir in sorted(item.slots.all(), key=lambda s: s.position)]
            items_out.append({
                "id": item.pk, "external_id": item.prompt.external_id, "task_type": item.kind,
                "criteria": project.criteria_list(), "likert_max": project.likert_max,
                "prompt": item.prompt.messages, "category": (item.prompt.metadata or {}).get("category"),
                "gold": item.is_gold,
                # agreement an imported record arrived with (its votes are not in this database)
                **{k: item.prompt.metadata[k] for k in ("agreement", "n_votes") if k in (item.prompt.metadata or {})},
                "responses": [{"id": r.pk, "text": r.text, "model": r.model_name, "source": r.source_kind}
                              for r in responses],
                "judgements": [{
                    "id": j.pk, "annotator": j.annotator_id, "choice": j.choice or None, "strength": j.strength,
                    "ranking": j.ranking, "ratings": j.ratings, "corrected_text": j.corrected_text or None,
                    "label": j.label, "time_ms": j.time_on_task_ms, "imported": j.imported,
                    "gold_correct": j.gold_correct, "created_at": j.created_at.isoformat(),
                } for j in sorted(item.judgements.all(), key=lambda j: j.pk)],
            })
    reports = Report.objects.filter(status=REPORT_RESOLVED).exclude(corrected_text="").order_by("id")
    reports = reports.filter(project=project) if project is not None else reports.filter(project__isnull=True)
    reports_out = [{"id": r.pk, "prompt": r.prompt_messages or [{"role": "user", "content": ""}],
                    "response": r.response_text, "model": r.model_name, "corrected": r.corrected_text,
                    "category": r.category, "bias_kind": r.bias_kind or None, "severity": r.severity}
                   for r in reports]
    return {
        "format": 1,
        "project": None if project is None else {
            "id": project.pk, "name": project.name, "task_type": project.task_type,
            "guidelines_version": project.guidelines_version, "overlap": project.overlap},
        "items": items_out,
        "reports": reports_out,
    }


def create_snapshot(user: Any, project: Project | None, note: str = "") -> Snapshot:
    """Freeze the current judgements and corrections as the next version (immutable)."""
    with transaction.atomic():
        if project is not None:
            Project.objects.select_for_update().get(pk=project.pk)  # serialize version numbers
        payload = build_snapshot_payload(project)
        canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        last = Snapshot.objects.filter(project=project).order_by("-version").values_list("version", flat=True).first()
        counts = {"items": len(payload["items"]),
                  "judgements": sum(len(i["judgements"]) for i in payload["items"]),
                  "reports": len(payload["reports"])}
        snap = Snapshot.objects.create(project=project, version=(last or 0) + 1, note=note[:300],
                                       guidelines_version=project.guidelines_version if project else None,
                                       payload=payload, content_sha256=hashlib.sha256(canonical.encode()).hexdigest(),
                                       counts=counts, created_by=user)
        publish("labeling.snapshot.created", {"snapshot": snap.pk, "label": snap.label, **counts},
                group=project.event_group if project else "labeling.reports", actor=user)
    return snap
