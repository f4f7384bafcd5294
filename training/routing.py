"""Websocket routes of the training app."""

from django.urls import path

from training.consumers import ChatConsumer, RunEventsConsumer

websocket_urlpatterns = [
    path("ws/runs/<int:run_id>/", RunEventsConsumer.as_asgi()),
    path("ws/chat/", ChatConsumer.as_asgi()),
]
