"""Human feedback records: projects, prompts, responses, items, assignments, judgements, reports
and immutable snapshots.

The database backs the labeling rules: one judgement per (item, annotator), one judgement per
client token, one assignment per (item, annotator), at most one holder per (item, slot) — an item
with overlap N hands out slots 0..N-1 only (enforced in :mod:`labeling.actions` inside the
assignment transaction) — and checks on strengths, choices and statuses. Only
:mod:`labeling.actions` changes these records.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

TASK_PAIRWISE, TASK_RANKING, TASK_RATING, TASK_CORRECTION = "pairwise", "ranking", "rating", "correction"
TASK_TYPES = [
    (TASK_PAIRWISE, "Pairwise A/B (tie, both bad, strength −3…+3)"),
    (TASK_RANKING, "K-way ranking"),
    (TASK_RATING, "Likert ratings per criterion"),
    (TASK_CORRECTION, "Corrected answer (free text)"),
]
DEFAULT_CRITERIA = ["helpful", "harmless", "honest"]

CHOICE_A, CHOICE_B, CHOICE_TIE, CHOICE_BOTH_BAD = "a", "b", "tie", "both_bad"
CHOICES = [(CHOICE_A, "A is better"), (CHOICE_B, "B is better"), (CHOICE_TIE, "Tie"),
           (CHOICE_BOTH_BAD, "Both are bad")]

SOURCE_CHECKPOINT, SOURCE_MODEL, SOURCE_HUMAN, SOURCE_FILE = "checkpoint", "model", "human", "file"
SOURCE_KINDS = [(SOURCE_CHECKPOINT, "Studio checkpoint"), (SOURCE_MODEL, "Imported model"),
                (SOURCE_HUMAN, "Written by a person"), (SOURCE_FILE, "Imported file")]

REPORT_CATEGORIES = [
    ("bias", "Bias"), ("toxicity", "Toxicity"), ("personal_data", "Personal data"),
    ("misinformation", "Misinformation"), ("unsafe_advice", "Unsafe advice"), ("other", "Other"),
]
BIAS_KINDS = [
    ("gender", "Gender"), ("race_ethnicity", "Race / ethnicity"), ("religion", "Religion"), ("age", "Age"),
    ("disability", "Disability"), ("nationality", "Nationality"), ("sexual_orientation", "Sexual orientation"),
    ("socio_economic", "Socio-economic"), ("other", "Other"),
]
SEVERITIES = [("low", "Low"), ("medium", "Medium"), ("high", "High"), ("critical", "Critical")]
REPORT_OPEN, REPORT_TRIAGED, REPORT_RESOLVED, REPORT_DISMISSED = "open", "triaged", "resolved", "dismissed"
REPORT_STATUSES = [(REPORT_OPEN, "Open"), (REPORT_TRIAGED, "Triaged"), (REPORT_RESOLVED, "Resolved"),
                   (REPORT_DISMISSED, "Dismissed")]
REPORT_SOURCES = [("playground", "Chat playground"), ("api", "API"), ("annotator", "Annotator")]

# what annotators see of the tools' models' pre-annotations (Prompt.metadata["pre_annotations"])
PRE_HIDDEN, PRE_SHOWN, PRE_PREFILLED = "hidden", "shown", "prefilled"
PRE_ANNOTATION_MODES = [(PRE_HIDDEN, "Hidden: annotators never see the models' suggestions"),
                        (PRE_SHOWN, "Shown under the answers"),
                        (PRE_PREFILLED, "Shown, and the answer form starts from the suggestion")]

ASSIGN_ACTIVE, ASSIGN_SUBMITTED, ASSIGN_SKIPPED, ASSIGN_EXPIRED = "active", "submitted", "skipped", "expired"
ASSIGN_STATUSES = [(ASSIGN_ACTIVE, "Active"), (ASSIGN_SUBMITTED, "Submitted"), (ASSIGN_SKIPPED, "Skipped"),
                   (ASSIGN_EXPIRED, "Expired")]


class Project(models.Model):
    """A labeling project: what annotators see, how many judge each item, and the QC thresholds."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="Markdown, shown beside every task")
    guidelines_version = models.PositiveIntegerField(default=1)
    task_type = models.CharField(max_length=20, choices=TASK_TYPES, default=TASK_PAIRWISE)
    criteria = models.JSONField(default=list, blank=True, help_text="Likert criteria for rating tasks")
    likert_max = models.PositiveSmallIntegerField(default=5)
    allow_strength = models.BooleanField(default=True, help_text="pairwise: ask for a strength −3…+3")
    overlap = models.PositiveSmallIntegerField(default=1, help_text="annotators per item")
    gold_rate = models.FloatField(default=0.0, help_text="share of tasks drawn from gold items")
    annotator_cap = models.PositiveIntegerField(null=True, blank=True, help_text="judgements per annotator")
    lock_ttl_seconds = models.PositiveIntegerField(default=600)
    edit_window_seconds = models.PositiveIntegerField(default=900)
    gold_warn_accuracy = models.FloatField(default=0.8)
    gold_block_accuracy = models.FloatField(default=0.6)
    gold_min_judged = models.PositiveSmallIntegerField(default=5, help_text="gold answers before blocking")
    pre_annotations = models.CharField(
        max_length=10, choices=PRE_ANNOTATION_MODES, default=PRE_HIDDEN,
        help_text="imported model suggestions on the annotator page: hidden, shown, or shown and pre-filled "
                  "(anchoring: annotators tend to agree with what they are shown)")
    archived = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="labeling_project_overlap_ge_1"),
            models.CheckConstraint(condition=Q(gold_rate__gte=0) & Q(gold_rate__lte=1),
                                   name="labeling_project_gold_rate_0_1"),
            models.CheckConstraint(condition=Q(likert_max__gte=2), name="labeling_project_likert_ge_2"),
            models.CheckConstraint(condition=Q(task_type__in=[t for t, _ in TASK_TYPES]),
                                   name="labeling_project_task_type"),
            models.CheckConstraint(condition=Q(pre_annotations__in=[m for m, _ in PRE_ANNOTATION_MODES]),
                                   name="labeling_project_pre_annotations"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def event_group(self) -> str:
        return f"labeling.project.{self.pk}"

    def criteria_list(self) -> list[str]:
        return list(self.criteria or DEFAULT_CRITERIA) if self.task_type == TASK_RATING else []


class Prompt(models.Model):
    """A single- or multi-turn prompt: ``messages`` is a list of ``{"role", "content"}``."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    messages = models.JSONField()
    external_id = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.text[:60]

    @property
    def text(self) -> str:
        """The last user turn (what a single-turn prompt shows)."""
        users = [m["content"] for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""


class Response(models.Model):
    """A candidate answer to a prompt, with where it came from."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="responses")
    text = models.TextField()
    source_kind = models.CharField(max_length=20, choices=SOURCE_KINDS, default=SOURCE_FILE)
    model_name = models.CharField(max_length=200, blank=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="labeling_responses", help_text="who wrote it (no self-review)")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.model_name or self.source_kind}: {self.text[:40]}"


