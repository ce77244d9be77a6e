"""Logical decoding messages: written into the WAL for every slot to read (backfill requests, watermarks)."""

from __future__ import annotations

from pgsource.lsn import parse_lsn


def emit_logical_message(conn, transactional: bool, prefix: str, content: str) -> int:
    """``pg_logical_emit_message``; returns the message's LSN. A transactional one is decoded with
    its transaction (at its commit); a non-transactional one at once, where it was written."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_logical_emit_message(%s, %s, %s)::text", (transactional, prefix, content))
        return parse_lsn(cur.fetchone()[0])


def emit_flushed_message(conn, prefix: str, content: str) -> int:
    """A non-transactional message the walsenders send now. Alone, it waits for the WAL writer
    (``wal_writer_delay``, 200 ms by default: a backfill read 5 chunks a second); in a transaction
    that has an id it is flushed by the commit (``synchronous_commit``), as PostgreSQL 17's ``flush``
    argument does. It still stands where it was written; pgoutput sends nothing of the empty
    transaction. ``conn`` is in autocommit: the statement is its own transaction."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_logical_emit_message(false, %s, %s)::text, pg_current_xact_id()", (prefix, content))
        return parse_lsn(cur.fetchone()[0])
