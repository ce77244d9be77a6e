"""What PostgreSQL can tell about rows that may still commit behind the read frontier.

A polling read sees only committed rows. A transaction that took its tracking value (a
sequence id, ``now()``) before rows that were already read, and commits after them,
leaves a row *behind* the offset. These queries give the worker what it needs to hold
its committed offset behind such transactions (``pgsource/polling/late_commits.py`` decides):

- ``describe_tracking``: how the tracking column is filled (a time column, an owned
  sequence and its CACHE, ``xid8``), from the catalog, once at start;
- ``observe_activity``: every transaction in progress in the database, by backend and
  start time, and the prepared (2PC) ones — in its own statement, *before* any data
  snapshot it is used for;
- ``read_sequence``: the sequence's value, read before the activity it is paired with.

``pg_locks`` would not do: ``now()`` is fixed at BEGIN while a table lock comes at the
first write. ``pg_snapshot_xip`` would not either: subtransactions are absent from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from psycopg2 import sql

from pgsource.pg.catalog import ColumnInfo, TableInfo

INTEGER_OIDS = {20: "bigint", 21: "smallint", 23: "integer"}
TIMESTAMPTZ_OID = 1184
TIMESTAMP_OID = 1114
DATE_OID = 1082
XID8_OID = 5069

_NEXTVAL = re.compile(r"^nextval\('(?P<name>(?:[^']|'')+)'::regclass\)$")


class TrackingKind(str, Enum):
    """How the tracking column gets its values, which decides how late commits are caught."""

    TIME = "time"  # timestamptz/timestamp/date filled by now()/clock_timestamp(): horizon = oldest xact_start
    SEQUENCE = "sequence"  # an integer from a sequence: horizon = the sequence when the oldest xact was first seen
    XID8 = "xid8"  # pg_current_xact_id(): rows are cut by snapshots, exactly (PgQ's batches)
    OTHER = "other"  # values set by the client (or a cached sequence): no horizon; needs `lag`


@dataclass(frozen=True)
class TrackingInfo:
    kind: TrackingKind
    column: str
    type_oid: int
    sequence: str | None = None  # regclass text of the sequence (SEQUENCE)
    sequence_cache: int = 1
    why: str = ""  # for OTHER: what makes the column unprotectable, said in errors


def describe_tracking(conn, info: TableInfo, column: ColumnInfo) -> TrackingInfo:
    """Classify the tracking column from its type, its default and its owned sequence."""
    base = column.base_oid
    if base == XID8_OID:
        return TrackingInfo(TrackingKind.XID8, column.name, base)
    if base in (TIMESTAMPTZ_OID, TIMESTAMP_OID, DATE_OID):
        return TrackingInfo(TrackingKind.TIME, column.name, base)
    if base not in INTEGER_OIDS:
        return TrackingInfo(TrackingKind.OTHER, column.name, base, why=f"a {column.type_sql} column has no horizon")
    sequence = _sequence_of(conn, info, column.name)
    if sequence is None:
        return TrackingInfo(
            TrackingKind.OTHER, column.name, base,
            why=f"integer column {column.name!r} takes no default from a sequence, so its values are set by the client",
        )
    with conn.cursor() as cur:
        cur.execute("SELECT seqcache FROM pg_sequence WHERE seqrelid = %s::regclass", (sequence,))
        found = cur.fetchone()
    cache = int(found[0]) if found else 1
    if cache > 1:
        return TrackingInfo(
            TrackingKind.OTHER, column.name, base, sequence, cache,
            why=f"sequence {sequence} has CACHE {cache}: a session hands out cached ids long after it took them",
        )
    return TrackingInfo(TrackingKind.SEQUENCE, column.name, base, sequence, cache)


def _sequence_of(conn, info: TableInfo, column: str) -> str | None:
    """The sequence behind an integer column: owned (serial, identity) or named in a nextval() default."""
    table = sql.Identifier(info.schema, info.name).as_string(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_get_serial_sequence(%s, %s)", (table, column))
        owned = cur.fetchone()[0]
        if owned:
            return owned
        cur.execute(
            "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a"
            " ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = %s AND a.attname = %s",
            (info.oid, column),
        )
        found = cur.fetchone()
    match = _NEXTVAL.match(found[0]) if found and found[0] else None
    return match.group("name").replace("''", "'") if match else None


@dataclass(frozen=True)
class Transaction:
    """One transaction in progress, as another session sees it."""

    pid: int | None  # None for a prepared transaction (it outlived its session)
    started: str | None  # xact_start (timestamptz text, UTC); None when unknown (prepared, or not visible to us)
    xid: str | None  # its top-level xid, once it has one (backend_xid / pg_prepared_xacts.transaction)
    application: str = ""
    prepared: bool = False


@dataclass(frozen=True)
class Activity:
    """Transactions in progress at ``observed_at`` (statement_timestamp of the observation, UTC text)."""

    observed_at: str
    transactions: tuple[Transaction, ...]


def observe_activity(conn) -> Activity:
    """Every transaction in progress in this database but ours, plus prepared ones (one statement).

    A session's start is its ``xact_start``, or the ``query_start`` of an active one that
    shows no transaction yet (it is starting one). Walsenders and autovacuum write no
    user rows and are left out; a session of another role we may not see (its
    ``backend_type`` is hidden) has an unknown start.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT statement_timestamp()::text,"
            " coalesce((SELECT array_agg(ARRAY[a.pid::text,"
            "   CASE WHEN a.backend_type IS NULL THEN NULL ELSE coalesce(a.xact_start, a.query_start)::text END,"
            "   a.backend_xid::text, coalesce(a.application_name, '')])"
            "   FROM pg_stat_activity a WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
            "   AND (a.backend_type IS NULL OR (a.backend_type NOT IN ('walsender', 'autovacuum worker')"
            "        AND (a.xact_start IS NOT NULL OR a.state = 'active')))), '{}'),"
            " coalesce((SELECT array_agg(p.transaction::text) FROM pg_prepared_xacts p"
            "   WHERE p.database = current_database()), '{}')"
        )
        observed_at, running, prepared = cur.fetchone()
    transactions = [Transaction(int(pid), started, xid, application) for pid, started, xid, application in running]
    transactions += [Transaction(None, None, xid, "", True) for xid in prepared]
    return Activity(observed_at, tuple(transactions))


