"""The labeling rules, the lean path and the quality statistics on PostgreSQL.

The studio's tests run on SQLite by default; the labeling hot path has PostgreSQL-only code (CTE
writes, the one-statement hand-out with ``FOR UPDATE SKIP LOCKED``, prepared statements, the first
lookup as the connection's health check). This runs those test modules once more in a pytest of
their own whose database is PostgreSQL (pytest-django makes its test database from
``DATABASE_URL``), and requires that none of them skipped: the PostgreSQL-only tests among them
must run here. In CI (``STUDIO_TEST_SERVICES=1``) a missing PostgreSQL fails the run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live import throwaway_postgres

pytestmark = [pytest.mark.services, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODULES = ["test_api.py", "test_lean.py", "test_suggestions.py", "test_quality.py", "test_export.py"]


def test_labeling_tests_pass_on_postgresql(tmp_path):  # noqa: ANN001
    with throwaway_postgres("labeling_pg") as url:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("STUDIO_DB_")},
               "DATABASE_URL": url, "STUDIO_DATA_DIR": str(tmp_path)}
        proc = subprocess.run([sys.executable, "-m", "pytest", *(f"tests/labeling/{m}" for m in MODULES), "-q",
                               "-p", "no:cacheprovider", "-rs"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary and "deselected" not in summary, tail
