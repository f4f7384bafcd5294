"""Websocket URL routes of the studio app."""

from django.urls import path

from studio.consumers import StudioEventsConsumer

websocket_urlpatterns = [
    path("ws/events/", StudioEventsConsumer.as_asgi()),
]
