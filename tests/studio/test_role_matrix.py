"""Walk every URL pattern and check what an anonymous user, an annotator, a moderator and a
builder get. Every endpoint must declare its required role."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from studio.roles import ACCESS_LEVELS, has_access

# Django's admin has its own staff-based access control; it is checked separately below.
SKIP_PREFIXES = ("admin/",)
# Pages that are entry points for signing in/out
AUTH_PAGES = {"accounts/login/", "accounts/logout/"}


def _walk(patterns, prefix=""):  # noqa: ANN001, ANN202
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern), p


def _declared_role(pattern: URLPattern) -> str | None:
    cb = pattern.callback
    for owner in (getattr(cb, "cls", None), getattr(cb, "view_class", None), cb):
        if owner is not None and getattr(owner, "required_role", None):
            return owner.required_role
    return None


def _concrete(route: str) -> str:
    route = route.replace("^", "").replace("$", "").replace(".*", "no-such-endpoint/")
    route = re.sub(r"<int:\w+>", "999999", route)
    route = re.sub(r"<[^>]+>", "x", route)
    return "/" + route


ALL = [(route, p) for route, p in _walk(get_resolver().url_patterns) if not route.startswith(SKIP_PREFIXES)]


def test_every_endpoint_declares_a_role():
    missing = [route for route, p in ALL if _declared_role(p) not in ACCESS_LEVELS]
    assert not missing, f"endpoints without a valid required_role: {missing}"


@pytest.mark.django_db
@pytest.mark.parametrize("route,pattern", ALL, ids=[r for r, _ in ALL])
def test_role_matrix(route, pattern, make_user, client_for):  # noqa: ANN001
    level = _declared_role(pattern)
    url = _concrete(route)
    users = {
        "anonymous": None,
        "plain": make_user("plain"),
        "annotator": make_user("annie", "annotator"),
        "moderator": make_user("moe", "moderator"),
        "builder": make_user("bob", "builder"),
    }
    is_api = url.startswith("/api/")
    for who, user in users.items():
        resp = client_for(user).get(url, HTTP_ACCEPT="application/json" if is_api else "text/html")
        code = resp.status_code
        allowed = has_access(user, level) if user is not None else level == "public"
        if route in AUTH_PAGES:
            assert code in (200, 302, 405), (who, url, code)
            continue
        if allowed:
            assert code not in (401, 403), f"{who} should reach {url} ({level}) but got {code}"
            assert code < 500, f"{who} got a server error at {url}"
        elif user is None:
            if is_api:
                assert code == 401, f"anonymous at {url} ({level}) got {code}"
                assert resp.json()["code"] == "not_authenticated"
            else:
                assert code == 302 and "/accounts/login/" in resp["Location"], (url, code)
        else:
            assert code == 403, f"{who} at {url} ({level}) got {code}, expected 403"
            if is_api:
                assert set(resp.json()) >= {"code", "detail", "hint"}


@pytest.mark.django_db
def test_admin_needs_staff(client_for, builder):  # noqa: ANN001
    resp = client_for(None).get("/admin/")
    assert resp.status_code == 302 and "/admin/login/" in resp["Location"]
    resp = client_for(builder).get("/admin/")
    assert resp.status_code == 302  # builders are not staff unless made so


@pytest.mark.django_db
def test_stage_pages_follow_roles(client_for, annotator, moderator, builder):  # noqa: ANN001
    assert client_for(annotator).get("/labeling/").status_code == 200
    assert client_for(annotator).get("/pretraining/").status_code == 403
    assert client_for(moderator).get("/reports/").status_code == 200
    assert client_for(moderator).get("/data/").status_code == 403
    for slug in ("data", "tokenizers", "pretraining", "labeling", "reports", "deploy"):
        assert client_for(builder).get(f"/{slug}/").status_code == 200
