"""The annotator's hot requests served in front of Django (``labeling/lean.py``, wired in
``studio/asgi.py``): the same answers as the DRF views, for signed-in sessions and API tokens, and
everything it does not fully understand — no session, a wrong role, a bad CSRF token, an unknown,
revoked or malformed token, a malformed field — handed to those views, which refuse it with the
API's usual errors. On PostgreSQL the request's first statement is the connection's health check.

The requests go through the real ASGI application (on its own request threads and database
connections, hence committed transactions), as Uvicorn would send them.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections
from django.test import Client
from django.utils import timezone

from labeling import actions, lean
from labeling.models import Assignment, Judgement
from labeling.serializers import JudgementSerializer

pytestmark = pytest.mark.django_db(transaction=True)

CSRF = "abcdefghijklmnopqrstuvwxyz012345"  # a CSRF secret: the cookie and the header agree


class Studio:
    """The studio's ASGI HTTP app; records which requests the lean path answered itself."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, threads: int = 2) -> None:
        from studio.asgi import HotPaths
        from studio.asgi_threads import PooledThreadsASGIHandler

        self.django = PooledThreadsASGIHandler(threads)
        self.app = HotPaths(self.django)
        self.served: list[bool] = []
        self.headers: dict[str, str] = {}  # the last response's
        serve = lean.serve

        def spy(request, route):  # noqa: ANN001, ANN202
            response = serve(request, route)
            self.served.append(response is not None)
            return response

        monkeypatch.setattr(lean, "serve", spy)

    def request(self, method: str, path: str, body: object = None, *, cookies: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict, bool | None]:
        """(status, JSON body, whether the lean path answered: None when it was not asked)."""
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        head = {"host": "127.0.0.1:8000", "content-type": "application/json", "accept": "application/json",
                "content-length": str(len(data)), **(headers or {})}
        if cookies:
            head["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 40000),
                 "http_version": "1.1", "asgi": {"version": "3.0"},
                 "headers": [(k.encode(), v.encode()) for k, v in head.items()]}
        before = len(self.served)
        out: dict = {"body": b""}

        async def run() -> None:
            sent = False

            async def receive() -> dict:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": data, "more_body": False}
                await asyncio.sleep(3600)
                return {"type": "http.disconnect"}

            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    out["status"] = message["status"]
                    self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
                else:
                    out["body"] += message.get("body", b"")

            await self.app(scope, receive, send)

        asyncio.run(run())
        asked = len(self.served) > before
        return out["status"], json.loads(out["body"] or b"null"), (self.served[-1] if asked else None)

    def close(self) -> None:
        """Close the request threads' database connections (the test database is dropped next)."""
        while not self.django._idle.empty():
            executor: ThreadPoolExecutor = self.django._idle.get_nowait()
            executor.submit(connections.close_all).result()
            executor.shutdown()


@pytest.fixture
def studio(monkeypatch):  # noqa: ANN001, ANN201
    s = Studio(monkeypatch)
    yield s
    if s.django._idle is not None:
        s.close()


def signed_in(user) -> dict[str, str]:  # noqa: ANN001
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value, "csrftoken": CSRF}


def post(studio: Studio, path: str, user_cookies: dict[str, str] | None, body: object = None,
         **kw: object) -> tuple[int, dict, bool | None]:
    headers = {"x-csrftoken": CSRF, **kw.pop("headers", {})}  # type: ignore[dict-item]
    return studio.request("POST", path, body, cookies=user_cookies, headers=headers, **kw)  # type: ignore[arg-type]


