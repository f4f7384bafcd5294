"""Websocket consumer of the data studio: a curation run's live events."""

from __future__ import annotations

from studio.consumers import EventFollowerConsumer
from studio.roles import BUILDER
from training.models.datastudio import CurationRun


class CurationEventsConsumer(EventFollowerConsumer):
    """``/ws/curation/<id>/``: the run's stored events after ``?after=<id>``, then live ones
    (``curation.progress`` with docs/s, ETA and per-step counts; ``curation.status``). Refused
    (4403) for users who are not builders and for unknown runs."""

    required_role = BUILDER

    def get_group(self) -> str | None:
        run_id = self.scope["url_route"]["kwargs"]["run_id"]
        return f"curation.{run_id}" if CurationRun.objects.filter(pk=run_id).exists() else None
