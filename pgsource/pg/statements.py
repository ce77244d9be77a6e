"""Running one statement and taking its rows: the cursor calls everything outside ``pg/`` goes through.

The callers build their SQL (``build_*`` in ``pg/select.py`` and its siblings, composed with
``psycopg2.sql``) and decide what a failure means; these functions only open the cursor,
execute with bound parameters and fetch, so no module above ``pg/`` holds a cursor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg2 import sql

Statement = str | bytes | sql.Composable
Params = Sequence[Any] | Mapping[str, Any] | None


def render(statement: Statement, conn) -> str | bytes:
    """``statement`` as the text psycopg2 formats with bound parameters: a ``%`` inside a quoted
    name or literal (a table ``"growth 50%"``) doubled, or psycopg2 would take it for a
    placeholder. SQL text and placeholders are kept as they are."""
    if isinstance(statement, sql.Composed):
        return "".join(render(part, conn) for part in statement.seq)
    if isinstance(statement, (sql.Identifier, sql.Literal)):
        return statement.as_string(conn).replace("%", "%%")
    if isinstance(statement, sql.Composable):
        return statement.as_string(conn)
    return statement


def _bound(conn, statement: Statement, params: Params) -> Statement:
    return render(statement, conn) if params is not None and isinstance(statement, sql.Composable) else statement


def run(conn, statement: Statement, params: Params = None) -> None:
    """Execute, discarding any result (DDL, SET, DML whose count nobody needs)."""
    with conn.cursor() as cur:
        cur.execute(_bound(conn, statement, params), params)


def fetch_all(conn, statement: Statement, params: Params = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(_bound(conn, statement, params), params)
        return cur.fetchall()


def fetch_one(conn, statement: Statement, params: Params = None) -> tuple | None:
    with conn.cursor() as cur:
        cur.execute(_bound(conn, statement, params), params)
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
            cur.execute(_bound(conn, statement, params), params)
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


def copy_to(conn, statement: Statement, params: Params, sink) -> None:
    """Run ``COPY (...) TO STDOUT`` with bound values into ``sink``, a file-like whose ``write`` gets
    the output as bytes (psycopg2 calls it once per row). A COPY takes no server-side parameters:
    the values are bound on this side, as psycopg2 binds every statement's."""
    with conn.cursor() as cur:
        text = cur.mogrify(render(statement, conn), params) if params is not None else render(statement, conn)
        cur.copy_expert(text, sink)
