"""The annotator's two hot requests, served without Django's request stack and DRF.

An annotator's page sends one request per judgement all day: ``POST /api/labeling/judgements/``
with ``"next": true`` (record the judgement, lock the next item), and ``POST
/api/labeling/projects/<id>/next/``. Through Django's ASGI handler, its middleware and DRF, the
request machinery cost several times the work itself. :func:`serve` answers these two requests
directly from the ASGI application (``studio/asgi.py``), on the same request threads and database
connections, calling the same code as the DRF views (:func:`labeling.actions.submit_judgement`,
:func:`labeling.actions.next_or_reason`): one implementation of the rules, refusals included.

It serves only what it fully understands: a caller with the annotator role who is either a
program with an API token (``Authorization: Token <key>``, resolved as ``studio.tokens`` does it;
no CSRF check, as in DRF) or a signed-in session (the database session engine and Django's model
backend) with a valid CSRF token (DRF's own check); a JSON object whose fields are plainly valid;
JSON wanted back. DRF's authentication order is kept: a ``Token`` header decides alone, a session
cookie beside it is ignored. Anything else — a malformed header, an unknown or revoked token, a bad
CSRF token, a missing role, a malformed field, an unknown project — is *declined* (``None``) and
goes to the regular Django/DRF views, which refuse it with the API's usual errors. Refusals raised
by the rules themselves (someone else's item, an expired lock, …) come back here with the same
``{code, detail, hint}`` body as through DRF.

The request's first statement (the session's or the token's lookup, a read outside any
transaction) doubles as the connection's health check (``CONN_HEALTH_CHECKS``): a connection
that died since the last request (a restarted PostgreSQL, a terminated backend) is closed and
the lookup runs once more on a new one, and a lookup that worked spares the request Django's
``SELECT 1`` before its first cursor.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Callable, TypeVar

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core import signals
from django.core.exceptions import DisallowedHost
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from rest_framework.authentication import CSRFCheck, SessionAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.settings import api_settings

from labeling import actions, sql
from labeling.models import CHOICES
from studio import tokens
from studio.errors import StudioAPIError, error_body
from studio.models import ApiToken, hash_token
from studio.roles import ANNOTATOR, BUILDER, ROLES, has_access

log = logging.getLogger(__name__)

SUBMIT, NEXT = "submit", "next"
_NEXT_PATH = re.compile(r"^/api/labeling/projects/(\d{1,18})/next/$")
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
DB_SESSIONS = "django.contrib.sessions.backends.db"
# DRF's authentication classes (settings.REST_FRAMEWORK) as the lean path mirrors them, in order
AUTHENTICATION = (tokens.TokenAuthentication, SessionAuthentication)
T = TypeVar("T")


def match(method: str, path: str) -> tuple[str, int | None] | None:
    """Which hot request this is: ``(SUBMIT, None)``, ``(NEXT, project id)`` or None."""
    if method != "POST":
        return None
    if path == "/api/labeling/judgements/":
        return SUBMIT, None
    m = _NEXT_PATH.match(path)
    return (NEXT, int(m.group(1))) if m else None


# ---- what the regular stack would check first ---------------------------------------------------

def first_statement(run: Callable[[], T]) -> T:
    """Run the request's first statement (a read outside any transaction) as the health check
    Django would otherwise send (``SELECT 1`` before the request's first cursor, when
    ``CONN_HEALTH_CHECKS`` is on): if it fails on a connection that no longer works, close that
    connection and run it once more on a new one; once it has worked, the request's later cursors
    skip the check."""
    check = (connection.health_check_enabled and not connection.health_check_done
             and connection.connection is not None and not connection.in_atomic_block)
    try:
        result = run()
    except DatabaseError:
        if not check or connection.is_usable():
            raise  # not a dead connection: the error stands
        log.info("lean path: the database connection was dead; reconnecting", exc_info=True)
        connection.close()
        result = run()
    connection.health_check_done = True
    return result


def caller(request: HttpRequest) -> tuple[Any, bool] | None:
    """The user DRF would authenticate the request as (``TokenAuthentication``, then
    ``SessionAuthentication`` with its CSRF check), with their roles, and whether the session was
    read; None when that is not plainly a known, active user (DRF then answers: 401, 403, …)."""
    if tuple(api_settings.DEFAULT_AUTHENTICATION_CLASSES) != AUTHENTICATION:
        return None
    try:
        key = tokens.header_key(request)
    except AuthenticationFailed:
        return None
    if key is not None:  # the token decides alone, even beside a session cookie
        user = token_user(key)
        return None if user is None else (user, False)
    user = session_user(request)
    return (user, True) if user is not None and _csrf_ok(request) else None


def token_user(key: str) -> Any:
    """The active user holding this unrevoked API token, with their roles, exactly as
    ``studio.tokens.TokenAuthentication`` finds them (its ``last_used_at`` written at most once a
    minute); None otherwise."""
    if settings.AUTH_USER_MODEL != "auth.User":
        return None
    found = first_statement(lambda: _user_rows(
        f"{sql.table(ApiToken)} t JOIN {sql.table(get_user_model())} u ON u.id = t.user_id",
        "t.key_hash = %s AND t.revoked_at IS NULL", [hash_token(key)], before="t.id, t.last_used_at, "))
    if not found:
        return None
    token_id, last_used = found[0][:2]
    user = _user(found, 2)
    if user is None:
        return None
    now = timezone.now()
    if tokens.needs_touch(sql.py_datetime(last_used), now):
        sql.execute(f"UPDATE {sql.table(ApiToken)} SET last_used_at = %s WHERE id = %s",
                    [sql.db_datetime(now), token_id])
    return user


def _user_rows(source: str, where: str, params: list[Any], *, before: str = "") -> list[tuple[Any, ...]]:
    """``SELECT {before}`` the user's ``id, password, username, is_active, is_superuser`` and one of
    their studio roles (or None) — one row per role — ``FROM {source}`` (which names the user ``u``)
    ``WHERE {where}``."""
    from django.contrib.auth.models import Group

    User = get_user_model()
    marks = ", ".join(["%s"] * len(ROLES))
    return sql.rows(f"SELECT {before}u.id, u.password, u.username, u.is_active, u.is_superuser, g.name FROM {source} "
                    f"LEFT JOIN {sql.table(User.groups.through)} ug ON ug.user_id = u.id "
                    f"LEFT JOIN {sql.table(Group)} g ON g.id = ug.group_id AND g.name IN ({marks}) "
                    f"WHERE {where}", [*ROLES, *params])


def _user(found: list[tuple[Any, ...]], at: int) -> Any:
    """The user of :func:`_user_rows`'s rows (their columns from ``at``) with ``_studio_roles`` set
    (what ``studio.roles.user_roles`` caches); None for an inactive user (Django refuses them)."""
    uid, password, username, active, superuser = found[0][at:at + 5]
    if not active:
        return None
    user = get_user_model()(id=uid, password=password, username=username, is_active=True,
                            is_superuser=bool(superuser))
    roles = {r[at + 5] for r in found if r[at + 5]}
    if user.is_superuser:
        roles.add(BUILDER)
    user._studio_roles = roles
    return user


def session_user(request: HttpRequest) -> Any:
    """The signed-in user of the request's session with their roles, exactly as
    ``django.contrib.auth.get_user`` would find them (database sessions, model backend, session
    hash verified with the current secret), or None when anything differs from that common case."""
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if not key or settings.SESSION_ENGINE != DB_SESSIONS or MODEL_BACKEND not in settings.AUTHENTICATION_BACKENDS \
            or settings.AUTH_USER_MODEL != "auth.User":
        return None
    store = SessionStore(key)
    if store.session_key is None:  # not a valid key
        return None
    row = first_statement(lambda: sql.one(f"SELECT session_data FROM {sql.table(store.model)} "
                                          "WHERE session_key = %s AND expire_date > %s",
                                          [store.session_key, sql.db_datetime(timezone.now())]))
    if row is None:
        return None
    session = store.decode(row[0])
    if session.get(BACKEND_SESSION_KEY) != MODEL_BACKEND or not session.get(HASH_SESSION_KEY):
        return None
    User = get_user_model()
    try:
        user_id = User._meta.pk.to_python(session.get(SESSION_KEY))
    except Exception:  # noqa: BLE001 - a malformed session: let Django deal with it
        return None
    found = _user_rows(f"{sql.table(User)} u", "u.id = %s", [user_id])
    user = _user(found, 0) if found else None  # no such user, or inactive (ModelBackend refuses them)
    if user is None or not constant_time_compare(session[HASH_SESSION_KEY], user.get_session_auth_hash()):
        return None  # a changed password, or an old secret: Django flushes or re-keys the session
    return user


def _csrf_ok(request: HttpRequest) -> bool:
    """DRF's CSRF check for session-authenticated requests (``SessionAuthentication.enforce_csrf``)."""
    check = CSRFCheck(lambda r: None)
    check.process_request(request)
    return check.process_view(request, None, (), {}) is None


