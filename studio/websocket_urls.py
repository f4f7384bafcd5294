"""All websocket routes: each app contributes its own ``routing.websocket_urlpatterns``."""

from labeling.routing import websocket_urlpatterns as labeling_ws
from studio.routing import websocket_urlpatterns as studio_ws
from training.routing import websocket_urlpatterns as training_ws

websocket_urlpatterns = [*studio_ws, *training_ws, *labeling_ws]
