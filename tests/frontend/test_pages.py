"""Server-rendered pages: sign-in, dashboard with real counts, navigation by role, escaping."""

from __future__ import annotations

import re

import pytest

from studio.events import publish

pytestmark = pytest.mark.django_db

LIFECYCLE = ["Data", "Tokenizers", "Pretraining", "Fine-tuning", "Labeling", "Evaluation", "Optimization",
             "Deploy", "Reports"]


def nav_items(html: str) -> list[str]:
    nav = re.search(r'<nav aria-label="Lifecycle".*?</nav>', html, re.S).group(0)
    return [t.strip() for t in re.findall(r">([^<>]+)</a>", nav)]


def test_dashboard_needs_sign_in(client):  # noqa: ANN001
    resp = client.get("/")
    assert resp.status_code == 302 and resp["Location"].startswith("/accounts/login/")
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and b'<label for="id_username">' in page.content


def test_sign_in_with_the_form(client, make_user):  # noqa: ANN001
    make_user("alice", "builder", password="a-good-password-1")
    page = client.post("/accounts/login/", {"username": "alice", "password": "a-good-password-1"})
    assert page.status_code == 302 and page["Location"] == "/"
    from django.test import Client

    bad = Client().post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert bad.status_code == 200 and b"didn't match" in bad.content


def test_builder_sees_the_whole_lifecycle(client_for, builder):  # noqa: ANN001
    html = client_for(builder).get("/").content.decode()
    assert nav_items(html) == ["Dashboard", *LIFECYCLE]


def test_annotator_and_moderator_see_their_stages(client_for, annotator, moderator):  # noqa: ANN001
    assert nav_items(client_for(annotator).get("/").content.decode()) == ["Dashboard", "Labeling"]
    assert nav_items(client_for(moderator).get("/").content.decode()) == ["Dashboard", "Reports"]


def test_dashboard_counts_come_from_the_database(client_for, make_user):  # noqa: ANN001
    from django.contrib.auth import get_user_model

    assert get_user_model().objects.count() == 0
    user = make_user("boss", "builder")
    make_user("a1", "annotator")
    make_user("a2", "annotator")
    make_user("m1", "moderator")
    client = client_for(user)
    html = client.get("/").content.decode()
    assert re.search(r'data-count="users">4<', html)
    assert re.search(r'data-count="annotators">2<', html)
    assert re.search(r'data-count="moderators">1<', html)
    assert re.search(r'data-count="builders">1<', html)
    client.post("/api/tokens/", {"name": "t"}, content_type="application/json")
    assert re.search(r'data-count="active-api-tokens">1<', client.get("/").content.decode())


def test_event_payloads_are_escaped(client_for, builder):  # noqa: ANN001
    publish("report.created", {"text": "<script>alert(1)</script>"})
    html = client_for(builder).get("/").content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_data_and_pretraining_pages_show_real_records(client_for, builder):  # noqa: ANN001
    client = client_for(builder)
    data = client.get("/data/").content.decode()
    assert "r-cran-janeaustenr" in data and "austen" in data
    pre = client.get("/pretraining/").content.decode()
    assert "tiny" in pre and "7b" in pre


def test_static_assets_are_served_locally(client_for, builder):  # noqa: ANN001
    html = client_for(builder).get("/").content.decode()
    assert "/static/frontend/studio.js" in html and "/static/frontend/studio.css" in html
    assert "//cdn" not in html and "https://" not in html


def test_every_signed_in_user_can_reach_the_chat(client_for, plain_user, annotator):  # noqa: ANN001
    for user in (plain_user, annotator):
        html = client_for(user).get("/").content.decode()
        assert 'href="/chat/"' in html
        assert client_for(user).get("/chat/").status_code == 200
