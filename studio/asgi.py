"""ASGI entry point: HTTP through Django, websockets through Channels with session
authentication and an allowed-origins check. The annotator's two hot requests are answered in
front of Django by :mod:`labeling.lean` (which hands anything it does not fully understand on to
Django)."""

import io
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")

import django  # noqa: E402

django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from studio.asgi_threads import PooledThreadsASGIHandler  # noqa: E402

# each request's sync code on one of STUDIO_WEB_THREADS long-lived threads (connections persist)
django_asgi_app = PooledThreadsASGIHandler(settings.STUDIO_WEB_THREADS)

from django.core.handlers.asgi import ASGIRequest  # noqa: E402

from labeling import lean  # noqa: E402


class HotPaths:
    """HTTP: answer the requests :func:`labeling.lean.match` names with :func:`labeling.lean.serve`
    on Django's request threads; everything else, and whatever it declines, goes to Django."""

    def __init__(self, django_app: PooledThreadsASGIHandler) -> None:
        self.app = django_app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = lean.match(scope["method"], scope["path"])
        if route is None:
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:  # not a judgement: Django's limits apply
                break
        body = b"".join(chunks)
        response = None
        if not more and size <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            try:
                request = ASGIRequest(scope, io.BytesIO(body))
            except (UnicodeDecodeError, ValueError):  # Django answers a malformed request itself
                request = None
            if request is not None:
                response = await self.app.run_sync(lean.serve, request, route)
        if response is not None:
            await self.app.send_response(response, send)
            return
        replayed = False

        async def replay() -> dict[str, Any]:  # the body read so far, then the rest of the stream
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": more}

        await self.app(scope, replay, send)


from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from studio.websocket_urls import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": HotPaths(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
