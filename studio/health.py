"""Health probes of the database, the task queue and the channel layer (used by /healthz and
by ``runstudio``'s preflight). Addresses are reported with passwords masked."""

from __future__ import annotations

import time
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection

from studio.env import mask_url


def _timed(fn) -> dict[str, Any]:  # noqa: ANN001
    start = time.perf_counter()
    try:
        info = fn() or {}
        ok = True
        error = None
    except Exception as e:  # a probe reports, it never raises
        info, ok, error = {}, False, f"{type(e).__name__}: {e}"
    out = {"ok": ok, "latency_ms": round((time.perf_counter() - start) * 1000, 1), **info}
    if error:
        out["error"] = error
    return out


def database_address() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return mask_url(settings.DATABASE_URL)


def check_database() -> dict[str, Any]:
    def probe() -> dict[str, Any]:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        return {"vendor": connection.vendor}

    return {"address": database_address(), **_timed(probe)}


def check_queue() -> dict[str, Any]:
    from huey.contrib.djhuey import HUEY

    def probe() -> dict[str, Any]:
        return {"backend": type(HUEY).__name__, "pending": HUEY.pending_count(), "immediate": HUEY.immediate}

    address = mask_url(settings.REDIS_URL) if settings.REDIS_URL else f"sqlite:///{settings.HUEY['filename']}"
    return {"address": address, **_timed(probe)}


def check_channel_layer() -> dict[str, Any]:
    from channels.layers import get_channel_layer

    def probe() -> dict[str, Any]:
        layer = get_channel_layer()

        async def roundtrip() -> None:
            channel = await layer.new_channel()
            marker = uuid.uuid4().hex
            await layer.send(channel, {"type": "health.ping", "marker": marker})
            message = await layer.receive(channel)
            if message.get("marker") != marker:
                raise RuntimeError("channel layer returned a different message")

        async_to_sync(roundtrip)()
        return {"backend": type(layer).__name__, "transport": settings.STUDIO_EVENTS_TRANSPORT}

    address = mask_url(settings.REDIS_URL) if settings.REDIS_URL else "in-process (events follow the database)"
    return {"address": address, **_timed(probe)}


def health_report() -> dict[str, Any]:
    report = {"database": check_database(), "queue": check_queue(), "channel_layer": check_channel_layer()}
    report["status"] = "ok" if all(part["ok"] for part in report.values() if isinstance(part, dict)) else "degraded"
    return report
