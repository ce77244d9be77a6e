"""The benchmark's own PostgreSQL sessions: one autocommit connection a call, statements composed with ``psycopg2.sql``."""

from __future__ import annotations

import contextlib

import psycopg2

CREATE_SLOT = "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')"
DROP_SLOT = "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s"


@contextlib.contextmanager
def autocommit_cursor(dsn: str):
    """A cursor on a fresh autocommit connection, closed afterwards."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def execute(dsn: str, *statements) -> None:
    with autocommit_cursor(dsn) as cur:
        for statement in statements:
            cur.execute(statement)


def scalar(dsn: str, statement, params=None):
    with autocommit_cursor(dsn) as cur:
        cur.execute(statement, params)
        return cur.fetchone()[0]


def rows_of(dsn: str, statement) -> list[tuple]:
    with autocommit_cursor(dsn) as cur:
        cur.execute(statement)
        return cur.fetchall()


def create_slots(dsn: str, names: list[str]) -> None:
    with autocommit_cursor(dsn) as cur:
        for name in names:
            cur.execute(CREATE_SLOT, (name,))


def drop_slots(dsn: str, names: list[str]) -> None:
    with autocommit_cursor(dsn) as cur:
        for name in names:
            cur.execute(DROP_SLOT, (name,))
