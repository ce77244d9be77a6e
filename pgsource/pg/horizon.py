"""What PostgreSQL can tell about rows that may still commit behind the read frontier.

A polling read sees only committed rows. A transaction that took its tracking value (a
sequence id, ``now()``) before rows that were already read, and commits after them,
leaves a row *behind* the offset. These queries give the worker what it needs to hold
its committed offset behind such transactions (``pgsource/polling/late_commits.py`` decides):

- ``describe_tracking``: how the tracking column is filled (a time column and the clock its
  default reads, an owned sequence and its CACHE, ``xid8``), from the catalog, once at start;
- ``observe_activity``: every transaction in progress in the database, by backend and
  start time, the sessions that hide theirs (``track_activities = off``) and the prepared
  (2PC) ones — in its own statement, *before* any data snapshot it is used for; with it,
  what the catalog says of the column's default and sequence now (``watch_problem``);
- ``read_sequence``: the sequence's value, read before the activity it is paired with.

``pg_locks`` would not do: ``now()`` is fixed at BEGIN while a table lock comes at the
first write. ``pg_snapshot_xip`` would not either: subtransactions are absent from it.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from enum import Enum

import psycopg2.errors
from psycopg2 import sql

from pgsource.pg.catalog import ColumnInfo, TableInfo
from pgsource.pg.defaults import clock_default, type_precision

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
class Watch:
    """What the catalog must still say while the table is read: the column (its default, the
    sequence it owns) and the sequence by its name. Read with every observation."""

    relation: int  # the table's oid
    attnum: int
    sequence: str | None  # regclass text of the sequence (SEQUENCE)


@dataclass(frozen=True)
class TrackingInfo:
    kind: TrackingKind
    column: str
    type_oid: int
    sequence: str | None = None  # regclass text of the sequence (SEQUENCE)
    sequence_cache: int = 1
    why: str = ""  # for OTHER: what makes the column unprotectable, said in errors
    zone: str | None = None  # TIME: the zone its default fixes (timezone('UTC', now())); None: the writer's TimeZone
    rounding: int = 0  # TIME: µs a value may lie below its clock (a precision rounds to the nearest unit)
    watch: Watch | None = None
    fingerprint: str = ""  # what ``watch`` read at start (``watch_problem`` compares)


def describe_tracking(conn, info: TableInfo, column: ColumnInfo, set_by: str = "default") -> TrackingInfo:
    """Classify the tracking column by where its values come from: its type, its default (a
    clock, a sequence) and, declared with ``tracking_filled_by: trigger``, a BEFORE trigger."""
    base = column.base_oid
    if base == XID8_OID:
        return TrackingInfo(TrackingKind.XID8, column.name, base)
    default, attnum, triggers = _default_and_triggers(conn, info, column.name)
    watch = Watch(info.oid, attnum, None)
    if base in (TIMESTAMPTZ_OID, TIMESTAMP_OID, DATE_OID):
        return _describe_time(conn, column, default, triggers, set_by, watch)
    if base not in INTEGER_OIDS:
        return TrackingInfo(TrackingKind.OTHER, column.name, base, why=f"a {column.type_sql} column has no horizon")
    if set_by == "trigger":
        return TrackingInfo(TrackingKind.OTHER, column.name, base,
                            why="tracking_filled_by: trigger applies to time columns (a trigger's sequence is not known)")
    sequence = _sequence_of(conn, info, column.name, default)
    if sequence is None:
        return TrackingInfo(
            TrackingKind.OTHER, column.name, base,
            why=f"integer column {column.name!r} takes no default from a sequence, so its values are set by the client",
        )
    watch = Watch(info.oid, attnum, sequence)
    with conn.cursor() as cur:
        cur.execute("SELECT seqcache, seqincrement, seqcycle FROM pg_sequence WHERE seqrelid = %s::regclass", (sequence,))
        found = cur.fetchone()
        cur.execute(_FINGERPRINT, _watch_params(watch))
        fingerprint = cur.fetchone()[0]
    cache, increment, cycle = (int(found[0]), int(found[1]), bool(found[2])) if found else (1, 1, False)
    why = ""
    if cache > 1:
        why = f"sequence {sequence} has CACHE {cache}: a session hands out cached ids long after it took them"
    elif increment < 0 or cycle:
        why = f"sequence {sequence} {'counts down' if increment < 0 else 'CYCLEs'}: its next ids may lie below ids already read"
    if why:
        return TrackingInfo(TrackingKind.OTHER, column.name, base, sequence, cache, why=why)
    return TrackingInfo(TrackingKind.SEQUENCE, column.name, base, sequence, cache, watch=watch, fingerprint=fingerprint)


def _default_and_triggers(conn, info: TableInfo, column: str) -> tuple[str | None, int, list[str]]:
    """The column's default (``pg_get_expr``), its attnum, and the table's BEFORE INSERT/UPDATE row triggers."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT a.attnum, (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d"
            "                  WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum),"
            "       a.attidentity <> '' OR a.attgenerated <> '',"
            "       ARRAY(SELECT t.tgname::text FROM pg_trigger t WHERE t.tgrelid = a.attrelid AND NOT t.tgisinternal"
            "             AND t.tgenabled <> 'D' AND (t.tgtype::int & 3) = 3 AND (t.tgtype::int & 20) <> 0 ORDER BY 1)"
            " FROM pg_attribute a WHERE a.attrelid = %s AND a.attname = %s",
            (info.oid, column),
        )
        attnum, default, generated, triggers = cur.fetchone()
    return (default if not generated else None), int(attnum), list(triggers)


