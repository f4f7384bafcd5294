"""Page views. Pages read records and render; changes go through the API (and its actions)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from frontend.stages import BY_SLUG
from studio.models import ApiToken, Event
from studio.roles import ROLE_DESCRIPTIONS, ROLES, SIGNED_IN, has_access, role_required
from training.core.config import ModelConfig


@role_required(SIGNED_IN)
def dashboard(request: HttpRequest) -> HttpResponse:
    User = get_user_model()
    role_counts = {g.name: g.user_set.count() for g in Group.objects.filter(name__in=ROLES)}
    counts = [
        ("Users", User.objects.filter(is_active=True).count()),
        *((f"{role.capitalize()}s", role_counts.get(role, 0)) for role in ROLES),
        ("Active API tokens", ApiToken.objects.filter(revoked_at__isnull=True).count()),
        ("Events recorded", Event.objects.count()),
        *_training_counts(),
    ]
    recent = Event.objects.filter(group="studio").order_by("-id")[:15]
    return render(request, "frontend/dashboard.html", {
        "counts": counts,
        "recent": recent,
        "last_event_id": recent[0].id if recent else 0,
        "can_selftest": has_access(request.user, "builder"),
    })


def _training_counts() -> list[tuple[str, int]]:
    from training.models import Checkpoint, Run, Tokenizer

    return [("Runs", Run.objects.count()), ("Runs going", Run.objects.filter(status__in=("queued", "running")).count()),
            ("Tokenizers", Tokenizer.objects.count()), ("Checkpoints", Checkpoint.objects.count())]


def _stage_context(slug: str) -> dict:
    if slug in ("tokenizers", "pretraining"):
        presets = []
        for name in ModelConfig.PRESETS:
            cfg = ModelConfig.preset(name)
            presets.append({"name": name, "cfg": cfg, "params": cfg.n_params()})
        return {"presets": presets}
    return {}


def stage_view(slug: str):  # noqa: ANN201
    """The page of one lifecycle stage, guarded by that stage's role."""
    current = BY_SLUG[slug]

    @role_required(current.role)
    def view(request: HttpRequest) -> HttpResponse:
        return render(request, "frontend/stage.html", {"stage": current, **_stage_context(slug)})

    view.__name__ = f"stage_{slug.replace('-', '_')}"
    return view


@role_required(SIGNED_IN)
def account(request: HttpRequest) -> HttpResponse:
    tokens = ApiToken.objects.filter(user=request.user)
    return render(request, "frontend/account.html", {
        "tokens": tokens,
        "role_descriptions": ROLE_DESCRIPTIONS,
    })
