"""API tokens, the error shape and the OpenAPI schema."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from studio.models import ApiToken, hash_token

pytestmark = pytest.mark.django_db


def test_token_is_shown_once_and_stored_hashed(client_for, annotator):  # noqa: ANN001
    client = client_for(annotator)
    resp = client.post("/api/tokens/", {"name": "labeling script"}, format="json")
    assert resp.status_code == 201
    key = resp.json()["key"]
    assert key.startswith("lls_") and len(key) > 40
    token = ApiToken.objects.get(pk=resp.json()["id"])
    assert token.key_hash == hash_token(key) and key not in (token.key_hash, token.prefix)
    listed = client.get("/api/tokens/").json()["results"]
    assert listed[0]["prefix"] == key[:12] and "key" not in listed[0]


def test_token_authenticates_and_revocation_stops_it(client_for, builder):  # noqa: ANN001
    key = client_for(builder).post("/api/tokens/", {"name": "ci"}, format="json").json()["key"]
    program = APIClient()
    program.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    me = program.get("/api/me/")
    assert me.status_code == 200 and me.json()["username"] == builder.username
    assert me.json()["roles"] == ["builder"]
    token = ApiToken.objects.get(user=builder)
    assert token.last_used_at is not None
    assert client_for(builder).delete(f"/api/tokens/{token.id}/").status_code == 204
    resp = program.get("/api/me/")
    assert resp.status_code == 401
    assert resp.json()["code"] == "authentication_failed"
    assert ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=False).exists()


def test_tokens_are_private_to_their_owner(client_for, builder, annotator):  # noqa: ANN001
    resp = client_for(builder).post("/api/tokens/", {"name": "mine"}, format="json")
    other = client_for(annotator)
    assert other.get(f"/api/tokens/{resp.json()['id']}/").status_code == 404
    assert other.delete(f"/api/tokens/{resp.json()['id']}/").status_code == 404
    assert other.get("/api/tokens/").json()["results"] == []


@pytest.mark.parametrize("body,content_type,code", [
    ('{"name": ', "application/json", "parse_error"),
    ("{}", "application/json", "invalid"),
    ('{"name": ""}', "application/json", "invalid"),
    ('{"name": "' + "x" * 200 + '"}', "application/json", "invalid"),
    ("[1, 2]", "application/json", "invalid"),
    ("name=x", "text/csv", "unsupported_media_type"),
])
def test_bad_payloads_get_400_in_the_error_shape(client_for, builder, body, content_type, code):  # noqa: ANN001
    resp = client_for(builder).generic("POST", "/api/tokens/", body, content_type=content_type)
    assert 400 <= resp.status_code < 500
    data = resp.json()
    assert data["code"] == code
    assert data["detail"] and data["hint"]
    if code == "invalid":
        assert "fields" in data


def test_malformed_token_header(client_for):  # noqa: ANN001
    program = APIClient()
    program.credentials(HTTP_AUTHORIZATION="Token a b")
    resp = program.get("/api/me/")
    assert resp.status_code == 401 and resp.json()["code"] == "authentication_failed"


def test_unknown_api_path_and_method(client_for, builder):  # noqa: ANN001
    resp = client_for(builder).get("/api/no/such/thing/")
    assert resp.status_code == 404 and resp.json()["code"] == "not_found"
    resp = client_for(builder).put("/api/me/", {}, format="json")
    assert resp.status_code == 405 and resp.json()["code"] == "method_not_allowed"


def test_events_after_must_be_an_id(client_for, builder):  # noqa: ANN001
    resp = client_for(builder).get("/api/events/?after=abc")
    assert resp.status_code == 400 and resp.json()["code"] == "invalid"


def test_openapi_schema_and_docs_page(client_for):  # noqa: ANN001
    client = client_for(None)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    doc = schema.json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/tokens/", "/api/me/", "/api/system/selftest/"} <= set(doc["paths"])
    assert "TokenAuthentication" in str(doc["components"]["securitySchemes"]) or doc["components"]["securitySchemes"]
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/vendor/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html


def test_openapi_schema_is_valid_without_warnings(tmp_path):  # noqa: ANN001
    from django.core.management import call_command

    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    assert target.read_text().startswith("openapi: 3")
