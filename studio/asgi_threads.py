"""Django's ASGI handler with each request's synchronous code on one of a fixed set of long-lived
threads.

Django's own handler runs every request's sync code (middleware, views, ORM) in a *new* thread,
so that requests do not queue behind one another; each such thread opens its own database
connection and drops it at the end of the request. Under load that costs a thread start and a
connection (SQLite: open the file and run the PRAGMAs; PostgreSQL: a backend process, or a trip to
the pool) per request. Here a request borrows one of ``threads`` single-thread executors for
its whole life (asgiref's ``ThreadSensitiveContext(executor=…)``), so thread-bound state — above
all the database connection, kept by ``CONN_MAX_AGE`` — lives on between requests. At most
``threads`` requests of one process run their sync code at once; more wait for a free thread.
:meth:`PooledThreadsASGIHandler.run_sync` lends the same threads to ASGI code in front of Django
(the labeling hot path, :mod:`labeling.lean`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler

T = TypeVar("T")


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self, threads: int) -> None:
        super().__init__()
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.threads = threads
        self._idle: asyncio.Queue | None = None  # made on first use, in the server's event loop

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = await self._borrow()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self._idle.put_nowait(executor)

    async def _borrow(self) -> ThreadPoolExecutor:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for i in range(self.threads):
                self._idle.put_nowait(ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"studio-request-{i}"))
        return await self._idle.get()

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of the request threads, as Django runs a view there (same thread-bound
        database connection; one call, one thread hop)."""
        executor = await self._borrow()
        try:
            async with ThreadSensitiveContext(executor=executor):
                return await sync_to_async(fn, thread_sensitive=True)(*args)
        finally:
            self._idle.put_nowait(executor)
