"""Publishing studio events to browsers.

:func:`publish` stores the event (history, and the transport when there is no Redis) and, when
the channel layer crosses processes (channels_redis), sends it to the group as well once the
transaction that stored it commits. Websocket
consumers either join the group or follow the table — see :mod:`studio.consumers`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from studio.models import Event

log = logging.getLogger(__name__)


def group_channel_name(group: str) -> str:
    """Channel-layer group name for an event group (ASCII letters, digits, '.', '-', '_')."""
    return "events." + "".join(c if c.isalnum() or c in ".-_" else "_" for c in group)[:90]


def uses_channel_layer() -> bool:
    return settings.STUDIO_EVENTS_TRANSPORT == "channel_layer"


def publish(kind: str, payload: dict[str, Any] | None = None, *, group: str = "studio",
            actor: Any = None) -> Event:
    """Store an event and deliver it to the group's followers. Call it from actions and tasks."""
    event = Event.objects.create(group=group, kind=kind, payload=payload or {},
                                 actor=actor if getattr(actor, "pk", None) else None)
    deliver(event)
    return event


def deliver(event: Event) -> None:
    """Send a stored event to its group over the channel layer, when one crosses processes (the
    followers of the table need nothing more), once the transaction that stored it commits
    (right away outside one): a rolled-back event is never announced. For code that stores the row
    itself (the labeling hot path writes it with the judgement, in one statement)."""
    if uses_channel_layer():
        transaction.on_commit(functools.partial(_send, event))


def _send(event: Event) -> None:
    try:
        async_to_sync(get_channel_layer().group_send)(
            group_channel_name(event.group), {"type": "studio.event", "event": event.as_message()})
    except Exception:  # the event is stored; followers catch up from the table on reconnect
        log.exception("could not send event %s to the channel layer", event.id)
