"""SQLite writes from several processes at once queue on the database's write lock
(:mod:`studio.dbwrite`) instead of failing with "database is locked" or losing updates."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# One writer process: read-modify-write a counter N times, with a pause inside the transaction.
# SQLite's busy timeout is 0, so a writer that finds the database locked fails at once: only the
# write lock can make every transaction succeed.
WRITER = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import django
from django.conf import settings
settings.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[2],
                                          "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 0}}})
django.setup()
from django.db import connection, transaction, OperationalError
from studio.dbwrite import write_transaction
use_lock, n, me, procs = sys.argv[3] == "lock", int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
ready = sys.argv[2] + ".ready"
with open(ready, "a") as f:
    f.write(me + "\n")
while len(open(ready).read().split()) < procs:  # start together
    time.sleep(0.001)
done, errors = 0, []
for _ in range(n):
    try:
        with (write_transaction() if use_lock else transaction.atomic()):
            with connection.cursor() as c:
                c.execute("SELECT n FROM counter")
                value = c.fetchone()[0]
                time.sleep(0.002)
                c.execute("UPDATE counter SET n = %s", [value + 1])
        done += 1
    except OperationalError as e:
        errors.append(str(e))
print(json.dumps({"done": done, "errors": errors[:3], "n_errors": len(errors)}))
'''


def run_writers(tmp_path: Path, use_lock: bool, procs: int = 4, n: int = 40) -> tuple[int, list[dict]]:
    db = tmp_path / f"counter-{use_lock}.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE counter (n INTEGER)")
        conn.execute("INSERT INTO counter VALUES (0)")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    children = [subprocess.Popen([sys.executable, str(script), str(REPO), str(db), "lock" if use_lock else "plain",
                                  str(n), str(i), str(procs)], stdout=subprocess.PIPE, text=True)
                for i in range(procs)]
    results = []
    for child in children:
        out, _ = child.communicate(timeout=600)
        assert child.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    with sqlite3.connect(db) as conn:
        final = conn.execute("SELECT n FROM counter").fetchone()[0]
    return final, results


def test_writers_in_several_processes_queue_and_lose_nothing(tmp_path):  # noqa: ANN001
    final, results = run_writers(tmp_path, use_lock=True)
    assert [r["n_errors"] for r in results] == [0, 0, 0, 0], results
    assert final == sum(r["done"] for r in results) == 4 * 40


def test_without_the_lock_the_same_writers_fail(tmp_path):  # noqa: ANN001
    """The control: with plain transactions and no busy wait, concurrent writers are refused."""
    final, results = run_writers(tmp_path, use_lock=False)
    errors = sum(r["n_errors"] for r in results)
    assert errors > 0 and "database is locked" in str(results)
    assert final == sum(r["done"] for r in results)  # refused transactions changed nothing


def test_lock_path_skips_in_memory_databases() -> None:
    from studio.dbwrite import lock_path

    assert lock_path(":memory:") is None and lock_path("file:memorydb_default?mode=memory&cache=shared") is None
    assert lock_path("/data/studio.sqlite3") == "/data/studio.sqlite3.writelock"

