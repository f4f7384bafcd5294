"""API shapes of the labeling app (validation of input; output of records)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from labeling.models import (
    BIAS_KINDS,
    CHOICES,
    PRE_ANNOTATION_MODES,
    REPORT_CATEGORIES,
    REPORT_SOURCES,
    SEVERITIES,
    TASK_TYPES,
    Item,
    Judgement,
    Project,
    Report,
    Response,
    Snapshot,
)


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "name", "description", "guidelines", "guidelines_version", "task_type", "criteria",
                  "likert_max", "allow_strength", "overlap", "gold_rate", "annotator_cap", "lock_ttl_seconds",
                  "edit_window_seconds", "gold_warn_accuracy", "gold_block_accuracy", "gold_min_judged",
                  "pre_annotations", "archived", "created_at"]
        read_only_fields = ["id", "guidelines_version", "created_at"]

    def validate_criteria(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
            raise serializers.ValidationError("a list of criterion names, e.g. [\"helpful\", \"harmless\"]")
        return [c.strip() for c in value]

    def validate_overlap(self, value: int) -> int:
        if not 1 <= value <= 50:
            raise serializers.ValidationError("between 1 and 50 annotators per item")
        return value

    def validate_gold_rate(self, value: float) -> float:
        if not 0 <= value <= 1:
            raise serializers.ValidationError("a share between 0 and 1, e.g. 0.1")
        return value

    def validate_lock_ttl_seconds(self, value: int) -> int:
        if value < 10:
            raise serializers.ValidationError("at least 10 seconds")
        return value


class SuggestionSerializer(serializers.Serializer):
    """One imported pre-annotation as the locked task shows it (response ids of this task only)."""

    tool = serializers.CharField(help_text="argilla or label_studio")
    source = serializers.CharField(help_text="the tool, as people call it")
    model = serializers.CharField(allow_null=True, help_text="null when the model also wrote one of the answers")
    score = serializers.JSONField(help_text="the model's score as imported: a number, a list or null")
    summary = serializers.CharField(help_text="e.g. 'Label Studio · rm-v3 · score 0.81: prefers Answer B'")
    says = serializers.ListField(child=serializers.CharField(), help_text="the summary's phrases")
    comment = serializers.CharField(allow_blank=True)
    values = serializers.DictField(child=serializers.CharField(), help_text="answers of other kinds, as JSON text")
    choice = serializers.CharField(required=False, help_text="pairwise: a, b, tie or both_bad")
    ranking = serializers.ListField(child=serializers.IntegerField(), required=False)
    preferred = serializers.IntegerField(required=False)
    ratings = serializers.DictField(required=False)


class SuggestionsSerializer(serializers.Serializer):
    assignment = serializers.IntegerField()
    item = serializers.IntegerField()
    mode = serializers.ChoiceField(choices=PRE_ANNOTATION_MODES)
    suggestions = SuggestionSerializer(many=True)
    prefill = serializers.DictField(allow_null=True, help_text="prefilled only: {suggestion, choice | ranking | ratings}")


class ImportRequestSerializer(serializers.Serializer):
    jsonl = serializers.CharField(trim_whitespace=False, help_text="one JSON object per line")
    on_error = serializers.ChoiceField(choices=["refuse", "skip"], default="refuse")


class ImportResultSerializer(serializers.Serializer):
    prompts = serializers.IntegerField()
    responses = serializers.IntegerField()
    items = serializers.IntegerField()
    judgements = serializers.IntegerField()
    suggested_responses = serializers.IntegerField(
        help_text="of the responses: candidates the tools' models wrote (Argilla suggestions, Label Studio predictions)")
    pre_annotations = serializers.IntegerField(
        help_text="the tools' models' rankings / choices / ratings of the responses, kept with the prompt "
                  "(never judgements)")
    stored = serializers.BooleanField()
    errors = serializers.ListField(child=serializers.DictField())


class ShownResponseSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    position = serializers.IntegerField()
    label = serializers.CharField()
    text = serializers.CharField()


class AssignmentSerializer(serializers.Serializer):
    assignment = serializers.IntegerField()
    item = serializers.IntegerField()
    project = serializers.IntegerField()
    task_type = serializers.CharField()
    expires_at = serializers.DateTimeField()
    lock_ttl_seconds = serializers.IntegerField()
    prompt = serializers.ListField(child=serializers.DictField())
    responses = ShownResponseSerializer(many=True)
    criteria = serializers.ListField(child=serializers.CharField())
    likert_max = serializers.IntegerField()
    allow_strength = serializers.BooleanField()


class JudgementInputSerializer(serializers.Serializer):
    """A judgement; which fields are needed depends on the project's task type."""

    assignment = serializers.IntegerField()
    client_token = serializers.CharField(required=False, allow_null=True, max_length=100,
                                         help_text="random per judgement; sending it again records nothing new")
    choice = serializers.ChoiceField(choices=[c for c, _ in CHOICES], required=False)
    strength = serializers.IntegerField(required=False, allow_null=True, min_value=-3, max_value=3,
                                        help_text="−3 (A much better) … +3 (B much better)")
    ranking = serializers.ListField(child=serializers.IntegerField(), required=False, help_text="response ids, best first")
    ratings = serializers.DictField(required=False, help_text="{response id: {criterion: 1..likert_max}}")
    corrected_text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    comment = serializers.CharField(required=False, allow_blank=True)
    time_on_task_ms = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    next = serializers.BooleanField(required=False, default=False,
                                    help_text="also lock your next item and return it under 'next' (one round trip)")


