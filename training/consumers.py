"""Websocket consumers of the training app: a run's live events, and the chat playground."""

from __future__ import annotations

import asyncio
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from studio.consumers import CLOSE_UNAUTHENTICATED, EventFollowerConsumer
from studio.errors import StudioAPIError
from studio.roles import BUILDER
from training.events import run_group
from training.models import Run
from training.serving import MAX_NEW_TOKENS, ServingClient


class RunEventsConsumer(EventFollowerConsumer):
    """``/ws/runs/<id>/``: the run's stored events after ``?after=<id>``, then live ones (metrics,
    checkpoints, logs, status). Refused (4403) for users who may not see runs or unknown runs."""

    required_role = BUILDER

    def get_group(self) -> str | None:
        run_id = self.scope["url_route"]["kwargs"]["run_id"]
        return run_group(run_id) if Run.objects.filter(pk=run_id).exists() else None


def _sampling(content: dict[str, Any]) -> dict[str, Any]:
    s = content.get("sampling") or {}
    out: dict[str, Any] = {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.9, "top_k": None,
                           "repetition_penalty": 1.1, "seed": None}
    for key, kind, lo, hi in (("max_new_tokens", int, 1, MAX_NEW_TOKENS), ("temperature", float, 0.0, 5.0),
                              ("top_p", float, 0.01, 1.0), ("top_k", int, 1, 100000),
                              ("repetition_penalty", float, 0.5, 3.0), ("seed", int, 0, 2**31 - 1)):
        if key in s and s[key] not in (None, ""):
            try:
                value = kind(s[key])
            except (TypeError, ValueError):
                raise ValueError(f"sampling.{key} must be a number") from None
            if not lo <= value <= hi:
                raise ValueError(f"sampling.{key} must be between {lo} and {hi}")
            out[key] = value
    return out


def _messages(content: dict[str, Any]) -> list[dict[str, str]]:
    msgs = content.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("messages must be a non-empty list of {role, content}")
    out = []
    for m in msgs[-50:]:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(
                m.get("content"), str):
            raise ValueError("each message needs role (system, user or assistant) and content (text)")
        out.append({"role": m["role"], "content": m["content"][:20000]})
    return out


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/chat/``: any signed-in user chats with a model; tokens stream back as they are generated.

    Client → server: ``{"type": "generate", "id": <client id>, "model": "model:1", "messages": [...],
    "sampling": {...}}`` and ``{"type": "stop", "id": <client id>}``. Server → client:
    ``{"type": "loading" | "token" | "done" | "error", "id": <client id>, ...}``. Generation runs in the
    serving worker process (:mod:`training.serving`), never in this event loop.
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        if not getattr(user, "is_authenticated", False):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.requests: dict[str, str] = {}  # client id -> serving id
        self.forwarders: set[asyncio.Task] = set()
        await self.accept()

    async def disconnect(self, code: int) -> None:
        client = ServingClient.instance()
        for rid in list(getattr(self, "requests", {}).values()):
            client.stop(rid)
        for task in getattr(self, "forwarders", set()):
            task.cancel()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "ping":
            await self.send_json({"type": "pong"})
        elif kind == "generate":
            await self.generate(content)
        elif kind == "stop":
            rid = self.requests.get(str(content.get("id")))
            if rid:
                ServingClient.instance().stop(rid)

    async def generate(self, content: dict[str, Any]) -> None:
        cid = str(content.get("id", ""))
        try:
            messages = _messages(content)
            sampling = _sampling(content)
            from training.actions import resolve_model_ref

            source, name, ref = await database_sync_to_async(resolve_model_ref)(str(content.get("model", "")))
        except (ValueError, StudioAPIError) as e:
            detail = str(e.detail) if isinstance(e, StudioAPIError) else str(e)
            await self.send_json({"type": "error", "id": cid, "detail": detail})
            return
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        rid = ServingClient.instance().generate(
            {"source": source, "messages": messages, **sampling},
            lambda msg: loop.call_soon_threadsafe(replies.put_nowait, msg))
        self.requests[cid] = rid
        await self.send_json({"type": "started", "id": cid, "model": ref, "model_name": name})
        task = asyncio.create_task(self._forward(cid, replies))
        self.forwarders.add(task)
        task.add_done_callback(self.forwarders.discard)

    async def _forward(self, cid: str, replies: asyncio.Queue) -> None:
        while True:
            msg = await replies.get()
            out = {k: v for k, v in msg.items() if k != "id"}
            await self.send_json({**out, "id": cid})
            if msg.get("type") in ("done", "error"):
                self.requests.pop(cid, None)
                return
