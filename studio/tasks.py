"""Studio-wide Huey tasks. Tasks take ids and plain values, never model instances."""

from __future__ import annotations

import os
import socket

from huey.contrib.djhuey import db_task

from studio.events import publish


@db_task()
def selftest_task(request_id: int) -> dict:
    """Round trip through the queue: a worker picks this up and publishes ``selftest.completed``."""
    info = {"request_id": request_id, "worker_pid": os.getpid(), "worker_host": socket.gethostname()}
    publish("selftest.completed", info)
    return info
