"""Websocket routes of the training app."""

from django.urls import path

from training.consumers import ChatConsumer, RunEventsConsumer
from training.datastudio.routing import websocket_urlpatterns as datastudio_ws

websocket_urlpatterns = [
    *datastudio_ws,
    path("ws/runs/<int:run_id>/", RunEventsConsumer.as_asgi()),
    path("ws/chat/", ChatConsumer.as_asgi()),
]
