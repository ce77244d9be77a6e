"""Running one statement and taking its rows: the cursor calls everything outside ``pg/`` goes through.

The callers build their SQL (``build_*`` in ``pg/query.py`` and its siblings, composed with
``psycopg2.sql``) and decide what a failure means; these functions only open the cursor,
execute with bound parameters and fetch, so no module above ``pg/`` holds a cursor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg2 import sql

Statement = str | bytes | sql.Composable
Params = Sequence[Any] | Mapping[str, Any] | None


def run(conn, statement: Statement, params: Params = None) -> None:
    """Execute, discarding any result (DDL, SET, DML whose count nobody needs)."""
    with conn.cursor() as cur:
        cur.execute(statement, params)


def fetch_all(conn, statement: Statement, params: Params = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchall()


def fetch_one(conn, statement: Statement, params: Params = None) -> tuple | None:
    with conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.fetchone()


def fetch_value(conn, statement: Statement, params: Params = None) -> Any:
    """The first column of the first row (None when there is no row)."""
    row = fetch_one(conn, statement, params)
    return None if row is None else row[0]


def result_columns(conn, statement: Statement, params: Params = None) -> list[str]:
    """The column names ``statement`` would return, learnt in a read-only transaction rolled back
    (``check`` asks a user's query this without reading or changing anything)."""
    with conn.cursor() as cur:
        cur.execute("BEGIN READ ONLY")
        try:
            cur.execute(statement, params)
            return [column.name for column in cur.description]
        finally:
            cur.execute("ROLLBACK")


def backend_pid(conn) -> int:
    """The server process behind ``conn`` (the supervisor watches, and may end, our backends)."""
    return conn.get_backend_pid()


def commit(conn) -> None:
    conn.commit()


def rollback(conn) -> None:
    conn.rollback()


def set_autocommit(conn, on: bool) -> None:
    conn.autocommit = on
