"""API shapes of the data studio. Input serializers check types; actions check meaning."""

from __future__ import annotations

from rest_framework import serializers

from training.models.datastudio import DOMAINS, OUTPUT_FORMATS, SOURCE_KINDS, CurationRun, DataSource


class DataSourceSerializer(serializers.ModelSerializer):
    class Meta:
        model = DataSource
        fields = ["id", "name", "kind", "origin", "domain", "language", "licence", "documents", "bytes",
                  "content_hash", "report", "created_at"]


class SourceImportSerializer(serializers.Serializer):
    """One import: ``kind`` upload (multipart ``file``), url, folder (``path`` on the server) or corpus."""

    kind = serializers.ChoiceField(choices=[k for k, _ in SOURCE_KINDS])
    name = serializers.CharField(required=False, allow_blank=True, max_length=120)
    domain = serializers.ChoiceField(choices=[d for d, _ in DOMAINS], required=False, allow_blank=True)
    language = serializers.CharField(required=False, allow_blank=True, max_length=20)
    licence = serializers.CharField(required=False, allow_blank=True, max_length=200)
    file = serializers.FileField(required=False, help_text="kind=upload: .txt .md .html .json .jsonl .csv .parquet "
                                                           ".zip .tar.gz")
    url = serializers.URLField(required=False, allow_blank=True, max_length=1000)
    path = serializers.CharField(required=False, allow_blank=True, max_length=1000)
    corpus = serializers.CharField(required=False, allow_blank=True, max_length=50)
    on_error = serializers.ChoiceField(choices=["skip", "refuse"], default="skip",
                                       help_text="malformed rows: skip them (listed in the report) or refuse the file")


class CurationCreateSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=120)
    sources = serializers.ListField(child=serializers.IntegerField(min_value=1), allow_empty=False)
    recipe = serializers.JSONField(required=False, allow_null=True,
                                   help_text="[{step, config}, …]; empty: the default recipe")
    workers = serializers.IntegerField(required=False, default=1, min_value=1, max_value=64)
    shard_docs = serializers.IntegerField(required=False, default=5000, min_value=1)
    output_format = serializers.ChoiceField(choices=[f for f, _ in OUTPUT_FORMATS], default="jsonl")


class CurationRunSerializer(serializers.ModelSerializer):
    sources = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = CurationRun
        fields = ["id", "name", "status", "recipe", "sources", "workers", "shard_docs", "output_format", "progress",
                  "dataset", "cancel_requested", "attempt", "exit_code", "error", "created_at", "started_at",
                  "finished_at"]


class PreviewSerializer(serializers.Serializer):
    step = serializers.JSONField(help_text='{"step": "gopher_quality", "config": {…}}')
    value_field = serializers.CharField(max_length=60)
    sources = serializers.ListField(child=serializers.IntegerField(min_value=1), allow_empty=False)
    sample = serializers.IntegerField(required=False, default=200, min_value=1, max_value=5000)
    bins = serializers.IntegerField(required=False, default=20, min_value=2, max_value=100)


class LSHSerializer(serializers.Serializer):
    bands = serializers.IntegerField(min_value=1, max_value=1024)
    rows = serializers.IntegerField(min_value=1, max_value=1024)
    threshold = serializers.FloatField(required=False, default=0.8, min_value=0.01, max_value=0.99)
    optimal_for = serializers.IntegerField(required=False, allow_null=True, min_value=2, max_value=512,
                                           help_text="num_perm: also return the (bands, rows) minimising errors")
