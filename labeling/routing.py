"""Websocket routes of the labeling app."""

from django.urls import path

from labeling.consumers import ProjectEventsConsumer, ReportEventsConsumer

websocket_urlpatterns = [
    path("ws/labeling/projects/<int:pk>/", ProjectEventsConsumer.as_asgi()),
    path("ws/labeling/reports/", ReportEventsConsumer.as_asgi()),
]
