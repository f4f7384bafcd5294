from django.apps import AppConfig


class TrainingConfig(AppConfig):
    """Datasets, tokenizers, runs, checkpoints, evaluations and model artifacts (Django shell around
    the pure-PyTorch ``training.core``)."""

    name = "training"
    verbose_name = "Training"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from training import checks  # noqa: F401  (registers system checks)
