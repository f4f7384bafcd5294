"""API token authentication: ``Authorization: Token lls_…`` (keys stored hashed)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions

from studio.models import ApiToken, hash_token


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header; use 'Token <key>'.")
        try:
            key = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token contains invalid characters.") from None
        token = (ApiToken.objects.select_related("user").filter(key_hash=hash_token(key), revoked_at__isnull=True)
                 .first())
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked API token.")
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
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
