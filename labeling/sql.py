"""Small helpers for the hand-written SQL of the annotator's hot path (:mod:`labeling.actions`).

The two requests an annotator sends all day — submit a judgement, get the next item — run a
handful of statements each. Through the ORM most of their cost was *building* those statements
(and model instances); these helpers run plain SQL on Django's connection (same transactions,
same connection per thread) and convert values the way the model fields would: datetimes as aware
UTC, JSON columns (text on SQLite, jsonb on PostgreSQL) as Python objects, SQLite's 0/1 as bools.
"""

from __future__ import annotations

import contextlib
import functools
import json
from datetime import datetime, timezone as dt_timezone
from typing import Any, Iterator, Sequence

from django.db import connection
from django.db.models import Model
from django.utils.dateparse import parse_datetime


@functools.cache
def table(model: type[Model]) -> str:
    """The model's table name, quoted for the database (the same database for the whole process)."""
    return connection.ops.quote_name(model._meta.db_table)


@contextlib.contextmanager
def _cursor() -> Iterator[tuple[Any, dict[str, Any]]]:
    """A cursor on the thread's connection, and the keyword arguments for its ``execute``. On
    PostgreSQL (when Django binds parameters on the client, its default) a psycopg cursor that binds
    them on the server with ``prepare=True``: the hot path's few statements are prepared once per
    connection and PostgreSQL skips parsing and planning them. Only these statements are bound this
    way; the ORM keeps Django's client-side binding, which some ORM queries need (e.g. the same JSON
    key in SELECT and GROUP BY). Database errors are Django's (``IntegrityError`` …) either way."""
    if connection.vendor != "postgresql" or connection.settings_dict["OPTIONS"].get("server_side_binding"):
        with connection.cursor() as cursor:
            yield cursor, {}
        return
    import psycopg

    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:  # Django turns preparing off; only explicit prepare=True prepares now
        raw.prepare_threshold = 1 << 30
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        yield cursor, {"prepare": True}


def rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with _cursor() as (cursor, options):
        cursor.execute(sql, params, **options)
        return cursor.fetchall()


def one(sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
    with _cursor() as (cursor, options):
        cursor.execute(sql, params, **options)
        return cursor.fetchone()


def execute(sql: str, params: Sequence[Any] = ()) -> int:
    """Run a statement; the number of rows it changed."""
    with _cursor() as (cursor, options):
        cursor.execute(sql, params, **options)
        return cursor.rowcount


def insert(model: type[Model], values: dict[str, Any], *, on_conflict_nothing: bool = False) -> int | None:
    """INSERT one row (column -> already prepared value) and return its id (``RETURNING``:
    PostgreSQL, SQLite ≥ 3.35). ``on_conflict_nothing``: a row that would break a unique constraint
    is not written and None comes back (no error, so the transaction goes on: PostgreSQL and
    SQLite ≥ 3.24)."""
    row = one(f"{insert_statement(model, values)}{' ON CONFLICT DO NOTHING' if on_conflict_nothing else ''}"
              " RETURNING id", list(values.values()))
    if row is None:
        assert on_conflict_nothing
        return None
    return row[0]


def insert_statement(model: type[Model], columns: Sequence[str]) -> str:
    """``INSERT INTO table (columns) VALUES (%s, …)`` for the model's table."""
    cols = ", ".join(connection.ops.quote_name(c) for c in columns)
    return f"INSERT INTO {table(model)} ({cols}) VALUES ({', '.join(['%s'] * len(columns))})"


def db_datetime(value: datetime) -> Any:
    """A datetime as the backend stores it (SQLite: naive UTC text; PostgreSQL: as is)."""
    return connection.ops.adapt_datetimefield_value(value)


def db_json(model: type[Model], field: str, value: Any) -> Any:
    """A value for a JSON column, prepared by the model field itself (text or a jsonb adapter)."""
    return model._meta.get_field(field).get_db_prep_save(value, connection)


def py_datetime(value: Any) -> datetime | None:
    """A datetime column's value as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt_timezone.utc)
    return value


def py_json(value: Any) -> Any:
    """A JSON column's value as Python data (SQLite returns the text, psycopg the data)."""
    if isinstance(value, (str, bytes, bytearray)):
        return json.loads(value)
    return value


def api_datetime(value: datetime | None) -> str | None:
    """A datetime as the API writes it (DRF's format: ISO 8601, UTC as ``Z``)."""
    if value is None:
        return None
    text = value.astimezone(dt_timezone.utc).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
