"""The labeling hot path's statements are prepared on PostgreSQL (labeling/sql.py binds them on the
server) while the ORM keeps Django's client-side binding; ``STUDIO_DB_SERVER_BINDING=1`` binds and
prepares every statement (``STUDIO_DB_PREPARE_THRESHOLD``), with and without the connection pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live import throwaway_postgres

pytestmark = [pytest.mark.services]

REPO = Path(__file__).resolve().parents[2]

# the hot path's own helper run more often than the threshold, then what the backend has prepared
PROBE = """
import json
from django.db import connection
from labeling import sql
for n in range(4):
    assert sql.one("SELECT %s + 1", [n]) == (n + 1,)
    with connection.cursor() as cursor:  # an ORM-style statement through Django's own cursor
        cursor.execute("SELECT %s + 2", [n])
with connection.cursor() as cursor:
    cursor.execute("SELECT statement FROM pg_prepared_statements")
    prepared = [r[0] for r in cursor.fetchall()]
print(json.dumps({"options": {k: v for k, v in connection.settings_dict["OPTIONS"].items() if k != "pool"},
                  "pool": "pool" in connection.settings_dict["OPTIONS"], "prepared": prepared}))
"""


@pytest.fixture(scope="module")
def database():  # noqa: ANN201
    with throwaway_postgres("bindtest") as url:
        yield url


def probe(database: str, tmp_path: Path, **env: str) -> dict:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("STUDIO_DB_")},
            "DATABASE_URL": database, "STUDIO_DATA_DIR": str(tmp_path), **env}
    proc = subprocess.run([sys.executable, str(REPO / "manage.py"), "shell", "-c", PROBE], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pool", ["0", "1"])
def test_every_statement_is_prepared_when_turned_on(database, tmp_path, pool):  # noqa: ANN001
    found = probe(database, tmp_path, STUDIO_DB_SERVER_BINDING="1", STUDIO_DB_POOL=pool,
                  STUDIO_DB_PREPARE_THRESHOLD="2")
    assert found["options"] == {"server_side_binding": True, "prepare_threshold": 2}
    assert found["pool"] is (pool == "1")
    assert any("$1 + 1" in s for s in found["prepared"]), found["prepared"]
    assert any("$1 + 2" in s for s in found["prepared"]), found["prepared"]


@pytest.mark.parametrize("pool", ["0", "1"])
def test_by_default_only_the_hot_path_is_prepared(database, tmp_path, pool):  # noqa: ANN001
    found = probe(database, tmp_path, STUDIO_DB_POOL=pool)
    assert "server_side_binding" not in found["options"]
    assert any("$1 + 1" in s for s in found["prepared"]), found["prepared"]
    assert not any("+ 2" in s for s in found["prepared"]), found["prepared"]
