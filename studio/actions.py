"""Actions change important state: the write is atomic; tasks are enqueued and events sent on commit."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from studio.events import publish
from studio.models import ApiToken, Event, hash_token


def do_create_api_token(user: Any, name: str) -> tuple[ApiToken, str]:
    """Create a token; returns (record, key). The key is not stored and cannot be shown again."""
    key = ApiToken.new_key()
    token = ApiToken.objects.create(user=user, name=name.strip(), prefix=key[:12], key_hash=hash_token(key))
    return token, key


def do_revoke_api_token(token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def do_request_selftest(user: Any) -> Event:
    """Record a self-test request and, after commit, enqueue the worker round trip."""
    from studio.tasks import selftest_task

    with transaction.atomic():
        event = publish("selftest.requested", {"by": user.get_username()}, actor=user)
        transaction.on_commit(lambda: selftest_task(event.id))
    return event