def _describe_time(conn, column: ColumnInfo, default: str | None, triggers: list[str], set_by: str,
                   watch: Watch) -> TrackingInfo:
    """A time column is guarded only when its value is the writing transaction's clock."""
    base = column.base_oid
    precision = type_precision(column.type_sql)
    if set_by == "trigger":
        if not triggers:
            return TrackingInfo(TrackingKind.OTHER, column.name, base, why=(
                f"tracking_filled_by: trigger, but the table has no BEFORE INSERT or UPDATE row trigger to set {column.name!r}"))
        clock: tuple[str | None, int | None] | None = (None, None)
    else:
        clock = clock_default(default, base) if default else None
    if clock is None:
        if default is None:
            source = "it has no default: its values are set by the client"
            if triggers:
                source += (f", or by the BEFORE trigger(s) {', '.join(triggers)}: if one of them sets it from now() or"
                           " clock_timestamp(), declare it with tracking_filled_by: trigger")
        else:
            source = (f"it takes its value from {default}, not from the writing transaction's clock (now(),"
                      " clock_timestamp(), statement_timestamp(), transaction_timestamp(), CURRENT_TIMESTAMP)")
        return TrackingInfo(TrackingKind.OTHER, column.name, base, why=source)
    zone, default_precision = clock
    precisions = [p for p in (precision, default_precision) if p is not None]
    rounding = 0 if base == DATE_OID or not precisions else 10 ** (6 - min(precisions)) // 2
    with conn.cursor() as cur:
        cur.execute(_FINGERPRINT, _watch_params(watch))
        fingerprint = cur.fetchone()[0]
    return TrackingInfo(TrackingKind.TIME, column.name, base, zone=zone, rounding=rounding, watch=watch,
                        fingerprint=fingerprint)


# What the catalog says of a tracking column now: its default's oid, the sequence it owns
# (serial, identity), and the sequence its name resolves to with that sequence's settings.
# Read at start and with every observation, after the sequence's value (see ``watch_problem``).
_FINGERPRINT_OF = (
    "SELECT concat_ws(',',"
    " coalesce((SELECT d.oid FROM pg_attrdef d WHERE d.adrelid = {rel} AND d.adnum = {att}), 0),"
    " coalesce((SELECT min(dep.objid) FROM pg_depend dep WHERE dep.refclassid = 'pg_class'::regclass"
    "   AND dep.refobjid = {rel} AND dep.refobjsubid = {att} AND dep.classid = 'pg_class'::regclass"
    "   AND dep.deptype IN ('a', 'i')), 0),"
    " (SELECT concat_ws(':', s.seqrelid, s.seqcache, s.seqincrement, s.seqcycle) FROM pg_sequence s"
    "   WHERE s.seqrelid = to_regclass({seq})))"
)
_FINGERPRINT = sql.SQL(_FINGERPRINT_OF).format(
    rel=sql.Placeholder("wrel"), att=sql.Placeholder("watt"), seq=sql.Placeholder("wseq"))


