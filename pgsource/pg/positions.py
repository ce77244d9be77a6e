"""Where PostgreSQL stands against pgsource's stored positions (readiness, ``status``, ``verify``).

- polling: the rows after a committed offset (do any wait? how many?), and the rows up
  to it, read in keyset pages (their ids are what Iggy must hold);
- cdc: each slot's confirmed and restart LSN against the current WAL position.

Every statement here runs on a connection with a ``statement_timeout`` (``bounded``): a
probe or a scrape must answer, not wait behind a lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from psycopg2 import sql

from pgsource.lsn import parse_lsn
from pgsource.pg.plan import PollPlan
from pgsource.pg.statements import render


def bounded(conn, seconds: float) -> None:
    """Every later statement of ``conn`` is cancelled after ``seconds``."""
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(seconds * 1000)}ms",))


@dataclass(frozen=True)
class Bounds:
    """What limits a query on one stored offset: its position (after/up to), its chunk, its xid8 snapshot."""

    position: tuple[str, ...] = ()
    chunk: tuple[int | None, int | None] | None = None
    snapshot: str | None = None  # xid8 tracking: the rows committed so far end at this pg_snapshot


def _position_condition(plan: PollPlan, width: int, operator: str, prefix: str) -> sql.Composable:
    columns = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in plan.position_columns[:width])
    values = sql.SQL(", ").join(
        sql.Placeholder(f"{prefix}{i}") + sql.SQL("::" + kind) for i, kind in enumerate(plan.position_types[:width])
    )
    template = "({}) " + operator + " ({})" if width > 1 else "{} " + operator + " {}"
    return sql.SQL(template).format(columns, values)


def _conditions(plan: PollPlan, bounds: Bounds, *, after: bool, exact: bool, processed: bool | None) -> tuple[list, dict]:
    tracking = sql.Identifier(plan.tracking_column)
    conditions: list[sql.Composable] = [sql.SQL("t.{} IS NOT NULL").format(tracking)]
    params: dict[str, object] = {}
    if exact:  # xid8: rows after = not visible in the snapshot; up to = visible in it
        if bounds.snapshot is not None:
            visible = sql.SQL("pg_visible_in_snapshot(t.{}, %(snapshot)s::pg_snapshot)").format(tracking)
            conditions.append(sql.SQL("NOT ") + visible if after else visible)
            params["snapshot"] = bounds.snapshot
        elif not after:
            conditions.append(sql.SQL("false"))
    elif bounds.position:
        conditions.append(_position_condition(plan, len(bounds.position), ">" if after else "<=", "c"))
        params |= {f"c{i}": value for i, value in enumerate(bounds.position)}
    elif not after:
        conditions.append(sql.SQL("false"))  # up to "the start": nothing
    if bounds.chunk is not None:
        lo, hi = bounds.chunk
        if lo is not None:
            conditions.append(sql.SQL("t.{} >= %(lo)s").format(tracking))
            params["lo"] = lo
        if hi is not None:
            conditions.append(sql.SQL("t.{} < %(hi)s").format(tracking))
            params["hi"] = hi
    if plan.processed_column and processed is not None:
        marked = sql.SQL("t.{} IS TRUE" if processed else "t.{} IS NOT TRUE").format(sql.Identifier(plan.processed_column))
        conditions.append(marked)
    return conditions, params


def build_rows_after(plan: PollPlan, bounds: Bounds, *, exact: bool = False, count: bool = False) -> tuple[sql.Composed, dict]:
    """Whether any row (``count``: how many) waits after ``bounds`` (unprocessed ones, with processed_column)."""
    conditions, params = _conditions(plan, bounds, after=True, exact=exact, processed=False)
    table = sql.Identifier(plan.schema, plan.table)
    where = sql.SQL(" AND ").join(conditions)
    if count:
        return sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(table, where), params
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE {})").format(table, where), params


def rows_after(conn, plan: PollPlan, bounds: Bounds, *, exact: bool = False, count: bool = False) -> int:
    """1/0 (exists) or the number of rows after ``bounds``."""
    statement, params = build_rows_after(plan, bounds, exact=exact, count=count)
    with conn.cursor() as cur:
        cur.execute(render(statement, conn), params)
        return int(cur.fetchone()[0])


def build_rows_upto(plan: PollPlan, bounds: Bounds, *, exact: bool, processed: bool | None, page_width: int,
                    from_position: tuple[str, ...] = ()) -> tuple[sql.Composed, dict]:
    """One keyset page of the rows up to ``bounds``, after ``from_position``: ``plan.select_columns`` as text."""
    conditions, params = _conditions(plan, bounds, after=False, exact=exact, processed=processed)
    if page_width:
        conditions.append(_position_condition(plan, page_width, ">", "p"))
    selected = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in plan.select_columns)
    order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in plan.position_columns)
    statement = sql.SQL("SELECT {} FROM {} AS t WHERE {} ORDER BY {} LIMIT %(limit)s").format(
        selected, sql.Identifier(plan.schema, plan.table), sql.SQL(" AND ").join(conditions), order)
    return statement, params | {f"p{i}": value for i, value in enumerate(from_position)}


def iter_rows_upto(conn, plan: PollPlan, bounds: Bounds, *, exact: bool = False, processed: bool | None = None,
                   after: tuple[str, ...] = (), page: int = 10_000) -> Iterator[list[tuple]]:
    """The rows up to ``bounds`` (after ``after``, a tracking value or a full position), page by page."""
    width = len(plan.position_columns)
    start = after
    while True:
        statement, params = build_rows_upto(plan, bounds, exact=exact, processed=processed, page_width=len(start),
                                            from_position=start)
        with conn.cursor() as cur:
            cur.execute(render(statement, conn), params | {"limit": page})
            rows = cur.fetchall()
        if rows:
            yield rows
        if len(rows) < page:
            return
        start = tuple(rows[-1][:width])


def count_rows_upto(conn, plan: PollPlan, bounds: Bounds, *, exact: bool = False, processed: bool | None = None) -> int:
    conditions, params = _conditions(plan, bounds, after=False, exact=exact, processed=processed)
    statement = sql.SQL("SELECT count(*) FROM {} AS t WHERE {}").format(
        sql.Identifier(plan.schema, plan.table), sql.SQL(" AND ").join(conditions))
    with conn.cursor() as cur:
        cur.execute(render(statement, conn), params)
        return int(cur.fetchone()[0])


def normalize_value(conn, type_sql: str, value: str) -> str:
    """``value`` as PostgreSQL prints it for the column's type (raises the database's error if it is not one)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT (%s::" + type_sql + ")::text"), (value,))
        return cur.fetchone()[0]


