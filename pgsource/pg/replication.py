"""Logical replication slots: created when missing, checked when present, advanced after the ack.

Slot safety: a slot of another plugin, a lost (invalidated) slot, or a slot in use by
another process stops startup with an error that says what to do. pgsource never drops
and recreates a slot on its own — that would silently skip changes — except the slot it
created itself for an initial snapshot that never finished (nothing was streamed from
it yet), see ``workers/cdc_worker.py``. Publications: ``pgsource/pg/publications.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from pgsource.errors import PrerequisiteError
from pgsource.lsn import format_lsn, parse_lsn


@dataclass(frozen=True)
class SlotState:
    name: str
    plugin: str
    database: str
    active_pid: int | None
    wal_status: str | None
    confirmed_flush_lsn: int


def existing_slots(conn) -> set[str]:
    """The names of every replication slot on the server (of any database)."""
    with conn.cursor() as cur:
        cur.execute("SELECT slot_name FROM pg_replication_slots")
        return {row[0] for row in cur.fetchall()}


def slot_state(conn, slot: str) -> SlotState | None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT slot_name, coalesce(plugin, ''), coalesce(database, ''), active_pid, wal_status,"
            " coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )
        row = cur.fetchone()
    if row is None:
        return None
    return SlotState(row[0], row[1], row[2], row[3], row[4], parse_lsn(row[5]))


def wait_until_free(conn, state: SlotState, seconds: float = 10.0) -> SlotState:
    """A slot still held by a process that just died (its walsender has not noticed yet) frees up
    within moments; wait a little before calling it in use."""
    import time

    deadline = time.monotonic() + seconds
    while state.active_pid is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        state = slot_state(conn, state.name) or state
    return state


def check_slot(conn, state: SlotState) -> None:
    """Refuse a slot that would skip or garble changes; the message says how to fix it."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        database = cur.fetchone()[0]
    if state.plugin != "pgoutput":
        raise PrerequisiteError(
            f"replication slot {state.name} uses plugin {state.plugin or '(physical)'}, not pgoutput;"
            " choose another replication_slot or drop it yourself"
        )
    if state.database != database:
        raise PrerequisiteError(f"replication slot {state.name} belongs to database {state.database}, not {database}")
    if state.wal_status == "lost":
        raise PrerequisiteError(
            f"replication slot {state.name} is invalidated (wal_status=lost): changes were removed before they"
            " were read. Re-sync the tables (snapshot: initial with a new slot), then drop the old slot with"
            " `pgsource drop-slot`; pgsource will not drop it silently"
        )
    if state.active_pid is not None:
        raise PrerequisiteError(f"replication slot {state.name} is in use by another process (pid {state.active_pid})")


@dataclass(frozen=True)
class SystemIdentity:
    """The database cluster a slot lives on: a slot of another cluster or timeline is another history."""

    system_identifier: str
    timeline: int


def system_identity(conn) -> SystemIdentity:
    with conn.cursor() as cur:
        cur.execute("SELECT system_identifier::text FROM pg_control_system()")
        system_identifier = cur.fetchone()[0]
        cur.execute("SELECT timeline_id FROM pg_control_checkpoint()")
        timeline = int(cur.fetchone()[0])
    return SystemIdentity(system_identifier, timeline)


def wal_sender_timeout(conn) -> float:
    """``wal_sender_timeout`` in seconds (0: the walsender never asks for a reply)."""
    with conn.cursor() as cur:
        cur.execute("SELECT setting::float / 1000 FROM pg_settings WHERE name = 'wal_sender_timeout'")
        row = cur.fetchone()
    return float(row[0]) if row else 60.0


def create_slot_exporting(replication_conn, slot: str) -> tuple[int, str]:
    """Create a pgoutput slot over a replication connection with an exported snapshot.

    Returns (consistent LSN, snapshot name): the snapshot sees exactly the transactions
    committed before the consistent point; it stays importable while the connection is open
    and runs no other command.
    """
    with replication_conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT").format(sql.Identifier(slot)))
        _, consistent_point, snapshot_name, _ = cur.fetchone()
    return parse_lsn(consistent_point), snapshot_name


def begin_repeatable_read(conn) -> None:
    """Begin a REPEATABLE READ transaction on ``conn`` (autocommit off): one snapshot for every read."""
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def import_snapshot(conn, snapshot_name: str) -> None:
    """Begin a REPEATABLE READ transaction on ``conn`` (autocommit off) that reads in an exported snapshot."""
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))


def create_slot(conn, slot: str) -> int:
    """Create a pgoutput slot over SQL; returns its consistent LSN."""
    with conn.cursor() as cur:
        cur.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        return parse_lsn(cur.fetchone()[0])


def drop_slot(conn, slot: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        return cur.rowcount > 0


def current_flush_lsn(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_flush_lsn()::text")
        return parse_lsn(cur.fetchone()[0])


def current_insert_lsn(conn) -> int:
    """Where the WAL ends now, flushed or not: every commit so far lies before it."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        return parse_lsn(cur.fetchone()[0])


def build_peek(slot: str, publication: str, upto_lsn: int, upto_changes: int) -> tuple[str, tuple]:
    """The SQL path: changes since the slot's confirmed LSN, without consuming them."""
    query = (
        "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s,"
        " 'proto_version', '1', 'publication_names', %s, 'messages', 'true')"
    )
    return query, (slot, format_lsn(upto_lsn), upto_changes, publication)


def confirm_slot(conn, slot: str, lsn: int) -> None:
    """``confirm_*``: tell PostgreSQL everything before ``lsn`` was delivered (only after Iggy's ack)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, format_lsn(lsn)))
