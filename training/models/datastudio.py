"""Data studio records: imported sources and curation runs.

A :class:`DataSource` is raw text the studio imported (an upload, a URL, a local folder or code
repository, a built-in corpus) as ``sources/<id>/documents.jsonl`` with its kind, domain,
language and licence. A :class:`CurationRun` runs a recipe (``training.core.curate``) over some
sources in a child process and, when it succeeds, publishes an immutable
:class:`~training.models.DatasetVersion` that tokenizer and pretraining runs consume. State
changes go through :mod:`training.datastudio.actions`.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models
from django.db.models import Q

SOURCE_KINDS = [("upload", "Upload"), ("url", "URL"), ("folder", "Local folder or repository"),
                ("corpus", "Built-in corpus")]
DOMAINS = [("web", "Web"), ("books", "Books"), ("code", "Code"), ("news", "News"), ("legal", "Legal"),
           ("medical", "Medical"), ("finance", "Finance"), ("conversation", "Conversation"), ("other", "Other")]
OUTPUT_FORMATS = [("jsonl", "JSONL"), ("parquet", "Parquet")]

CURATION_QUEUED, CURATION_RUNNING = "queued", "running"
CURATION_STATUSES = [("queued", "Queued"), ("running", "Running"), ("succeeded", "Succeeded"), ("failed", "Failed"),
                     ("cancelled", "Cancelled"), ("interrupted", "Interrupted")]
CURATION_ACTIVE = ("queued", "running")
CURATION_RESUMABLE = ("cancelled", "interrupted", "failed")


class DataSource(models.Model):
    """Imported raw documents (``documents.jsonl`` under :attr:`folder`) with their provenance."""

    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=10, choices=SOURCE_KINDS)
    origin = models.CharField(max_length=1000, help_text="file name, URL, folder path or corpus name")
    domain = models.CharField(max_length=20, choices=DOMAINS, default="other")
    language = models.CharField(max_length=20, default="en")
    licence = models.CharField(max_length=200, blank=True)
    path = models.CharField(max_length=500, help_text="folder holding documents.jsonl")
    documents = models.PositiveIntegerField(default=0)
    bytes = models.PositiveBigIntegerField(default=0)
    content_hash = models.CharField(max_length=64, db_index=True, help_text="sha256 of the imported bytes")
    report = models.JSONField(default=dict, blank=True, help_text="the import report: skipped rows, replaced bytes …")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(kind__in=[k for k, _ in SOURCE_KINDS]),
                                              name="training_datasource_kind")]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def documents_file(self) -> Path:
        return Path(self.path) / "documents.jsonl"

    def as_record(self) -> dict:
        """The source as the core's runner and datasheet take it (plain values)."""
        record = {"id": self.pk, "name": self.name, "kind": self.kind, "domain": self.domain,
                  "language": self.language, "licence": self.licence or "unknown", "documents": self.documents,
                  "bytes": self.bytes, "content_hash": self.content_hash}
        if self.kind == "url":
            record["url"] = self.origin
        elif self.kind == "corpus":
            record["package"] = self.origin
        else:
            record["path"] = self.origin
        return record


class CurationRun(models.Model):
    """One run of a curation recipe over sources, in a child process, producing a dataset version."""

    name = models.CharField(max_length=120)
    status = models.CharField(max_length=12, choices=CURATION_STATUSES, default=CURATION_QUEUED, db_index=True)
    recipe = models.JSONField(default=list)
    sources = models.ManyToManyField(DataSource, related_name="curation_runs")
    workers = models.PositiveSmallIntegerField(default=1, help_text="processes for the stateless steps")
    shard_docs = models.PositiveIntegerField(default=5000, help_text="documents per output shard (resume unit)")
    output_format = models.CharField(max_length=8, choices=OUTPUT_FORMATS, default="jsonl")
    progress = models.JSONField(default=dict, blank=True, help_text="last progress: docs/s, ETA, per-step counts")
    dataset = models.OneToOneField("training.DatasetVersion", null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="curation_run")
    cancel_requested = models.BooleanField(default=False)
    attempt = models.PositiveIntegerField(default=0)
    pid = models.IntegerField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.JSONField(default=dict, blank=True, help_text="{code, detail, hint, log_tail} when failed")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(status__in=[s for s, _ in CURATION_STATUSES]),
                                              name="training_curationrun_status")]

    def __str__(self) -> str:
        return f"curation {self.pk} {self.name} ({self.status})"

    @property
    def work_dir(self) -> Path:
        """Where the child keeps its spec, log, events and partial shards (resume state)."""
        from training.models import data_path

        return data_path("curation", self.pk)

    @property
    def log_path(self) -> Path:
        return self.work_dir / "run.log"

    @property
    def events_path(self) -> Path:
        return self.work_dir / "events.jsonl"

    @property
    def group(self) -> str:
        return f"curation.{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in CURATION_ACTIVE
