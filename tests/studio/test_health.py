from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_healthz_reports_each_part(client):  # noqa: ANN001
    resp = client.get("/healthz")
    assert resp.status_code == 200
    data = resp.json()
    assert data["status"] == "ok"
    for part in ("database", "queue", "channel_layer"):
        assert data[part]["ok"] is True and "address" in data[part]
    assert data["database"]["vendor"] in ("sqlite", "postgresql")


def test_healthz_reports_a_broken_queue(client, monkeypatch):  # noqa: ANN001
    from huey.contrib.djhuey import HUEY

    def broken() -> int:
        raise ConnectionError("queue storage unreachable")

    monkeypatch.setattr(HUEY, "pending_count", broken)
    resp = client.get("/healthz")
    assert resp.status_code == 503
    data = resp.json()
    assert data["status"] == "degraded" and data["queue"]["ok"] is False
    assert "unreachable" in data["queue"]["error"]
