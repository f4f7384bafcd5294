"""Template context: the navigation, filtered by the signed-in user's roles."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from frontend.stages import STAGES
from studio.roles import has_access, user_roles


def navigation(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"nav_stages": [], "user_roles": []}
    return {
        "nav_stages": [s for s in STAGES if has_access(user, s.role)],
        "user_roles": sorted(user_roles(user)),
    }
