"""System checks of the training app (``manage.py check``)."""

from __future__ import annotations

import os
import shutil

from django.conf import settings
from django.core.checks import Warning, register


@register("training")
def check_training_environment(app_configs, **kwargs):  # noqa: ANN001, ANN201
    problems = []
    free = shutil.disk_usage(settings.DATA_DIR).free
    if free < 2 * 2**30:
        problems.append(Warning(f"Only {free / 2**30:.1f} GiB free under STUDIO_DATA_DIR ({settings.DATA_DIR}).",
                                hint="Checkpoints need room; free space or point STUDIO_DATA_DIR elsewhere.",
                                id="training.W001"))
    stale = os.environ.get("STUDIO_RUN_STALE_SECONDS")
    if stale is not None:
        try:
            ok = float(stale) >= 15
        except ValueError:
            ok = False
        if not ok:
            problems.append(Warning(f"STUDIO_RUN_STALE_SECONDS={stale!r} is too short or not a number.",
                                    hint="Workers heartbeat every 5 s; use 60 (the default) or more.",
                                    id="training.W002"))
    return problems
