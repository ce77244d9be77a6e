"""A read's snapshot against the WAL: transactions whose commit is recorded but not yet visible.

PostgreSQL records a commit (WAL, then the commit log) before the transaction leaves the list
of running ones; with synchronous replication it stays in that list until a standby answers.
Meanwhile logical decoding already streams its changes, and a new snapshot does not see them.
A backfill chunk read in that gap would hold a row older than a change already streamed
(``pgsource/cdc/backfill_chunks.py``): the chunk's read compares the snapshot's running
transactions with those the stream brought.
"""

from __future__ import annotations

from psycopg2 import sql

from pgsource.pg.statements import fetch_value, run

BEGIN_SNAPSHOT = sql.SQL("BEGIN ISOLATION LEVEL REPEATABLE READ")
# The transactions running for this snapshot (the first statement takes it), as 32-bit xids: pgoutput's.
RUNNING = sql.SQL("SELECT coalesce(array_agg((running.xid::text::numeric % 4294967296)::bigint), '{}')"
                  " FROM pg_snapshot_xip(pg_current_snapshot()) AS running(xid)")


def begin_snapshot(conn) -> set[int]:
    """Open a REPEATABLE READ transaction on ``conn`` (in autocommit) and take its snapshot; returns
    the transactions it sees running (``pg_xact_status`` says "in progress" for those in the gap too:
    the caller compares with the transactions the stream brought)."""
    run(conn, BEGIN_SNAPSHOT)
    return set(fetch_value(conn, RUNNING))


def end_snapshot(conn, ok: bool) -> None:
    """End the transaction ``begin_snapshot`` opened (it only read)."""
    run(conn, sql.SQL("COMMIT" if ok else "ROLLBACK"))