def _wants_json(request: HttpRequest) -> bool:
    accept = request.META.get("HTTP_ACCEPT", "*/*").strip()
    return accept in ("", "*/*") or "application/json" in accept


def _plain_submission(data: Any) -> dict[str, Any] | None:
    """``data`` as ``JudgementInputSerializer`` would validate it, when every field is plainly valid
    (right type, no coercion, no trimming); None otherwise — the serializer then says what is wrong."""
    if not isinstance(data, dict):
        return None
    out: dict[str, Any] = {}
    a = data.get("assignment")
    if type(a) is not int:
        return None
    out["assignment"] = a
    checks = {
        "client_token": lambda v: v is None or (type(v) is str and 0 < len(v) <= 100 and v == v.strip()
                                                and "\x00" not in v),
        "choice": lambda v: type(v) is str and v in _CHOICES,
        "strength": lambda v: v is None or (type(v) is int and -3 <= v <= 3),
        "ranking": lambda v: type(v) is list and all(type(x) is int for x in v),
        "ratings": lambda v: type(v) is dict,
        "corrected_text": lambda v: type(v) is str and "\x00" not in v,
        "comment": lambda v: type(v) is str and v == v.strip() and "\x00" not in v,
        "time_on_task_ms": lambda v: v is None or (type(v) is int and v >= 0),
        "next": lambda v: type(v) is bool,
    }
    for name, ok in checks.items():
        if name in data:
            if not ok(data[name]):
                return None
            out[name] = data[name]
    out.setdefault("next", False)
    return out


