"""Write transactions that queue instead of failing, across threads *and* processes.

SQLite allows one writer at a time. The studio opens SQLite transactions with ``BEGIN IMMEDIATE``
and a busy timeout, which is correct but polls: a waiting writer sleeps and retries, so under a
burst of writers from several web worker processes the waits grow long and a writer can starve
past the timeout ("database is locked"). :func:`write_transaction` makes hot writers queue
instead: first on a lock shared by the threads of this process, then on an exclusive ``flock``
of a lock file beside the database, shared by every process that opens it (web workers, the
queue consumer, management commands). The kernel wakes the next waiter as soon as the lock is
released; ``BEGIN IMMEDIATE`` then finds the database free.

On PostgreSQL it is plain ``transaction.atomic()``: rows are locked with ``SELECT … FOR UPDATE``.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from django.db import connections, transaction

_THREADS = threading.Lock()  # the threads of this process queue here first
_FILES: dict[str, int] = {}  # database path -> open lock file (one per process)


def lock_path(database: str) -> str | None:
    """The lock file for a SQLite database file, or None for an in-memory database."""
    name = str(database)
    if not name or name == ":memory:" or name.startswith("file:") or "mode=memory" in name:
        return None
    return name + ".writelock"


def _lock_file(path: str) -> int:
    fd = _FILES.get(path)
    if fd is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        _FILES[path] = fd
    return fd


@contextmanager
def write_transaction(using: str = "default", *, savepoint: bool = True) -> Iterator[None]:
    """``transaction.atomic(using, savepoint=savepoint)``; on SQLite the outermost one first takes
    the database's write lock (threads of this process, then other processes), so that writers
    queue in order."""
    conn = connections[using]
    path = lock_path(conn.settings_dict["NAME"]) if conn.vendor == "sqlite" else None
    if path is None or conn.in_atomic_block:
        with transaction.atomic(using=using, savepoint=savepoint):
            yield
        return
    with _THREADS:
        fd = _lock_file(path)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks without holding the GIL
        try:
            with transaction.atomic(using=using):
                yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