def _watch_params(watch: Watch | None) -> dict:
    if watch is None:
        return {"wrel": 0, "watt": 0, "wseq": None}
    return {"wrel": watch.relation, "watt": watch.attnum, "wseq": watch.sequence}


def watch_problem(tracking: TrackingInfo, fingerprint: str | None) -> str | None:
    """What changed in the catalog under the tracking column since start (None: nothing).

    A sequence's CACHE, increment or CYCLE, the sequence behind its name, the sequence the
    column owns, or the column's default: any of them changed, the horizon's premises may not
    hold any more (a cached id handed out long after it was taken)."""
    if tracking.watch is None or fingerprint is None or fingerprint == tracking.fingerprint:
        return None
    before, after = tracking.fingerprint.split(","), fingerprint.split(",")
    before += [""] * (3 - len(before))
    after += [""] * (3 - len(after))
    changes = []
    if before[2] != after[2]:
        old, new = (part.split(":") if part else ["", "", "", ""] for part in (before[2], after[2]))
        if old[0] != new[0]:
            changes.append("another sequence now has its name" if new[0] else "it was dropped")
        else:
            for label, index in (("CACHE", 1), ("INCREMENT", 2), ("CYCLE", 3)):
                if old[index] != new[index]:
                    changes.append(f"{label} {old[index]} -> {new[index]}")
    if before[0] != after[0]:
        changes.append("the column's default was replaced")
    if before[1] != after[1]:
        changes.append("the sequence the column owns was replaced")
    what = f"sequence {tracking.sequence}" if tracking.sequence else f"the default of tracking_column {tracking.column!r}"
    return f"{what} changed while running ({'; '.join(changes)})"


