"""One error shape for the whole API: ``{"code", "detail", "hint"}`` with stable codes.

Validation errors add ``fields``: ``{field: [messages]}``. Codes are stable strings that clients
may switch on; ``detail`` is for people; ``hint`` says what to do.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

log = logging.getLogger(__name__)

HINTS = {
    "not_authenticated": "Sign in, or send an API token: 'Authorization: Token <key>' (create one under Account).",
    "authentication_failed": "The API token is unknown or revoked; create a new one under Account.",
    "permission_denied": "Ask a builder to give your account the role this action needs.",
    "not_found": "Check the id in the URL; the object may have been deleted.",
    "method_not_allowed": "See /api/docs/ for the methods this endpoint accepts.",
    "invalid": "Fix the fields listed in 'fields' and send the request again.",
    "parse_error": "Send a valid JSON body with 'Content-Type: application/json'.",
    "unsupported_media_type": "Send JSON ('Content-Type: application/json') or the upload type this endpoint documents.",
    "not_acceptable": "Ask for 'Accept: application/json'.",
    "throttled": "Wait and try again.",
    "server_error": "This is a bug in the studio; the server log has the details.",
}


class StudioAPIError(exceptions.APIException):
    """An API error with a stable code and a hint. Raise it from views and actions."""

    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, code: str, detail: str, hint: str = "", status_code: int | None = None,
                 fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail=detail, code=code)
        self.error_code = code
        self.hint = hint
        self.fields = fields
        if status_code is not None:
            self.status_code = status_code


def error_body(code: str, detail: str, hint: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"code": code, "detail": detail, "hint": hint if hint is not None else HINTS.get(code, "")}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _flatten(detail: Any) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            if isinstance(value, dict):
                for sub, msgs in _flatten(value).items():
                    out[f"{key}.{sub}"] = msgs
            elif isinstance(value, list):
                msgs = []
                for i, v in enumerate(value):
                    if isinstance(v, dict):
                        for sub, m in _flatten(v).items():
                            out[f"{key}[{i}].{sub}"] = m
                    else:
                        msgs.append(str(v))
                if msgs:
                    out[key] = msgs
            else:
                out[key] = [str(value)]
        return out
    if isinstance(detail, list):
        return {"non_field_errors": [str(d) for d in detail]}
    return {"non_field_errors": [str(detail)]}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF exception handler producing the studio's error shape (never a bare 500 page)."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)

    if isinstance(exc, StudioAPIError):
        body = error_body(exc.error_code, str(exc.detail), exc.hint or None, fields=exc.fields)
        return Response(body, status=exc.status_code)
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()))
        detail = f"{first[0]}: {first[1][0]}" if first[0] != "non_field_errors" else first[1][0]
        return Response(error_body("invalid", detail, fields=fields), status=400)
    if isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        return Response(error_body(code, str(exc.detail)), status=exc.status_code, headers=headers)

    view = context.get("view")
    log.exception("unhandled error in %s", type(view).__name__ if view else "API view", exc_info=exc)
    return Response(error_body("server_error", "The server failed to handle this request."), status=500)


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse | Any:
    if _is_api(request):
        return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}."), status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def json_500(request: HttpRequest) -> JsonResponse | Any:
    if _is_api(request):
        return JsonResponse(error_body("server_error", "The server failed to handle this request."), status=500)
    from django.views.defaults import server_error

    return server_error(request)


def json_403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse | Any:
    if _is_api(request):
        return JsonResponse(error_body("permission_denied", str(exception or "Permission denied.")), status=403)
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse | Any:
    if _is_api(request):
        return JsonResponse(error_body("bad_request", str(exception or "Bad request.")), status=400)
    from django.views.defaults import bad_request

    return bad_request(request, exception)
