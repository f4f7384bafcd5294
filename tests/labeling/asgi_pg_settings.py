"""Studio settings for the PostgreSQL live test and benchmark: no persistent connections.

``studio/env.py`` opens PostgreSQL connections with ``conn_max_age=60``. Under ASGI, Django runs
each request's sync code in a new thread, so every request leaves its own idle connection open
and 50 concurrent annotators exhaust PostgreSQL's ``max_connections`` ("sorry, too many clients
already"). Django's documentation says to disable persistent connections under ASGI (or use a
pool). This module does that until the shared settings do.
"""

from studio.settings import *  # noqa: F401,F403
from studio.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 0
