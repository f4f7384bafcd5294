"""The annotator's two hot requests, served without Django's request stack and DRF.

An annotator's page sends one request per judgement all day: ``POST /api/labeling/judgements/``
with ``"next": true`` (record the judgement, lock the next item), and ``POST
/api/labeling/projects/<id>/next/``. Through Django's ASGI handler, its middleware and DRF, the
request machinery cost several times the work itself. :func:`serve` answers these two requests
directly from the ASGI application (``studio/asgi.py``), on the same request threads and database
connections, calling the same code as the DRF views (:func:`labeling.actions.submit_judgement`,
:func:`labeling.actions.next_or_reason`): one implementation of the rules, refusals included.

It serves only what it fully understands: a signed-in session (the database session engine and
Django's model backend) with the annotator role, a valid CSRF token (DRF's own check), a JSON
object whose fields are plainly valid, JSON wanted back. Anything else — API tokens, a bad CSRF
token, a missing role, a malformed field, an unknown project — is *declined* (``None``) and goes
to the regular Django/DRF views, which refuse it with the API's usual errors. Refusals raised by
the rules themselves (someone else's item, an expired lock, …) come back here with the same
``{code, detail, hint}`` body as through DRF.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.core import signals
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from rest_framework.authentication import CSRFCheck

from labeling import actions, sql
from labeling.models import CHOICES
from studio.errors import StudioAPIError, error_body
from studio.roles import ANNOTATOR, BUILDER, ROLES, has_access

log = logging.getLogger(__name__)

SUBMIT, NEXT = "submit", "next"
_NEXT_PATH = re.compile(r"^/api/labeling/projects/(\d{1,18})/next/$")
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
DB_SESSIONS = "django.contrib.sessions.backends.db"


def match(method: str, path: str) -> tuple[str, int | None] | None:
    """Which hot request this is: ``(SUBMIT, None)``, ``(NEXT, project id)`` or None."""
    if method != "POST":
        return None
    if path == "/api/labeling/judgements/":
        return SUBMIT, None
    m = _NEXT_PATH.match(path)
    return (NEXT, int(m.group(1))) if m else None


# ---- what the regular stack would check first ---------------------------------------------------

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
    row = sql.one(f"SELECT session_data FROM {sql.table(store.model)} WHERE session_key = %s AND expire_date > %s",
                  [store.session_key, sql.db_datetime(timezone.now())])
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
    from django.contrib.auth.models import Group

    marks = ", ".join(["%s"] * len(ROLES))
    found = sql.rows(f"SELECT u.id, u.password, u.username, u.is_active, u.is_superuser, g.name FROM {sql.table(User)} u "
                     f"LEFT JOIN {sql.table(User.groups.through)} ug ON ug.user_id = u.id "
                     f"LEFT JOIN {sql.table(Group)} g ON g.id = ug.group_id AND g.name IN ({marks}) "
                     "WHERE u.id = %s", [*ROLES, user_id])
    if not found or not found[0][3]:  # no such user, or inactive (ModelBackend refuses them)
        return None
    uid, password, username, _, superuser = found[0][:5]
    user = User(id=uid, password=password, username=username, is_active=True, is_superuser=bool(superuser))
    if not constant_time_compare(session[HASH_SESSION_KEY], user.get_session_auth_hash()):
        return None  # a changed password, or an old secret: Django flushes or re-keys the session
    roles = {r[5] for r in found if r[5]}
    if user.is_superuser:
        roles.add(BUILDER)
    user._studio_roles = roles  # what studio.roles.user_roles caches
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


def _json_response(request: HttpRequest, kind: str, body: Any, status: int) -> HttpResponse:
    """The response as DRF's JSON renderer and the studio's middleware would make it."""
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    response = HttpResponse(content, content_type="application/json", status=status)
    response["Vary"] = "Accept, Cookie"
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
            or request.META.get("QUERY_STRING") or "HTTP_AUTHORIZATION" in request.META \
            or request.content_type != "application/json" or not _wants_json(request):
        return None
    try:
        user = session_user(request)
    except Exception:  # noqa: BLE001 - e.g. a session that does not decode: Django's own path decides
        log.debug("lean path: session not understood", exc_info=True)
        return None
    if user is None or not has_access(user, ANNOTATOR) or not _csrf_ok(request):
        return None
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
            return _json_response(request, kind, body, 201 if created else 200)
        rules = actions.project_rules(project_id)
        if rules is None or (rules.archived and not has_access(user, BUILDER)):
            return None  # the view's 404
        return _json_response(request, kind, actions.next_or_reason(rules, user), 200)
    except StudioAPIError as exc:  # as studio.errors.exception_handler writes it
        return _json_response(request, kind, error_body(exc.error_code, str(exc.detail), exc.hint or None,
                                                        fields=exc.fields), exc.status_code)
    except Exception:
        log.exception("unhandled error in the lean labeling path (%s)", request.path)
        return _json_response(request, kind, error_body("server_error", "The server failed to handle this request."),
                              500)
