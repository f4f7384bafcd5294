"""API token authentication: ``Authorization: Token lls_…`` (keys stored hashed).

The header's parsing (:func:`header_key`) and the once-a-minute ``last_used_at`` rule
(:func:`needs_touch`) are shared with the labeling hot path (``labeling/lean.py``), which resolves
tokens with its own SQL in front of DRF.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions

from studio.models import ApiToken, hash_token

KEYWORD = "Token"
TOUCH_EVERY_SECONDS = 60  # last_used_at is written at most once a minute per token
INVALID = "Invalid or revoked API token."


def header_key(request: Any) -> str | None:
    """The key of a ``Token <key>`` Authorization header; None when the request has no such header
    (another scheme, or none: other authentication may apply). Raises ``AuthenticationFailed`` for a
    malformed one. ``request``: a Django or DRF request."""
    header = authentication.get_authorization_header(request).split()
    if not header or header[0].lower() != KEYWORD.lower().encode():
        return None
    if len(header) != 2:
        raise exceptions.AuthenticationFailed("Malformed Authorization header; use 'Token <key>'.")
    try:
        return header[1].decode("ascii")
    except UnicodeDecodeError:
        raise exceptions.AuthenticationFailed("The token contains invalid characters.") from None


def needs_touch(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether a token used at ``now`` gets its ``last_used_at`` written."""
    return last_used_at is None or (now - last_used_at).total_seconds() > TOUCH_EVERY_SECONDS


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = KEYWORD

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        key = header_key(request)
        if key is None:
            return None
        token = (ApiToken.objects.select_related("user").filter(key_hash=hash_token(key), revoked_at__isnull=True)
                 .first())
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed(INVALID)
        now = timezone.now()
        if needs_touch(token.last_used_at, now):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


try:  # describe the scheme in the OpenAPI schema
    from drf_spectacular.extensions import OpenApiAuthenticationExtension

    class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
        target_class = "studio.tokens.TokenAuthentication"
        name = "TokenAuthentication"

        def get_security_definition(self, auto_schema):  # noqa: ANN001, ANN201
            return {"type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "Token-based authentication: `Token lls_…` (create one under Account)."}
except ImportError:  # pragma: no cover
    pass