def test_lean_answers_as_the_views_do(studio, annotator, make_project):  # noqa: ANN001
    project = make_project(3, name="lean-same")
    me = signed_in(annotator)
    status, task, lean_served = post(studio, f"/api/labeling/projects/{project.pk}/next/", me)
    assert status == 200 and lean_served is True
    assert task["assignment"] and [r["label"] for r in task["responses"]] == ["A", "B"]
    assert "model" not in task["responses"][0] and task["prompt"][0]["role"] == "user"
    # the current lock again, through the DRF view: the very same answer
    view = Client()
    view.force_login(annotator)
    again = view.post(f"/api/labeling/projects/{project.pk}/next/", content_type="application/json")
    assert again.status_code == 200 and again.json() == task

    body = {"assignment": task["assignment"], "choice": "b", "strength": 2, "client_token": "tok-lean-1",
            "time_on_task_ms": 1234, "comment": "fine", "next": True}
    status, judged, lean_served = post(studio, "/api/labeling/judgements/", me, body)
    assert status == 201 and lean_served is True
    stored = Judgement.objects.get(pk=judged["id"])
    assert {k: v for k, v in judged.items() if k != "next"} == JudgementSerializer(stored).data
    assert stored.choice == "b" and stored.strength == 2 and stored.assignment_id == task["assignment"]
    assert judged["next"]["assignment"] and judged["next"]["item"] != task["item"]
    assert Assignment.objects.get(pk=task["assignment"]).status == "submitted"
    from studio.models import Event

    assert Event.objects.filter(group=f"labeling.project.{project.pk}", kind="labeling.judgement",
                                payload__judgement=judged["id"]).exists()
    # the same client token again: the stored judgement, 200, nothing new
    status, same, _ = post(studio, "/api/labeling/judgements/", me, {**body, "next": False})
    assert status == 200 and same == {k: v for k, v in judged.items() if k != "next"}
    assert Judgement.objects.filter(project=project).count() == 1