def estimated_rows(conn, schema: str, table: str) -> int | None:
    """The planner's estimate of a table's rows (None when it was never analyzed)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s", (schema, table))
        found = cur.fetchone()
    return None if found is None or found[0] < 0 else int(found[0])


def count_all(conn, schema: str, table: str) -> int:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table)))
        return int(cur.fetchone()[0])


@dataclass(frozen=True)
class SlotStats:
    """One replication slot against the server's current WAL position (bytes)."""

    slot: str
    active_pid: int | None
    wal_status: str | None
    confirmed_lsn: int
    restart_lsn: int
    current_lsn: int
    safe_wal_size: int | None
    flush_lsn: int = 0  # pg_current_wal_flush_lsn(): the end of what a walsender can send

    @property
    def retained_bytes(self) -> int:
        """WAL the server keeps for this slot: ``pg_current_wal_lsn() - restart_lsn``."""
        return max(0, self.current_lsn - self.restart_lsn) if self.restart_lsn else 0

    @property
    def unconfirmed_bytes(self) -> int:
        """WAL after the position confirmed by pgsource (changes not yet delivered, or none at all)."""
        return max(0, self.current_lsn - self.confirmed_lsn) if self.confirmed_lsn else 0


def slot_stats(conn, slots: list[str]) -> dict[str, SlotStats]:
    """The slots among ``slots`` that exist, with the current WAL position (one bounded query)."""
    if not slots:
        return {}
    with conn.cursor() as cur:
        cur.execute(
            "SELECT slot_name, active_pid, wal_status, coalesce(confirmed_flush_lsn, '0/0')::text,"
            " coalesce(restart_lsn, '0/0')::text,"
            " (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,"
            " safe_wal_size,"
            " (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END)::text"
            " FROM pg_replication_slots WHERE slot_name = ANY(%s)",
            (slots,),
        )
        rows = cur.fetchall()
    return {
        name: SlotStats(name, pid, status, parse_lsn(confirmed), parse_lsn(restart), parse_lsn(current),
                        int(safe) if safe is not None else None, parse_lsn(flush))
        for name, pid, status, confirmed, restart, current, safe, flush in rows
    }
