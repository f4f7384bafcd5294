"""Admin views of the training records (read-mostly; runs change through the API's actions)."""

from django.contrib import admin

from training.models import ChatFeedback, Checkpoint, DatasetVersion, ModelArtifact, PreferenceVote, Run, Tokenizer


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "name", "status", "current_step", "total_steps", "attempt", "created_at")
    list_filter = ("kind", "status")
    search_fields = ("name",)
    readonly_fields = ("status", "pid", "worker", "heartbeat_at", "exit_code", "error", "summary")


admin.site.register(DatasetVersion, list_display=("id", "name", "version", "documents", "bytes", "created_at"))
admin.site.register(Tokenizer, list_display=("id", "name", "vocab_size", "chars_per_token", "created_at"))
admin.site.register(Checkpoint, list_display=("id", "run", "step", "path", "created_at"))
admin.site.register(ModelArtifact, list_display=("id", "name", "kind", "format", "status", "created_at"))
admin.site.register(ChatFeedback, list_display=("id", "model_name", "rating", "report_category", "created_at"))
admin.site.register(PreferenceVote, list_display=("id", "model_a", "model_b", "vote", "created_at"))