def read_sequence(conn, sequence: str) -> int:
    """The sequence's last value (0 before its first ``nextval``): ids handed out later are larger."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {}").format(
            sql.SQL(sequence)))  # regclass text from pg_get_serial_sequence/the default: already quoted
        return int(cur.fetchone()[0])


def can_see_all_sessions(conn) -> bool:
    """Whether other roles' xact_start is visible to us (superuser or pg_read_all_stats)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')"
            " FROM pg_roles WHERE rolname = current_user"
        )
        return bool(cur.fetchone()[0])


def in_recovery(conn) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        return bool(cur.fetchone()[0])


def database_time_zone(dsn: str) -> str:
    """The TimeZone a writer's session gets by default (pgsource's own sessions use UTC)."""
    import psycopg2

    conn = psycopg2.connect(dsn, application_name="pgsource-timezone")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TimeZone")
            return cur.fetchone()[0]
    finally:
        conn.close()


def build_horizon_value(kind_oid: int, time_zone: str) -> sql.Composed:
    """SQL turning a timestamptz parameter into the tracking column's type (as text) for comparisons."""
    if kind_oid == TIMESTAMPTZ_OID:
        return sql.SQL("%s::timestamptz::text")
    target = "timestamp" if kind_oid == TIMESTAMP_OID else "date"
    return sql.SQL("(%s::timestamptz AT TIME ZONE {})::" + target + "::text").format(sql.Literal(time_zone))