class Item(models.Model):
    """What one task shows: a prompt and 1..K responses in a randomized, recorded order."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="items")
    task_type = models.CharField(max_length=20, choices=TASK_TYPES, blank=True,
                                 help_text="blank: the project's; imports of preference data set pairwise")
    is_gold = models.BooleanField(default=False)
    # gold answer: {"choice": "a"|"b"|"tie"|"both_bad"} for pairwise, {"ranking": [response ids]} …
    gold_answer = models.JSONField(default=dict, blank=True)
    submitted_count = models.PositiveIntegerField(default=0)
    complete = models.BooleanField(default=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["project", "complete", "is_gold", "id"])]

    def __str__(self) -> str:
        return f"item {self.pk}"

    @property
    def kind(self) -> str:
        return self.task_type or self.project.task_type

    def shown_responses(self) -> list[Response]:
        """Responses in the order they are shown (position 0 is A / left)."""
        return [ir.response for ir in self.slots.select_related("response").order_by("position")]


class ItemResponse(models.Model):
    """Position of a response inside an item (the randomized order, recorded)."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="slots")
    response = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["item_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["item", "position"], name="labeling_itemresponse_position"),
            models.UniqueConstraint(fields=["item", "response"], name="labeling_itemresponse_once"),
        ]


class Assignment(models.Model):
    """A time-limited lock on an item for one annotator.

    ``slot`` is 0..overlap-1 while the assignment holds a place (active or submitted) and NULL once it
    is skipped or expired, so ``unique(item, slot)`` means no item is held by more annotators than
    its overlap allows. Gold items are shown to everyone and hold no slot.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="assignments")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                  related_name="labeling_assignments")
    slot = models.PositiveSmallIntegerField(null=True, blank=True)
    status = models.CharField(max_length=12, choices=ASSIGN_STATUSES, default=ASSIGN_ACTIVE)
    is_gold = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="labeling_assignment_once_per_annotator"),
            models.UniqueConstraint(fields=["item", "slot"], name="labeling_assignment_slot"),
            models.CheckConstraint(condition=Q(status__in=[s for s, _ in ASSIGN_STATUSES]),
                                   name="labeling_assignment_status"),
            models.CheckConstraint(
                condition=Q(status__in=[ASSIGN_SKIPPED, ASSIGN_EXPIRED], slot__isnull=True)
                | Q(status__in=[ASSIGN_ACTIVE, ASSIGN_SUBMITTED]),
                name="labeling_assignment_released_has_no_slot"),
        ]
        indexes = [models.Index(fields=["project", "status", "expires_at"]),
                   models.Index(fields=["annotator", "project", "status"])]


class Judgement(models.Model):
    """One annotator's answer on one item.

    Pairwise: ``choice`` a/b/tie/both_bad (a = position 0, shown left) and an optional ``strength``
    −3…+3 (negative: A better, positive: B better). Ranking: ``ranking`` lists response ids, best
    first. Rating: ``ratings`` maps criterion → 1..likert_max (one dict per response id under
    ``ratings[str(response_id)]``). Correction: ``corrected_text``. ``label`` is a binary
    desirability (KTO imports).
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judgements")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="judgements")
    assignment = models.OneToOneField(Assignment, null=True, blank=True, on_delete=models.SET_NULL,
                                      related_name="judgement")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                  related_name="labeling_judgements")
    choice = models.CharField(max_length=10, choices=CHOICES, blank=True)
    strength = models.SmallIntegerField(null=True, blank=True)
    ranking = models.JSONField(default=list, blank=True)
    ratings = models.JSONField(default=dict, blank=True)
    corrected_text = models.TextField(blank=True)
    label = models.BooleanField(null=True, blank=True)
    comment = models.TextField(blank=True)
    time_on_task_ms = models.PositiveIntegerField(null=True, blank=True)
    client_token = models.CharField(max_length=100, null=True, blank=True, unique=True)
    is_gold = models.BooleanField(default=False)
    gold_correct = models.BooleanField(null=True, blank=True)
    imported = models.BooleanField(default=False)
    edit_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="labeling_judgement_once_per_annotator"),
            models.CheckConstraint(condition=Q(strength__isnull=True) | (Q(strength__gte=-3) & Q(strength__lte=3)),
                                   name="labeling_judgement_strength_range"),
            models.CheckConstraint(condition=Q(choice__in=["", *[c for c, _ in CHOICES]]),
                                   name="labeling_judgement_choice"),
        ]
        indexes = [models.Index(fields=["project", "annotator"])]


