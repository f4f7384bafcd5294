"""Websocket consumers: small, message type → method (Channels style)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from studio.events import group_channel_name, uses_channel_layer
from studio.models import Event
from studio.roles import has_access

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


class EventFollowerConsumer(AsyncJsonWebsocketConsumer):
    """Relays the events of one group to a signed-in browser.

    The stored history after ``?after=<id>`` is sent first, then live events: from the channel
    layer group when it crosses processes (Redis), otherwise by following the events table.
    Subclasses choose the group and the role (:meth:`get_group`, ``required_role``).
    """

    required_role = "signed_in"
    batch_size = 200

    def get_group(self) -> str | None:
        return "studio"

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not getattr(user, "is_authenticated", False):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        allowed = await database_sync_to_async(has_access)(user, self.required_role)
        group = await database_sync_to_async(self.get_group)() if allowed else None
        if not allowed or group is None:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.group = group
        self.last_id = await self._start_id()
        self.poller: asyncio.Task | None = None
        await self.accept()
        if uses_channel_layer():
            await self.channel_layer.group_add(group_channel_name(group), self.channel_name)
            await self._send_new()  # events stored between _start_id and joining the group
        else:
            self.poller = asyncio.create_task(self._follow())

    async def disconnect(self, code: int) -> None:
        if getattr(self, "poller", None):
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        if hasattr(self, "group") and uses_channel_layer():
            await self.channel_layer.group_discard(group_channel_name(self.group), self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    # channel-layer message type "studio.event"
    async def studio_event(self, message: dict[str, Any]) -> None:
        event = message["event"]
        if event["id"] > self.last_id:
            self.last_id = event["id"]
            await self.send_json({"type": "event", **event})

    async def _start_id(self) -> int:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        after = query.get("after", [None])[0]
        if after is not None and after.isdigit():
            return int(after)
        return await database_sync_to_async(self._latest_id)()

    def _latest_id(self) -> int:
        last = Event.objects.filter(group=self.group).order_by("-id").values_list("id", flat=True).first()
        return last or 0

    def _fetch_after(self, after: int) -> list[dict[str, Any]]:
        rows = Event.objects.filter(group=self.group, id__gt=after).order_by("id")[: self.batch_size]
        return [row.as_message() for row in rows]

    async def _send_new(self) -> int:
        events = await database_sync_to_async(self._fetch_after)(self.last_id)
        for event in events:
            self.last_id = event["id"]
            await self.send_json({"type": "event", **event})
        return len(events)

    async def _follow(self) -> None:
        while True:
            sent = await self._send_new()
            if sent < self.batch_size:
                await asyncio.sleep(settings.STUDIO_EVENTS_POLL_SECONDS)


class StudioEventsConsumer(EventFollowerConsumer):
    """Studio-wide events (a run changed state, a task finished) for every signed-in user."""

    required_role = "signed_in"
