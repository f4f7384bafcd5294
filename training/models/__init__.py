"""Training records: dataset versions, tokenizers, runs, checkpoints, model artifacts, metric
history, and chat feedback (ratings and A/B preference votes).

Files live under ``STUDIO_DATA_DIR`` (``settings.DATA_DIR``): ``datasets/<id>/``,
``runs/<id>/`` (config, logs, events, checkpoints), ``shards/<dataset>-<tokenizer>/``,
``models/<id>/``. Rows only point at them. State changes go through :mod:`training.actions`.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models
from django.db.models import Q

# ---- choices ------------------------------------------------------------------------------------

RUN_KINDS = [("tokenizer", "Tokenizer"), ("pretrain", "Pretraining"), ("sft", "Supervised fine-tuning"),
             ("reward", "Reward model"), ("ppo", "PPO"), ("dpo", "DPO"), ("distill", "Distillation"),
             ("eval", "Evaluation")]
LAUNCHABLE_KINDS = ("tokenizer", "pretrain", "sft", "reward", "dpo", "ppo")
POSTTRAIN_KINDS = ("sft", "reward", "dpo", "ppo")  # fine-tuning and RLHF (training/posttrain.py)
CHAT_KINDS = ("pretrain", "sft", "dpo", "ppo")  # runs whose checkpoints are chat models

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted")
RUN_STATUSES = [(QUEUED, "Queued"), (RUNNING, "Running"), (SUCCEEDED, "Succeeded"), (FAILED, "Failed"),
                (CANCELLED, "Cancelled"), (INTERRUPTED, "Interrupted")]
ACTIVE_STATUSES = (QUEUED, RUNNING)
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED)
RESUMABLE_STATUSES = (CANCELLED, INTERRUPTED, FAILED)

ARTIFACT_KINDS = [("imported", "Imported model"), ("export", "Export")]
ARTIFACT_FORMATS = [("checkpoint", "Studio checkpoint"), ("hf", "Hugging Face folder"), ("gguf", "GGUF file"),
                    ("safetensors", "Studio safetensors export")]
ARTIFACT_STATUSES = [("pending", "Pending"), ("ready", "Ready"), ("failed", "Failed")]

VOTES = [("a", "A is better"), ("b", "B is better"), ("tie", "Tie"), ("both_bad", "Both are bad")]


def data_path(*parts: str | int) -> Path:
    """A path under the studio's data folder."""
    return Path(settings.DATA_DIR).joinpath(*map(str, parts))


class DatasetVersion(models.Model):
    """An immutable set of documents (``documents.jsonl``, one ``{"text": …}`` per line) with its lineage.

    ``source`` records where it came from: ``{"kind": "corpus", "name": "austen"}``,
    ``{"kind": "upload", "filename": "…"}`` or, later, the data studio's pipeline.
    """

    name = models.CharField(max_length=100)
    version = models.PositiveIntegerField(default=1)
    path = models.CharField(max_length=500, help_text="folder holding documents.jsonl")
    manifest = models.JSONField(default=dict, blank=True)
    documents = models.PositiveIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)
    source = models.JSONField(default=dict, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="training_dataset_name_version")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def documents_file(self) -> Path:
        """``documents.jsonl``; for a data studio version (shards listed in the manifest) its ``data/``
        folder, which the core's ``--input`` reads shard by shard."""
        folder = Path(self.path)
        if self.manifest.get("files") and not (folder / "documents.jsonl").exists():
            return folder / "data"
        return folder / "documents.jsonl"


class Tokenizer(models.Model):
    """A trained tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json``)."""

    name = models.CharField(max_length=100)
    path = models.CharField(max_length=500)
    dataset = models.ForeignKey(DatasetVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="tokenizers")
    run = models.OneToOneField("Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_tokenizer")
    vocab_size = models.PositiveIntegerField()
    chars_per_token = models.FloatField(null=True, blank=True, help_text="compression on the dataset")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.vocab_size} tokens)"


