from django.apps import AppConfig


class LabelingConfig(AppConfig):
    """Prompts, responses, comparisons, rankings, ratings and reports (human feedback)."""

    name = "labeling"
    verbose_name = "Labeling"
    default_auto_field = "django.db.models.BigAutoField"