_CHOICES = frozenset(c for c, _ in CHOICES)
_SECURITY = SecurityMiddleware(lambda r: None)
_FRAMES = XFrameOptionsMiddleware(lambda r: None)
_ALLOW = {SUBMIT: "GET, POST, HEAD, OPTIONS", NEXT: "POST, OPTIONS"}


def _json_response(request: HttpRequest, kind: str, body: Any, status: int, session: bool) -> HttpResponse:
    """The response as DRF's JSON renderer and the studio's middleware would make it (``Vary:
    Cookie`` when the session was read, as ``SessionMiddleware`` adds it)."""
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    response = HttpResponse(content, content_type="application/json", status=status)
    response["Vary"] = "Accept, Cookie" if session else "Accept"
    response["Allow"] = _ALLOW[kind]
    response = _SECURITY.process_response(request, response)
    return _FRAMES.process_response(request, response)


def serve(request: HttpRequest, route: tuple[str, int | None]) -> HttpResponse | None:
    """Answer a hot request, or None to hand it to the regular views (see the module's docstring).
    Runs on a request thread, like a Django view; sends Django's request started / finished signals
    (query log, connections past their age)."""
    signals.request_started.send(sender=serve, environ=request.META)
    try:
        return _serve(request, route)
    finally:
        signals.request_finished.send(sender=serve)


def _serve(request: HttpRequest, route: tuple[str, int | None]) -> HttpResponse | None:
    try:
        request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware checks it
    except DisallowedHost:
        return None
    if (settings.SECURE_SSL_REDIRECT and not request.is_secure()) or settings.SESSION_SAVE_EVERY_REQUEST \
            or request.META.get("QUERY_STRING") or request.content_type != "application/json" \
            or not _wants_json(request):
        return None
    try:
        found = caller(request)
    except Exception:  # noqa: BLE001 - e.g. a session that does not decode: Django's own path decides
        log.debug("lean path: caller not understood", exc_info=True)
        return None
    if found is None or not has_access(found[0], ANNOTATOR):
        return None
    user, session = found
    kind, project_id = route
    try:
        if kind == SUBMIT:
            try:
                data = _plain_submission(json.loads(request.body))
            except ValueError:
                return None
            if data is None:
                return None
            body, created = actions.submit_judgement(user, data)
            return _json_response(request, kind, body, 201 if created else 200, session)
        rules = actions.project_rules(project_id)
        if rules is None or (rules.archived and not has_access(user, BUILDER)):
            return None  # the view's 404
        return _json_response(request, kind, actions.next_or_reason(rules, user), 200, session)
    except StudioAPIError as exc:  # as studio.errors.exception_handler writes it
        return _json_response(request, kind, error_body(exc.error_code, str(exc.detail), exc.hint or None,
                                                        fields=exc.fields), exc.status_code, session)
    except Exception:
        log.exception("unhandled error in the lean labeling path (%s)", request.path)
        return _json_response(request, kind, error_body("server_error", "The server failed to handle this request."),
                              500, session)
