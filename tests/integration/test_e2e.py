"""End to end with real processes: the studio as ``make run`` starts it (web server, websockets,
Huey consumer), a websocket client, and an event triggered through a Huey task."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.live import websocket_outcome

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def _follow_until(url: str, headers: dict[str, str], trigger, kind: str, timeout: float = 60.0):  # noqa: ANN001, ANN202
    async with websockets.connect(url, additional_headers=headers, open_timeout=20) as ws:
        result = await asyncio.to_thread(trigger)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"no {kind} event within {timeout} s"
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=remaining))
            if message.get("kind") == kind:
                return result, message


def test_event_from_a_huey_worker_reaches_a_websocket_client(studio_server):  # noqa: ANN001
    session = studio_server.session("builder", "builder-demo-pass")
    ws_url = studio_server.url.replace("http", "ws") + "/ws/events/"
    headers = {"Cookie": session.cookie_header(), "Origin": studio_server.url}

    def trigger() -> dict:
        status, body = session.request("POST", "/api/system/selftest/")
        assert status == 202, body
        return body

    body, message = asyncio.run(_follow_until(ws_url, headers, trigger, "selftest.completed"))
    assert message["payload"]["request_id"] == body["request_id"]
    # the event was produced by the separate Huey consumer process, not by the web server
    assert message["payload"]["worker_pid"] != studio_server.proc.pid


def test_websocket_refuses_anonymous_and_foreign_origins(studio_server):  # noqa: ANN001
    ws_url = studio_server.url.replace("http", "ws") + "/ws/events/"

    # a consumer that closes before accepting is refused at the handshake
    assert asyncio.run(websocket_outcome(ws_url, {"Origin": studio_server.url})) in ("rejected 403", "closed 4401")
    session = studio_server.session("annotator", "annotator-demo-pass")
    result = asyncio.run(websocket_outcome(ws_url, {"Origin": "http://evil.example", "Cookie": session.cookie_header()}))
    assert result.startswith("rejected 403")


def test_api_error_shape_over_http(studio_server):  # noqa: ANN001
    session = studio_server.session("annotator", "annotator-demo-pass")
    status, body = session.request("POST", "/api/system/selftest/")
    assert status == 403 and body["code"] == "permission_denied" and body["hint"]
    status, body = session.request("POST", "/api/tokens/", {"name": ""})
    assert status == 400 and body["code"] == "invalid" and "name" in body["fields"]
