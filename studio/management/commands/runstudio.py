"""Start the whole studio in the foreground: the ASGI web server (HTTP + websockets) and the Huey
consumer, supervised together and stopped cleanly by Ctrl-C.

The web server is Uvicorn with ``STUDIO_WEB_WORKERS`` worker processes sharing one listening
socket (the kernel spreads connections over them). Nothing is kept per process that others need:
live events cross processes through the database (or Redis with ``REDIS_URL``), SQLite writers
queue on a lock file beside the database (:mod:`studio.dbwrite`). ``STUDIO_WEB_SERVER=daphne``
runs one Daphne process instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from studio.health import check_channel_layer, check_database, check_queue

MANAGE = Path(settings.BASE_DIR) / "manage.py"


def preflight() -> list[str]:
    """Problems that would stop the studio, each with the address involved (passwords masked)."""
    problems = []
    db = check_database()
    if not db["ok"]:
        problems.append(f"database at {db['address']} is unreachable: {db['error']}")
    else:
        plan = MigrationExecutor(connection).migration_plan(MigrationExecutor(connection).loader.graph.leaf_nodes())
        if plan:
            problems.append(f"database at {db['address']} has {len(plan)} unapplied migrations: "
                            "run 'python manage.py migrate'")
    queue = check_queue()
    if not queue["ok"]:
        problems.append(f"task queue at {queue['address']} is unreachable: {queue['error']}")
    layer = check_channel_layer()
    if not layer["ok"]:
        problems.append(f"channel layer at {layer['address']} is unreachable: {layer['error']}")
    return problems


def web_command(host: str, port: int, workers: int) -> list[str]:
    """The web server's command line: Uvicorn with ``workers`` processes on one socket (HTTP parsed
    by httptools, uvloop event loop, websockets through the ``websockets`` library), or Daphne."""
    if settings.STUDIO_WEB_SERVER == "daphne":
        return [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "--proxy-headers",
                "studio.asgi:application"]
    cmd = [sys.executable, "-m", "uvicorn", "studio.asgi:application", "--host", host, "--port", str(port),
           "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--ws", "websockets",
           "--lifespan", "off", "--proxy-headers", "--timeout-graceful-shutdown", "10",
           "--log-level", "warning"]
    if settings.STUDIO_ACCESS_LOG:
        cmd.append("--access-log")
    else:
        cmd.append("--no-access-log")
    return cmd


class Command(BaseCommand):
    help = "Run the studio: web server with websockets and the task-queue consumer, in one command."

    def add_arguments(self, parser):  # noqa: ANN001, ANN201
        parser.add_argument("--host", default=os.environ.get("STUDIO_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_PORT", "8000")))
        parser.add_argument("--no-worker", action="store_true",
                            help="serve only; run 'python manage.py run_huey' on worker machines")
        parser.add_argument("--workers", type=int, default=settings.HUEY_WORKERS,
                            help="task-queue worker threads (default: HUEY_WORKERS)")
        parser.add_argument("--web-workers", type=int, default=settings.STUDIO_WEB_WORKERS,
                            help="web server processes behind the one port (default: STUDIO_WEB_WORKERS)")

    def handle(self, *args, **opts):  # noqa: ANN002, ANN003, ANN201
        problems = preflight()
        if problems:
            raise CommandError("The studio cannot start:\n  - " + "\n  - ".join(problems))
        if opts["web_workers"] < 1:
            raise CommandError("--web-workers must be at least 1")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        children: dict[str, subprocess.Popen] = {}
        if not opts["no_worker"]:
            children["worker"] = subprocess.Popen(
                [sys.executable, str(MANAGE), "run_huey", "--workers", str(opts["workers"]), "--flush-locks"],
                env=env, start_new_session=True)
        children["web"] = subprocess.Popen(web_command(opts["host"], opts["port"], opts["web_workers"]),
                                           env=env, start_new_session=True)
        web = (f"{opts['web_workers']} web worker{'s' if opts['web_workers'] > 1 else ''}"
               if settings.STUDIO_WEB_SERVER == "uvicorn" else "daphne")
        self.stdout.write(self.style.SUCCESS(
            f"LLM Studio on http://{opts['host']}:{opts['port']}/ ({web}, "
            f"database {check_database()['address']}, queue {'off' if opts['no_worker'] else 'on'}); Ctrl-C stops it"))

        stopping = False

        def stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        try:
            while not stopping:
                for name, proc in children.items():
                    if proc.poll() is not None:
                        self.stderr.write(f"the {name} process exited with code {proc.returncode}; stopping the studio")
                        exit_code = proc.returncode or 1
                        stopping = True
                        break
                time.sleep(0.2)
        finally:
            for proc in children.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 15
            for proc in children.values():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.stdout.write("LLM Studio stopped.")
        if exit_code:
            sys.exit(exit_code)
