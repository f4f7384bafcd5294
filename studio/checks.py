"""System checks: configuration problems reported by ``manage.py check`` with an id and a hint."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Warning, register

from studio.env import mask_url


@register("studio")
def check_data_dir(app_configs, **kwargs):  # noqa: ANN001, ANN201
    errors = []
    data_dir = settings.DATA_DIR
    probe = data_dir / ".write-probe"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        errors.append(Error(f"STUDIO_DATA_DIR {data_dir} is not writable: {e}",
                            hint="Point STUDIO_DATA_DIR at a writable folder, e.g. STUDIO_DATA_DIR=/srv/studio",
                            id="studio.E001"))
    return errors


@register("studio", deploy=True)
def check_scale_out(app_configs, **kwargs):  # noqa: ANN001, ANN201
    warnings = []
    if not settings.DEBUG and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        warnings.append(Warning(
            "Production mode runs on SQLite.",
            hint="Fine for one machine; for several web or worker machines set "
                 "DATABASE_URL=postgres://user:password@host:5432/studio",
            id="studio.W001"))
    if not settings.DEBUG and not settings.REDIS_URL:
        warnings.append(Warning(
            "Production mode has no REDIS_URL: the queue is SQLite and events follow the database.",
            hint="Workers on other machines need REDIS_URL=redis://host:6379/0",
            id="studio.W002"))
    return warnings


def describe_redis() -> str:
    return mask_url(settings.REDIS_URL) if settings.REDIS_URL else "(none)"