class Report(models.Model):
    """A report of a harmful or biased answer, triaged by moderators; a correction becomes data."""

    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="reports")
    item = models.ForeignKey(Item, null=True, blank=True, on_delete=models.SET_NULL, related_name="reports")
    response = models.ForeignKey(Response, null=True, blank=True, on_delete=models.SET_NULL, related_name="reports")
    source = models.CharField(max_length=20, choices=REPORT_SOURCES, default="api")
    prompt_messages = models.JSONField(default=list, blank=True)
    response_text = models.TextField()
    model_name = models.CharField(max_length=200, blank=True)
    category = models.CharField(max_length=20, choices=REPORT_CATEGORIES)
    bias_kind = models.CharField(max_length=30, choices=BIAS_KINDS, blank=True)
    severity = models.CharField(max_length=10, choices=SEVERITIES, default="medium")
    description = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=REPORT_STATUSES, default=REPORT_OPEN, db_index=True)
    reporter = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                 related_name="labeling_reports")
    moderator = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="labeling_moderated_reports")
    corrected_text = models.TextField(blank=True)
    resolution_note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    triaged_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=[s for s, _ in REPORT_STATUSES]),
                                   name="labeling_report_status"),
            models.CheckConstraint(condition=Q(category__in=[c for c, _ in REPORT_CATEGORIES]),
                                   name="labeling_report_category"),
            models.CheckConstraint(condition=Q(bias_kind="") | Q(category="bias"),
                                   name="labeling_report_bias_kind_only_for_bias"),
            models.CheckConstraint(condition=~Q(status=REPORT_RESOLVED) | Q(moderator__isnull=False),
                                   name="labeling_report_resolved_has_moderator"),
        ]

    def __str__(self) -> str:
        return f"report {self.pk} ({self.category}, {self.status})"


class SnapshotImmutable(Exception):
    """Snapshots are never changed after they are created; create a new version instead."""


class Snapshot(models.Model):
    """An immutable, versioned copy of a project's judgements and resolved report corrections.

    ``payload`` holds plain data (see :func:`labeling.actions.build_snapshot_payload`);
    :mod:`labeling.export` turns it into training records. ``project`` NULL: report corrections
    that belong to no project (chat playground, API).
    """

    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.PROTECT, related_name="snapshots")
    version = models.PositiveIntegerField()
    note = models.CharField(max_length=300, blank=True)
    guidelines_version = models.PositiveIntegerField(null=True, blank=True)
    payload = models.JSONField()
    content_sha256 = models.CharField(max_length=64)
    counts = models.JSONField(default=dict)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="labeling_snapshot_version"),
            models.UniqueConstraint(fields=["version"], condition=Q(project__isnull=True),
                                    name="labeling_snapshot_version_global"),
        ]

    def __str__(self) -> str:
        return f"{self.project or 'reports'} v{self.version}"

    @property
    def label(self) -> str:
        return f"{self.project.name if self.project else 'reports'}@v{self.version}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not kwargs.pop("_allow_update", False):
            raise SnapshotImmutable(f"snapshot {self.label} is immutable; create a new version")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise SnapshotImmutable(f"snapshot {self.label} is immutable and cannot be deleted")