def test_rule_refusals_have_the_same_shape(studio, annotator, make_user, make_project):  # noqa: ANN001
    project = make_project(3, name="lean-refusals", lock_ttl_seconds=60)
    other = make_user("olga", "annotator")
    mine = actions.next_item(project, annotator)
    theirs = actions.next_item(project, other)
    me = signed_in(annotator)
    view = Client(enforce_csrf_checks=False)
    view.force_login(annotator)

    def both(body: dict) -> tuple[int, dict]:
        status, lean_body, lean_served = post(studio, "/api/labeling/judgements/", me, body)
        assert lean_served is True
        drf = view.post("/api/labeling/judgements/", body, content_type="application/json")
        assert (status, lean_body) == (drf.status_code, drf.json())
        return status, lean_body

    status, body = both({"assignment": theirs["assignment"], "choice": "a"})
    assert status == 403 and body["code"] == "not_your_item" and body["hint"]
    status, body = both({"assignment": 10 ** 9, "choice": "a"})
    assert status == 404 and body["code"] == "not_found"
    status, body = both({"assignment": mine["assignment"], "choice": "a", "strength": 2})
    assert status == 400 and body["code"] == "invalid" and body["fields"] == {"strength": [
        "strength +2 contradicts choice 'a'"]}
    Assignment.objects.filter(pk=mine["assignment"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    status, body = both({"assignment": mine["assignment"], "choice": "a"})
    assert status == 409 and body["code"] == "lock_expired" and "60 s" in body["hint"]
    assert not Judgement.objects.exists()


def test_what_lean_does_not_understand_goes_to_the_views(studio, annotator, plain_user, make_project):  # noqa: ANN001
    project = make_project(2, name="lean-declines")
    me = signed_in(annotator)
    task = actions.next_item(project, annotator)
    url = "/api/labeling/judgements/"
    good = {"assignment": task["assignment"], "choice": "a"}

    status, body, lean_served = post(studio, url, None, good)  # not signed in
    assert (status, body["code"], lean_served) == (401, "not_authenticated", False)
    status, body, lean_served = post(studio, url, signed_in(plain_user), good)  # no annotator role
    assert (status, body["code"], lean_served) == (403, "permission_denied", False)
    status, body, lean_served = post(studio, url, me, good, headers={"x-csrftoken": "wrong" * 6 + "xx"})
    assert (status, body["code"], lean_served) == (403, "permission_denied", False) and "CSRF" in body["detail"]
    status, body, lean_served = studio.request("POST", url, good, cookies=me)  # no CSRF header at all
    assert (status, lean_served) == (403, False) and "CSRF" in body["detail"]
    status, body, lean_served = post(studio, url, {**me, "sessionid": "x" * 32}, good)  # unknown session
    assert (status, body["code"], lean_served) == (401, "not_authenticated", False)
    status, body, lean_served = post(studio, url, me, {"assignment": task["assignment"], "choice": "left"})
    assert (status, body["code"], lean_served) == (400, "invalid", False) and "choice" in body["fields"]
    status, body, lean_served = post(studio, url, me, raw=b"{not json")
    assert (status, body["code"], lean_served) == (400, "parse_error", False)
    status, body, lean_served = post(studio, url, me, {**good, "comment": "  padded  "})  # DRF trims: its job
    assert (status, lean_served) == (201, False) and body["comment"] == "padded"
    assert Judgement.objects.count() == 1

    status, body, lean_served = post(studio, "/api/labeling/projects/999999/next/", me)
    assert (status, body["code"], lean_served) == (404, "not_found", False)
    # a changed password signs the old session out: Django's own path decides
    annotator.set_password("a-new-password-1")
    annotator.save()
    status, body, lean_served = post(studio, f"/api/labeling/projects/{project.pk}/next/", me)
    assert (status, body["code"], lean_served) == (401, "not_authenticated", False)


def token_for(user, name: str = "bot") -> dict[str, str]:  # noqa: ANN001
    """An API token made as the studio makes one (the Account page's API): its Authorization header."""
    from studio.actions import do_create_api_token

    _, key = do_create_api_token(user, name)
    return {"authorization": f"Token {key}"}


def drf_client(headers: dict[str, str]) -> Client:
    """A client of the DRF views themselves (Django's test client does not go through the lean path)."""
    return Client(headers=headers)


def test_api_tokens_are_served_as_the_views_serve_them(studio, annotator, make_project):  # noqa: ANN001
    project = make_project(3, name="lean-token")
    auth = token_for(annotator)
    next_url = f"/api/labeling/projects/{project.pk}/next/"
    status, task, lean_served = studio.request("POST", next_url, headers=auth)  # no cookie, no CSRF token
    assert status == 200 and lean_served is True and task["assignment"]
    lean_headers = studio.headers
    drf = drf_client(auth).post(next_url, content_type="application/json", headers={"accept": "application/json"})
    assert drf.status_code == 200 and drf.json() == task  # the current lock again: the very same answer
    for name in ("content-type", "vary", "allow", "x-frame-options", "x-content-type-options",
                 "referrer-policy", "cross-origin-opener-policy"):
        assert lean_headers.get(name) == drf.headers.get(name), name

    body = {"assignment": task["assignment"], "choice": "a", "strength": -1, "client_token": "tok-token-1",
            "next": True}
    status, judged, lean_served = studio.request("POST", "/api/labeling/judgements/", body, headers=auth)
    assert status == 201 and lean_served is True
    stored = Judgement.objects.get(pk=judged["id"])
    assert stored.annotator_id == annotator.pk and stored.choice == "a"
    assert {k: v for k, v in judged.items() if k != "next"} == JudgementSerializer(stored).data
    assert judged["next"]["assignment"] and judged["next"]["item"] != task["item"]
    again = drf_client(auth).post("/api/labeling/judgements/", {**body, "next": False},
                                  content_type="application/json")
    assert again.status_code == 200 and again.json() == {k: v for k, v in judged.items() if k != "next"}


def test_a_token_decides_alone_as_in_drf(studio, annotator, plain_user, make_project):  # noqa: ANN001
    """DRF tries the token first: a session cookie beside it, and its CSRF token, do not count."""
    project = make_project(2, name="lean-token-order")
    next_url = f"/api/labeling/projects/{project.pk}/next/"
    # the token's user (an annotator) beside the session of a user with no role: the token's user labels
    status, task, lean_served = studio.request("POST", next_url, cookies=signed_in(plain_user),
                                               headers=token_for(annotator))
    assert (status, lean_served) == (200, True)
    assert Assignment.objects.get(pk=task["assignment"]).annotator_id == annotator.pk
    # an annotator's session beside an unknown token: DRF's 401, not the session
    status, body, lean_served = post(studio, next_url, signed_in(annotator),
                                     headers={"authorization": "Token lls_unknown"})
    assert (status, body["code"], lean_served) == (401, "authentication_failed", False)
    # another scheme is not a token: the session (with its CSRF check) decides, as in DRF
    status, again, lean_served = post(studio, next_url, signed_in(annotator), headers={"authorization": "Bearer x"})
    assert (status, lean_served) == (200, True) and again == task  # the annotator's current lock
    status, _, lean_served = studio.request("POST", next_url, cookies=signed_in(annotator),
                                            headers={"authorization": "Bearer x"})  # no CSRF header
    assert (status, lean_served) == (403, False)
    view = Client(headers={"authorization": "Bearer x"})
    view.force_login(annotator)
    assert view.post(next_url, content_type="application/json").json() == again


def test_what_lean_refuses_of_tokens_gets_drfs_answer(studio, annotator, plain_user, make_user,
                                                       make_project):  # noqa: ANN001
    from studio.actions import do_revoke_api_token
    from studio.models import ApiToken

    project = make_project(2, name="lean-token-refusals")
    next_url = f"/api/labeling/projects/{project.pk}/next/"
    revoked = token_for(annotator, "old")
    do_revoke_api_token(ApiToken.objects.get(user=annotator, name="old"))
    idle = make_user("ida", "annotator")
    inactive = token_for(idle)
    idle.is_active = False
    idle.save()
    cases = [
        (revoked, 401, "authentication_failed", "Invalid or revoked API token."),
        ({"authorization": "Token lls_not-a-key"}, 401, "authentication_failed", "Invalid or revoked API token."),
        (inactive, 401, "authentication_failed", "Invalid or revoked API token."),
        ({"authorization": "Token"}, 401, "authentication_failed", "Malformed Authorization header"),
        ({"authorization": "Token a b"}, 401, "authentication_failed", "Malformed Authorization header"),
        ({"authorization": "Token lls_\u00e9t\u00e9"}, 401, "authentication_failed", "invalid characters"),
        (token_for(plain_user), 403, "permission_denied", "role"),  # no annotator role
    ]
    for headers, code, error, detail in cases:
        status, body, lean_served = studio.request("POST", next_url, headers=headers)
        assert (status, body["code"], lean_served) == (code, error, False), headers
        assert detail in body["detail"], body
        drf = drf_client(headers).post(next_url, content_type="application/json")
        assert (drf.status_code, drf.json()) == (status, body)
    assert not Assignment.objects.exists()


def test_token_last_used_at_is_written_at_most_once_a_minute(studio, annotator, make_project):  # noqa: ANN001
    from studio.models import ApiToken

    project = make_project(2, name="lean-token-used")
    auth = token_for(annotator)
    token = ApiToken.objects.get(user=annotator)
    assert token.last_used_at is None
    next_url = f"/api/labeling/projects/{project.pk}/next/"

    def used() -> object:
        status, _, lean_served = studio.request("POST", next_url, headers=auth)
        assert (status, lean_served) == (200, True)
        return ApiToken.objects.get(pk=token.pk).last_used_at

    first = used()
    assert first is not None and timezone.now() - first < timedelta(seconds=30)
    assert used() == first  # within the minute: not written again
    long_ago = timezone.now() - timedelta(seconds=61)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=long_ago)
    assert used() > long_ago + timedelta(seconds=30)


def postgresql_only() -> None:
    if connections["default"].vendor != "postgresql":
        pytest.skip("a PostgreSQL test: run by tests/labeling/test_on_postgresql.py with PostgreSQL as the database")
    assert connections["default"].settings_dict["CONN_HEALTH_CHECKS"]  # the studio's PostgreSQL default


@pytest.mark.parametrize("auth", ["session", "token"])
def test_a_dead_connection_is_replaced_by_the_first_lookup(monkeypatch, annotator, make_project, auth):  # noqa: ANN001
    """PostgreSQL restarted, or the backend terminated, between two requests of a request thread:
    the next request's first lookup notices, reconnects and is still answered by the lean path."""
    postgresql_only()
    studio = Studio(monkeypatch, threads=1)  # both requests on the same thread and connection
    try:
        project = make_project(3, name=f"lean-dead-{auth}")
        who = ({"user_cookies": signed_in(annotator)} if auth == "session"
               else {"user_cookies": None, "headers": token_for(annotator)})
        next_url = f"/api/labeling/projects/{project.pk}/next/"
        status, task, lean_served = post(studio, next_url, **who)
        assert (status, lean_served) == (200, True)
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            assert cursor.fetchall() == [(True,)]  # the request thread's connection
        status, judged, lean_served = post(studio, "/api/labeling/judgements/",
                                           body={"assignment": task["assignment"], "choice": "a", "next": True}, **who)
        assert (status, lean_served) == (201, True), judged
        assert judged["next"]["assignment"]
    finally:
        studio.close()


def test_no_health_check_query_after_the_first_lookup(studio, monkeypatch, annotator, make_project):  # noqa: ANN001
    """Django would send ``SELECT 1`` before a request's first cursor on a kept connection; the lean
    path's first lookup stands for it."""
    postgresql_only()
    project = make_project(4, name="lean-health")
    me, auth = signed_in(annotator), token_for(annotator)
    next_url = f"/api/labeling/projects/{project.pk}/next/"
    for who in ({"user_cookies": me}, {"user_cookies": None, "headers": auth}):  # connect both request threads
        assert post(studio, next_url, **who)[0] == 200
    checks: list[str] = []
    wrapper = type(connections["default"])
    is_usable = wrapper.is_usable

    def counted(self):  # noqa: ANN001, ANN202
        checks.append("SELECT 1")
        return is_usable(self)

    monkeypatch.setattr(wrapper, "is_usable", counted)
    for who in ({"user_cookies": me}, {"user_cookies": None, "headers": auth}) * 2:
        status, task, lean_served = post(studio, next_url, **who)
        assert (status, lean_served) == (200, True)
        status, _, lean_served = post(studio, "/api/labeling/judgements/",
                                      body={"assignment": task["assignment"], "choice": "b"}, **who)
        assert (status, lean_served) == (201, True)
    assert checks == []
    # a request the lean path declines goes through Django, which checks its connection as usual
    status, _, lean_served = studio.request("POST", next_url, headers={"authorization": "Token lls_unknown"})
    assert (status, lean_served) == (401, False) and checks


def test_the_views_authenticate_as_lean_mirrors() -> None:
    """The lean path resolves callers as DRF's default authentication does; the two views use it."""
    from django.urls import resolve

    for path in ("/api/labeling/judgements/", "/api/labeling/projects/1/next/"):
        assert tuple(resolve(path).func.cls.authentication_classes) == lean.AUTHENTICATION, path


def test_match_names_only_the_hot_requests() -> None:
    assert lean.match("POST", "/api/labeling/judgements/") == (lean.SUBMIT, None)
    assert lean.match("POST", "/api/labeling/projects/12/next/") == (lean.NEXT, 12)
    assert lean.match("GET", "/api/labeling/judgements/") is None
    assert lean.match("POST", "/api/labeling/projects/x/next/") is None
    assert lean.match("POST", "/api/labeling/judgements/3/") is None


def test_ranking_and_rating_answers_through_lean(studio, annotator, builder):  # noqa: ANN001
    lines = "\n".join(json.dumps({"id": f"r{i}", "prompt": f"Rank {i}", "responses": [
        {"text": f"one {i}", "model": "m1"}, {"text": f"two {i}", "model": "m2"}, {"text": f"three {i}", "model": "m3"}]})
        for i in range(2))
    me = signed_in(annotator)
    for task_type, answer in (("ranking", lambda ids: {"ranking": ids[::-1]}),
                              ("rating", lambda ids: {"ratings": {str(r): {"helpful": 4, "honest": 5} for r in ids}})):
        project = actions.create_project(builder, name=f"lean-{task_type}", task_type=task_type,
                                         criteria=["helpful", "honest"])
        actions.import_jsonl(project, builder, lines, seed=1)
        status, task, lean_served = post(studio, f"/api/labeling/projects/{project.pk}/next/", me)
        assert status == 200 and lean_served and task["task_type"] == task_type and len(task["responses"]) == 3
        ids = [r["id"] for r in task["responses"]]
        status, judged, lean_served = post(studio, "/api/labeling/judgements/", me,
                                           {"assignment": task["assignment"], **answer(ids)})
        assert status == 201 and lean_served, judged
        stored = Judgement.objects.get(pk=judged["id"])
        assert judged == JudgementSerializer(stored).data
        assert stored.ranking == (ids[::-1] if task_type == "ranking" else [])
        assert stored.ratings == ({} if task_type == "ranking" else {str(r): {"helpful": 4, "honest": 5} for r in ids})
        # an incomplete ranking is refused by the rules, with the DRF views' error
        status, task, _ = post(studio, f"/api/labeling/projects/{project.pk}/next/", me)
        status, body, lean_served = post(studio, "/api/labeling/judgements/", me,
                                         {"assignment": task["assignment"], "ranking": ids[:1]}
                                         if task_type == "ranking" else
                                         {"assignment": task["assignment"], "ratings": {}})
        assert (status, body["code"], lean_served) == (400, "invalid", True)
        assert list(body["fields"]) == [task_type if task_type == "ranking" else "ratings"]
