"""ASGI entry point: HTTP through Django, websockets through Channels with session
authentication and an allowed-origins check."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")

import django  # noqa: E402

django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from studio.asgi_threads import PooledThreadsASGIHandler  # noqa: E402

# each request's sync code on one of STUDIO_WEB_THREADS long-lived threads (connections persist)
django_asgi_app = PooledThreadsASGIHandler(settings.STUDIO_WEB_THREADS)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from studio.websocket_urls import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
