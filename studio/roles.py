"""Roles and the permission every endpoint declares.

Roles are Django groups: ``builder`` (ML engineers: everything), ``annotator`` (labeling only),
``moderator`` (reports and review). Any signed-in user may chat and report. Every view declares
``required_role`` — one of :data:`ACCESS_LEVELS` — and :class:`RolePermission` (the API's default
permission) denies a view that declares nothing, so an endpoint cannot be public by accident.
"""

from __future__ import annotations

from functools import wraps
from typing import Any, Callable

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from rest_framework.permissions import BasePermission

BUILDER, ANNOTATOR, MODERATOR = "builder", "annotator", "moderator"
ROLES = (BUILDER, ANNOTATOR, MODERATOR)
PUBLIC, SIGNED_IN = "public", "signed_in"
ACCESS_LEVELS = (PUBLIC, SIGNED_IN, ANNOTATOR, MODERATOR, BUILDER)

ROLE_DESCRIPTIONS = {
    BUILDER: "ML engineers: data, tokenizers, training, evaluation, deployment — everything",
    ANNOTATOR: "labeling only: rate, rank and correct model responses",
    MODERATOR: "reports and review: triage reports of harmful or biased answers",
}


def user_roles(user: Any) -> set[str]:
    """The user's roles; superusers are builders. Cached on the user object per request."""
    if not getattr(user, "is_authenticated", False):
        return set()
    cached = getattr(user, "_studio_roles", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        if user.is_superuser:
            cached.add(BUILDER)
        user._studio_roles = cached
    return cached


def has_access(user: Any, level: str) -> bool:
    """Whether ``user`` passes access level ``level`` (builders pass every level)."""
    if level not in ACCESS_LEVELS:
        raise ValueError(f"unknown access level {level!r}; use one of {ACCESS_LEVELS}")
    if level == PUBLIC:
        return True
    if not getattr(user, "is_authenticated", False):
        return False
    if level == SIGNED_IN:
        return True
    roles = user_roles(user)
    return BUILDER in roles or level in roles


class RolePermission(BasePermission):
    """DRF permission reading the view's ``required_role``; undeclared views are denied."""

    message = "Your role does not allow this action."

    def has_permission(self, request: Any, view: Any) -> bool:
        level = getattr(view, "required_role", None)
        if level is None:
            self.message = f"{type(view).__name__} declares no required_role; access denied."
            return False
        return has_access(request.user, level)


# The API default (settings.REST_FRAMEWORK) — a view must declare its role to be reachable.
DenyUndeclared = RolePermission


def role_required(level: str) -> Callable:
    """Decorator for page views: anonymous users go to sign-in, others without the role get 403."""
    if level not in ACCESS_LEVELS:
        raise ValueError(f"unknown access level {level!r}")

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if level != PUBLIC and not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_access(request.user, level):
                raise PermissionDenied(f"This page needs the {level} role.")
            return view(request, *args, **kwargs)

        wrapped.required_role = level  # type: ignore[attr-defined]
        return wrapped

    return decorate
