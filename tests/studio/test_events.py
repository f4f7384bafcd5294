"""Studio events reach signed-in browsers over websockets, through a real queue round trip."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from studio.asgi import application
from studio.consumers import CLOSE_UNAUTHENTICATED, StudioEventsConsumer
from studio.events import publish

pytestmark = pytest.mark.django_db(transaction=True)


def communicator(user, query: str = "") -> WebsocketCommunicator:  # noqa: ANN001
    comm = WebsocketCommunicator(StudioEventsConsumer.as_asgi(), f"/ws/events/{query}")
    comm.scope["user"] = user
    return comm


async def test_anonymous_websocket_is_refused():
    comm = communicator(AnonymousUser())
    connected, code = await comm.connect()
    assert not connected and code == CLOSE_UNAUTHENTICATED


async def test_foreign_origin_is_refused(make_user):  # noqa: ANN001
    comm = WebsocketCommunicator(application, "/ws/events/", headers=[(b"origin", b"http://evil.example")])
    connected, _ = await comm.connect()
    assert not connected


async def test_signed_in_user_receives_published_events(make_user):  # noqa: ANN001
    user = await sync_to_async(make_user)("watcher")
    comm = communicator(user)
    connected, _ = await comm.connect()
    assert connected
    event = await sync_to_async(publish)("run.state_changed", {"run": 7, "state": "running"})
    message = await comm.receive_json_from(timeout=5)
    assert message["type"] == "event" and message["id"] == event.id
    assert message["kind"] == "run.state_changed" and message["payload"] == {"run": 7, "state": "running"}
    await comm.send_json_to({"type": "ping"})
    assert (await comm.receive_json_from(timeout=5)) == {"type": "pong"}
    await comm.disconnect()


async def test_history_is_replayed_after_an_id(make_user):  # noqa: ANN001
    user = await sync_to_async(make_user)("late")
    first = await sync_to_async(publish)("a", {"n": 1})
    await sync_to_async(publish)("b", {"n": 2})
    await sync_to_async(publish)("c", {"n": 3})
    comm = communicator(user, f"?after={first.id}")
    assert (await comm.connect())[0]
    kinds = [(await comm.receive_json_from(timeout=5))["kind"] for _ in range(2)]
    assert kinds == ["b", "c"]
    assert await comm.receive_nothing(timeout=0.6)
    await comm.disconnect()


async def test_selftest_goes_through_the_queue_and_comes_back(make_user, settings):  # noqa: ANN001
    settings.HUEY_IMMEDIATE = True
    from huey.contrib.djhuey import HUEY

    HUEY.immediate = True  # in-process fake of the consumer; the e2e test uses a real worker
    try:
        user = await sync_to_async(make_user)("b2", "builder")
        comm = communicator(user)
        assert (await comm.connect())[0]
        from rest_framework.test import APIClient

        def request() -> int:
            client = APIClient()
            client.force_login(user)
            resp = client.post("/api/system/selftest/")
            assert resp.status_code == 202
            return resp.json()["request_id"]

        request_id = await sync_to_async(request)()
        kinds = {}
        for _ in range(2):
            msg = await comm.receive_json_from(timeout=5)
            kinds[msg["kind"]] = msg["payload"]
        assert kinds["selftest.completed"]["request_id"] == request_id
        assert kinds["selftest.requested"]["by"] == "b2"
        await comm.disconnect()
    finally:
        HUEY.immediate = False


def test_selftest_needs_a_builder(client_for, annotator):  # noqa: ANN001
    resp = client_for(annotator).post("/api/system/selftest/")
    assert resp.status_code == 403 and resp.json()["code"] == "permission_denied"


def test_the_channel_layer_hears_of_an_event_only_when_its_transaction_commits(monkeypatch):  # noqa: ANN001
    from django.db import transaction

    from studio import events

    sent: list[str] = []
    monkeypatch.setattr(events, "uses_channel_layer", lambda: True)
    monkeypatch.setattr(events, "_send", lambda event: sent.append(event.kind))
    with pytest.raises(RuntimeError), transaction.atomic():
        publish("rolled.back")
        raise RuntimeError("the writer failed")
    with transaction.atomic():
        publish("kept")
        assert sent == []  # not before the commit
    assert sent == ["kept"]
    publish("outside")  # no transaction: at once
    assert sent == ["kept", "outside"]