class JudgementEditSerializer(JudgementInputSerializer):
    assignment = None  # type: ignore[assignment]
    next = None  # type: ignore[assignment]


class JudgementSerializer(serializers.ModelSerializer):
    choice = serializers.CharField(read_only=True, help_text="a, b, tie, both_bad or empty")

    class Meta:
        model = Judgement
        fields = ["id", "project", "item", "assignment", "annotator", "choice", "strength", "ranking", "ratings",
                  "corrected_text", "label", "comment", "time_on_task_ms", "client_token", "is_gold", "imported",
                  "edit_count", "created_at", "updated_at"]
        read_only_fields = fields


class ReportInputSerializer(serializers.Serializer):
    category = serializers.ChoiceField(choices=REPORT_CATEGORIES)
    bias_kind = serializers.ChoiceField(choices=BIAS_KINDS, required=False, allow_blank=True)
    severity = serializers.ChoiceField(choices=SEVERITIES, default="medium")
    description = serializers.CharField(required=False, allow_blank=True, max_length=10000)
    source = serializers.ChoiceField(choices=REPORT_SOURCES, default="api")
    response_text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    prompt_messages = serializers.ListField(child=serializers.DictField(), required=False)
    model_name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    response = serializers.PrimaryKeyRelatedField(queryset=Response.objects.all(), required=False, allow_null=True)
    item = serializers.PrimaryKeyRelatedField(queryset=Item.objects.all(), required=False, allow_null=True)
    project = serializers.PrimaryKeyRelatedField(queryset=Project.objects.all(), required=False, allow_null=True)

    def validate_prompt_messages(self, value: list) -> list:
        for i, m in enumerate(value):
            if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise serializers.ValidationError(f"message {i}: {{\"role\": user|assistant|system, \"content\": text}}")
        return [{"role": m["role"], "content": m["content"]} for m in value]


class ReportSerializer(serializers.ModelSerializer):
    reporter = serializers.SlugRelatedField(slug_field="username", read_only=True)
    moderator = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Report
        fields = ["id", "project", "item", "response", "source", "prompt_messages", "response_text", "model_name",
                  "category", "bias_kind", "severity", "description", "status", "reporter", "moderator",
                  "corrected_text", "resolution_note", "created_at", "triaged_at", "closed_at"]
        read_only_fields = fields


class ReportActionSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, default="")
    corrected_text = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    severity = serializers.ChoiceField(choices=SEVERITIES, required=False)


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Snapshot
        fields = ["id", "project", "version", "label", "note", "guidelines_version", "content_sha256", "counts",
                  "created_at"]
        read_only_fields = fields


class SnapshotCreateSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=300)


TASK_TYPE_CHOICES = TASK_TYPES