class Run(models.Model):
    """One job of the ML core: its config (validated by the core's dataclasses), status and lineage."""

    kind = models.CharField(max_length=20, choices=RUN_KINDS)
    name = models.CharField(max_length=120)
    status = models.CharField(max_length=12, choices=RUN_STATUSES, default=QUEUED, db_index=True)
    config = models.JSONField(default=dict)
    dataset = models.ForeignKey(DatasetVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="runs")
    tokenizer = models.ForeignKey(Tokenizer, null=True, blank=True, on_delete=models.PROTECT, related_name="runs")
    parent_checkpoint = models.ForeignKey("Checkpoint", null=True, blank=True, on_delete=models.SET_NULL,
                                          related_name="child_runs")
    cloned_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="clones")
    labeling_snapshot_id = models.PositiveIntegerField(null=True, blank=True,
                                                       help_text="labeling snapshot the run trained on (later kinds)")
    nproc = models.PositiveSmallIntegerField(default=1, help_text="processes (torchrun when > 1)")
    threads = models.PositiveSmallIntegerField(default=0, help_text="CPU threads per process (0: automatic)")
    gpus = models.CharField(max_length=100, blank=True, help_text="CUDA_VISIBLE_DEVICES for the run")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="training_runs")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=0, help_text="how many times the run was launched")
    pid = models.IntegerField(null=True, blank=True, help_text="child process id while running")
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the worker running it")
    cancel_requested = models.BooleanField(default=False)
    exit_code = models.IntegerField(null=True, blank=True)
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    error = models.JSONField(default=dict, blank=True, help_text="{code, detail, hint, log_tail} when failed")
    summary = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(status__in=[s for s, _ in RUN_STATUSES]),
                                              name="training_run_status")]

    def __str__(self) -> str:
        return f"run {self.pk} {self.kind} {self.name} ({self.status})"

    @property
    def out_dir(self) -> Path:
        return data_path("runs", self.pk)

    @property
    def log_path(self) -> Path:
        return self.out_dir / "run.log"

    @property
    def events_path(self) -> Path:
        return self.out_dir / "events.jsonl"

    @property
    def group(self) -> str:
        return f"run.{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def progress(self) -> float:
        return min(1.0, self.current_step / self.total_steps) if self.total_steps else 0.0


class Checkpoint(models.Model):
    """A checkpoint the core published (``runs/<id>/checkpoints/step_*``)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    path = models.CharField(max_length=500)
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run_id", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="training_checkpoint_run_step")]

    def __str__(self) -> str:
        return f"{self.run.name} @ step {self.step}"

    @property
    def ref(self) -> str:
        return f"checkpoint:{self.pk}"


class ModelArtifact(models.Model):
    """A model from outside (SmolLM2, a HF folder, a GGUF file) or an export of a checkpoint."""

    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=10, choices=ARTIFACT_KINDS, default="imported")
    format = models.CharField(max_length=12, choices=ARTIFACT_FORMATS, default="checkpoint")
    source = models.CharField(max_length=500, help_text="'smollm2', a path, or checkpoint:<id>")
    path = models.CharField(max_length=500, blank=True)
    checkpoint = models.ForeignKey(Checkpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="artifacts")
    status = models.CharField(max_length=10, choices=ARTIFACT_STATUSES, default="ready")
    n_params = models.PositiveBigIntegerField(null=True, blank=True)
    info = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.name

    @property
    def ref(self) -> str:
        return f"model:{self.pk}"


class MetricPoint(models.Model):
    """Metrics of one step (``kind`` train or eval) as JSON; written in bulk, downsampled for long runs."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_points")
    kind = models.CharField(max_length=8, default="train")
    step = models.PositiveIntegerField()
    time = models.FloatField(help_text="Unix seconds when the core reported it")
    values = models.JSONField(default=dict)

    class Meta:
        ordering = ["run_id", "step", "id"]
        indexes = [models.Index(fields=["run", "kind", "step"])]

    def as_dict(self) -> dict:
        return {"step": self.step, "kind": self.kind, "time": self.time, "values": self.values}


class ChatFeedback(models.Model):
    """Thumbs up / down (and reports) on a playground answer."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    model_ref = models.CharField(max_length=100)
    model_name = models.CharField(max_length=200, blank=True)
    messages = models.JSONField(default=list)
    response_text = models.TextField()
    rating = models.SmallIntegerField(default=0, help_text="+1 thumbs up, -1 thumbs down, 0 none")
    report_category = models.CharField(max_length=20, blank=True)
    report_text = models.TextField(blank=True)
    labeling_report_id = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]


class PreferenceVote(models.Model):
    """A blind A/B comparison in the playground: which of two anonymous models answered better."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    messages = models.JSONField(default=list)
    model_a = models.CharField(max_length=100)
    model_b = models.CharField(max_length=100)
    response_a = models.TextField()
    response_b = models.TextField()
    vote = models.CharField(max_length=10, choices=VOTES)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(vote__in=[v for v, _ in VOTES]),
                                              name="training_vote_choice")]


from training.models.datastudio import CurationRun, DataSource  # noqa: E402,F401  (data studio)
