"""Websocket routes of the data studio."""

from django.urls import path

from training.datastudio.consumers import CurationEventsConsumer

websocket_urlpatterns = [
    path("ws/curation/<int:run_id>/", CurationEventsConsumer.as_asgi()),
]
