"""Reading the studio's settings from the environment, with errors that name the variable.

A missing or invalid setting stops start-up with :class:`SettingError`, whose message names the
variable and shows an example value. URLs are printed with their password masked.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured


class SettingError(ImproperlyConfigured):
    """An environment variable is missing or invalid."""

    def __init__(self, name: str, problem: str, example: str) -> None:
        super().__init__(f"{name}: {problem}. Example: {name}={example}")
        self.variable = name


TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise SettingError(name, f"{raw!r} is not a boolean", "1 (or 0)")


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(name, f"{raw!r} is not an integer", str(default)) from None
    if minimum is not None and value < minimum:
        raise SettingError(name, f"must be at least {minimum}, got {value}", str(max(default, minimum)))
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def mask_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` → ``redis://:***@host:6379/0`` (never print secrets)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def database_from_url(url: str) -> dict:
    """Django DATABASES entry from ``DATABASE_URL`` (PostgreSQL or SQLite)."""
    import dj_database_url

    example = "postgres://studio:secret@127.0.0.1:5432/studio"
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in {"postgres", "postgresql", "pgsql", "sqlite"}:
        raise SettingError("DATABASE_URL", f"unsupported or malformed URL {mask_url(url)!r} "
                           "(use postgres://… or sqlite:///path)", example)
    try:
        # No persistent connections: under ASGI each request's sync code runs in a fresh thread,
        # so persistent connections would pile up (Django's docs: disable them under ASGI).
        config = dj_database_url.parse(url, conn_max_age=0)
    except Exception as e:  # dj_database_url raises plain ValueErrors
        raise SettingError("DATABASE_URL", f"cannot parse {mask_url(url)!r}: {e}", example) from None
    if config["ENGINE"].endswith("postgresql") and not config.get("NAME"):
        raise SettingError("DATABASE_URL", "the URL names no database", example)
    return config


def redis_url_checked(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingError("REDIS_URL", f"{mask_url(url)!r} is not a redis:// URL", "redis://127.0.0.1:6379/0")
    return url