def _sequence_of(conn, info: TableInfo, column: str, default: str | None) -> str | None:
    """The sequence behind an integer column: owned (serial, identity) or named in a nextval() default."""
    table = sql.Identifier(info.schema, info.name).as_string(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_get_serial_sequence(%s, %s)", (table, column))
        owned = cur.fetchone()[0]
        if owned:
            return owned
    match = _NEXTVAL.match(default) if default else None
    return match.group("name").replace("''", "'") if match else None


@dataclass(frozen=True)
class Transaction:
    """One transaction in progress, as another session sees it.

    A session with ``track_activities = off`` shows neither its transaction nor its start
    (``state = 'disabled'``): it is listed as if a transaction of it had begun at its
    ``backend_start`` (every transaction of it began later), with its ``role``."""

    pid: int | None  # None for a prepared transaction (it outlived its session)
    started: str | None  # xact_start (timestamptz text, UTC); None when unknown (prepared, or not visible to us)
    xid: str | None  # its top-level xid, once it has one (backend_xid / pg_prepared_xacts.transaction)
    application: str = ""
    prepared: bool = False
    role: str | None = None  # set for a session with track_activities = off; ``started`` is its backend_start

    @property
    def hidden(self) -> bool:
        """track_activities = off: whether, and since when, it is in a transaction cannot be seen."""
        return self.role is not None


@dataclass(frozen=True)
class Activity:
    """Transactions in progress at ``observed_at`` (statement_timestamp of the observation, UTC text)."""

    observed_at: str
    transactions: tuple[Transaction, ...]
    fingerprint: str | None = None  # the tracking column's catalog entries now (``watch``; None: not asked)


# One statement per observation, prepared once per connection: planning it (catalog look-ups
# for pg_stat_activity and the watched entries) cost several times its execution.
_PREPARE_OBSERVE = sql.SQL(
    "PREPARE pgsource_observe (oid, int2, text) AS"
    " SELECT statement_timestamp()::text,"
    " coalesce((SELECT array_agg(ARRAY[a.pid::text,"
    "   CASE WHEN a.backend_type IS NULL THEN NULL WHEN a.state = 'disabled' THEN a.backend_start::text"
    "        ELSE coalesce(a.xact_start, a.query_start)::text END,"
    "   a.backend_xid::text, coalesce(a.application_name, ''),"
    "   CASE WHEN a.state = 'disabled' THEN coalesce(a.usename::text, '') END])"
    "   FROM pg_stat_activity a WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
    "   AND (a.backend_type IS NULL OR (a.backend_type NOT IN ('walsender', 'autovacuum worker')"
    "        AND (a.xact_start IS NOT NULL OR a.state IN ('active', 'disabled'))))), '{{}}'),"
    " coalesce((SELECT array_agg(p.transaction::text) FROM pg_prepared_xacts p"
    "   WHERE p.database = current_database()), '{{}}'),"
    " CASE WHEN $1 <> 0 THEN ({}) END"
).format(sql.SQL(_FINGERPRINT_OF).format(rel=sql.SQL("$1"), att=sql.SQL("$2"), seq=sql.SQL("$3")))
_EXECUTE_OBSERVE = "EXECUTE pgsource_observe (%(wrel)s, %(watt)s, %(wseq)s)"
_PREPARED: weakref.WeakSet = weakref.WeakSet()  # connections that prepared it


def observe_activity(conn, watch: Watch | None = None) -> Activity:
    """Every transaction in progress in this database but ours, plus prepared ones (one statement).

    A session's start is its ``xact_start``, or the ``query_start`` of an active one that
    shows no transaction yet (it is starting one); one with ``track_activities = off``
    (``state = 'disabled'``) is listed with its ``backend_start`` and role. Walsenders and
    autovacuum write no user rows and are left out; a session of another role we may not
    see (its ``backend_type`` is hidden) has an unknown start. With ``watch``, the catalog's
    entries for the tracking column are read in the same statement, in a snapshot taken
    after the sequence value the caller read before (``watch_problem``).
    """
    params = _watch_params(watch)
    with conn.cursor() as cur:
        if conn not in _PREPARED:
            cur.execute(_PREPARE_OBSERVE)
            _PREPARED.add(conn)
        try:
            cur.execute(_EXECUTE_OBSERVE, params)
        except psycopg2.errors.InvalidSqlStatementName:  # deallocated under us (DISCARD ALL): prepare again
            cur.execute(_PREPARE_OBSERVE)
            cur.execute(_EXECUTE_OBSERVE, params)
        observed_at, running, prepared, fingerprint = cur.fetchone()
    transactions = [Transaction(int(pid), started, xid, application, False, role)
                    for pid, started, xid, application, role in running]
    transactions += [Transaction(None, None, xid, "", True) for xid in prepared]
    return Activity(observed_at, tuple(transactions), fingerprint)


def read_sequence(conn, sequence: str) -> int:
    """The sequence's last value (0 before its first ``nextval``): ids handed out later are larger."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {}").format(
            sql.SQL(sequence)))  # regclass text from pg_get_serial_sequence/the default: already quoted
        return int(cur.fetchone()[0])


def role_settings(conn, name: str) -> list[tuple[str, str, str]]:
    """(role or "", database or "", value) of every ``ALTER ROLE/DATABASE ... SET name`` that applies
    in this database (``pg_db_role_setting``); a session's own ``SET`` is not there."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT coalesce(r.rolname::text, ''), coalesce(d.datname::text, ''), substr(c.cfg, position('=' in c.cfg) + 1)"
            " FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole"
            " LEFT JOIN pg_database d ON d.oid = s.setdatabase CROSS JOIN LATERAL unnest(s.setconfig) AS c(cfg)"
            " WHERE (s.setdatabase = 0 OR d.datname = current_database()) AND lower(split_part(c.cfg, '=', 1)) = lower(%s)"
            " ORDER BY 1, 2",
            (name,),
        )
        return [tuple(row) for row in cur.fetchall()]


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
