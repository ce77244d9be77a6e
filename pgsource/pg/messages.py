"""Logical decoding messages: written into the WAL for every slot to read (backfill requests, watermarks)."""

from __future__ import annotations

from pgsource.lsn import parse_lsn


def emit_logical_message(conn, transactional: bool, prefix: str, content: str) -> int:
    """``pg_logical_emit_message``; returns the message's LSN. A transactional one is decoded with
    its transaction (at its commit); a non-transactional one at once, where it was written."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_logical_emit_message(%s, %s, %s)::text", (transactional, prefix, content))
        return parse_lsn(cur.fetchone()[0])
