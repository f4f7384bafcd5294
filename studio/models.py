"""Studio-wide records: API tokens (stored hashed) and the events stream."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

TOKEN_PREFIX = "lls_"


def hash_token(key: str) -> str:
    """SHA-256 of a token key. Keys are 256-bit random strings, so a fast hash is safe."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiToken(models.Model):
    """A programmatic credential. Only its hash and a short prefix are stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def new_key() -> str:
        return TOKEN_PREFIX + secrets.token_urlsafe(32)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Event(models.Model):
    """One studio event (a run changed state, a task finished, …), kept for history and for
    followers in other processes: with no Redis, websocket consumers poll this table."""

    group = models.CharField(max_length=100, db_index=True, default="studio")
    kind = models.CharField(max_length=100)
    payload = models.JSONField(default=dict)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["group", "id"])]

    def __str__(self) -> str:
        return f"{self.kind} @ {self.created_at:%Y-%m-%d %H:%M:%S}"

    def as_message(self) -> dict:
        return {"id": self.id, "group": self.group, "kind": self.kind, "payload": self.payload,
                "created_at": self.created_at.isoformat()}
