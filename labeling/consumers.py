"""Websocket consumers: a project's live dashboard (builders) and the report queue (moderators)."""

from __future__ import annotations

from labeling.models import Project
from studio.consumers import EventFollowerConsumer


class ProjectEventsConsumer(EventFollowerConsumer):
    """Events of one project (judgements, skips, imports, snapshots) for its dashboard."""

    required_role = "builder"

    def get_group(self) -> str | None:
        pk = self.scope["url_route"]["kwargs"]["pk"]
        return f"labeling.project.{pk}" if Project.objects.filter(pk=pk).exists() else None


class ReportEventsConsumer(EventFollowerConsumer):
    """New and moderated reports, for the moderators' queue."""

    required_role = "moderator"

    def get_group(self) -> str | None:
        return "labeling.reports"
