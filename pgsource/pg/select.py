"""``build_*``: the SQL of polling's reads and acknowledgements, composed from identifiers and placeholders.

A poll reads one batch in keyset order after an offset (``build_select_batch``), with the
row's JSON built by PostgreSQL (``row_to_json``, see ``pgsource/pg/json_values.py``); a
re-read of a range looks for late commits by ``xmin``; after Iggy's ack, the row versions
sent are deleted or marked (``build_acknowledged_rows``) and rows updated meanwhile are
read again by key (``build_rows_by_key``).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from pgsource.pg.catalog import TableInfo
from pgsource.pg.plan import PollPlan
from pgsource.pg.row_filter import predicate_sql


def _row_json(plan: PollPlan) -> sql.Composable:
    """The message's body column: the row's JSON, or the payload column as it is read."""
    if plan.payload is not None:
        column, payload_format = plan.payload
        ident = sql.SQL("t.") + sql.Identifier(column)
        return ident if payload_format == "bytea" else ident + sql.SQL("::text")
    if plan.whole_row:
        return sql.SQL("row_to_json(t)::text")
    parts = []
    for column, key, value in plan.json_columns:
        ident = sql.SQL("t.") + sql.Identifier(column)
        parts.append(sql.SQL("{} AS {}").format(value if value is not None else ident, sql.Identifier(key)))
    return sql.SQL("(SELECT row_to_json(s) FROM (SELECT {}) s)::text").format(sql.SQL(", ").join(parts))


@dataclass(frozen=True)
class Reading:
    """The options of one batch query (each combination is one prepared SQL text)."""

    offset_width: int = 0  # position values the read starts after (0 = from the start)
    lower: bool = False  # chunk: tracking >= %(lo)s
    upper: bool = False  # chunk: tracking < %(hi)s
    upto: bool = False  # a re-read of a range: position <= %(u0)s... (full width)
    invisible: bool = False  # only row versions the snapshot %(snapshot)s may not have seen (by xmin)
    exact: int = 0  # xid8 tracking: 1 = rows not visible in %(after)s; 2 = also visible in %(tick)s
    snapshot: bool = False  # return pg_current_snapshot() of the read as the last column


def build_select_batch(plan: PollPlan, reading: Reading = Reading()) -> sql.Composed:
    """One batch of rows in position order, as text, with the row's JSON (and the read's snapshot).

    Named parameters: o0.. (the offset), lo/hi (chunk bounds), u0.. (the range end of a
    re-read), xmax/xmax_low/snapshot (the first read's snapshot), after/tick (xid8
    snapshots), limit. Columns: ``plan.select_columns`` as text, the JSON, then the
    snapshot when ``reading.snapshot``.
    """
    selected = sql.SQL(", ").join([*(_column_text(c) for c in plan.select_columns), _row_json(plan)])
    return build_batch_query(plan, reading, selected)


def build_batch_query(plan: PollPlan, reading: Reading, selected: sql.Composable,
                      extra: sql.Composable | None = None) -> sql.Composed:
    """``SELECT selected [, snapshot] FROM the table WHERE <the reading's conditions> ORDER BY position
    LIMIT %(limit)s``: the batch query of ``build_select_batch`` with a select list of the caller's
    (the COPY read names its columns one by one); ``extra``: one more condition."""
    table = sql.Identifier(plan.schema, plan.table)
    conditions = []
    if reading.offset_width:
        conditions.append(_compare(plan, reading.offset_width, ">", "o"))
    conditions.append(sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(plan.tracking_column)))
    tracking = sql.Identifier(plan.tracking_column)
    if reading.lower:
        conditions.append(sql.SQL("t.{} >= %(lo)s::" + plan.position_types[0]).format(tracking))
    if reading.upper:
        conditions.append(sql.SQL("t.{} < %(hi)s::" + plan.position_types[0]).format(tracking))
    if reading.upto:
        conditions.append(_compare(plan, len(plan.position_columns), "<=", "u"))
    if reading.invisible:
        # xmin >= the snapshot's xmin: everything older was visible to it. Not pg_visible_in_snapshot:
        # a row written in a savepoint carries the subtransaction's xid, which pg_snapshot never lists.
        conditions.append(sql.SQL("t.xmin::text::bigint > 2 AND {} >= pg_snapshot_xmin(%(snapshot)s::pg_snapshot)").format(
            _xmin_as_xid8()))
    if reading.exact:
        conditions.append(sql.SQL(
            "(%(after)s::pg_snapshot IS NULL OR (t.{0} >= pg_snapshot_xmin(%(after)s::pg_snapshot)"
            " AND NOT pg_visible_in_snapshot(t.{0}, %(after)s::pg_snapshot)))").format(tracking))
        if reading.exact == 2:
            conditions.append(sql.SQL("pg_visible_in_snapshot(t.{}, %(tick)s::pg_snapshot)").format(tracking))
    if plan.processed_column:
        conditions.append(sql.SQL("t.{} IS NOT TRUE").format(sql.Identifier(plan.processed_column)))
    if plan.row_filter:
        conditions.append(_row_filter(plan))
    if extra is not None:
        conditions.append(extra)
    order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in plan.position_columns)
    snapshot = sql.SQL(", (SELECT pg_current_snapshot()::text)") if reading.snapshot else sql.SQL("")
    return sql.SQL("SELECT {}{} FROM {} AS t WHERE {} ORDER BY {} LIMIT %(limit)s").format(
        selected, snapshot, table, sql.SQL(" AND ").join(conditions), order
    )


def build_table_definition() -> sql.SQL:
    """The columns of a table (``%s``: its oid) as ``name oid,name oid...`` in column order; a read
    that names the columns one by one compares it with ``table_definition`` of its plan's columns."""
    return sql.SQL(
        "SELECT coalesce(string_agg(a.attname || ' ' || a.atttypid::text, ',' ORDER BY a.attnum), '')"
        " FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped"
    )


def table_definition(info: TableInfo) -> str:
    """What ``build_table_definition`` returns for the table described by ``info``."""
    return ",".join(f"{column.name} {column.type_oid}" for column in info.columns)


def _row_filter(plan: PollPlan) -> sql.Composable:
    """The user's predicate (SQL from the configuration, like custom_query) on the row's columns,
    written unqualified as in a CDC publication's WHERE (the table is the query's only relation)."""
    return predicate_sql(plan.row_filter)


def _column_text(column: str) -> sql.Composable:
    return sql.SQL("t.{}::text").format(sql.Identifier(column))


def _compare(plan: PollPlan, width: int, operator: str, prefix: str) -> sql.Composable:
    """``(position columns...) <op> (%(prefix0)s::type, ...)`` over the first ``width`` columns."""
    columns = plan.position_columns[:width]
    types = plan.position_types[:width]
    left = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns)
    right = sql.SQL(", ").join(sql.Placeholder(f"{prefix}{i}") + sql.SQL("::" + t) for i, t in enumerate(types))
    template = "({}) " + operator + " ({})" if width > 1 else "{} " + operator + " {}"
    return sql.SQL(template).format(left, right)


def _xmin_as_xid8() -> sql.Composable:
    """The row's 32-bit ``xmin`` as the 64-bit xid (``xid8``) nearest to ``%(xmax)s`` (the snapshot's xmax).

    Every live row's xmin is within 2^31 of the current xid, so the signed 32-bit distance
    to xmax, added to it, gives its full xid (frozen xids 1 and 2 are excluded by the caller).
    """
    return sql.SQL(
        "((%(xmax)s::bigint + mod(mod(t.xmin::text::bigint - %(xmax_low)s::bigint + 2147483648, 4294967296)"
        " + 4294967296, 4294967296) - 2147483648)::text::xid8)"
    )


def snapshot_params(snapshot: str) -> dict[str, object]:
    """The parameters ``Reading(invisible=True)`` needs from a ``pg_snapshot`` text."""
    xmax = int(snapshot.split(":")[1])
    return {"snapshot": snapshot, "xmax": xmax, "xmax_low": xmax & 0xFFFFFFFF}


def position_params(prefix: str, values: tuple) -> dict[str, object]:
    return {f"{prefix}{i}": value for i, value in enumerate(values)}


def by_key_params(keys: list[tuple], hi: tuple) -> dict[str, object]:
    """The bound values of ``build_rows_by_key``: one array per key column, the range's end."""
    columns = list(zip(*keys))
    return {**{f"k{i}": list(values) for i, values in enumerate(columns)}, **position_params("u", hi)}


def build_key_bounds(plan: PollPlan) -> sql.Composed:
    """``min`` and ``max`` of the tracking column: where a bulk load is cut into chunks."""
    column = sql.Identifier(plan.tracking_column)
    return sql.SQL("SELECT min({0})::text, max({0})::text FROM {1}").format(column, sql.Identifier(plan.schema, plan.table))


def build_acknowledged_rows(plan: PollPlan, action: str) -> sql.Composed:
    """DELETE or mark exactly the row versions of an acknowledged batch; returns the keys it acted on.

    Params: ``k0..`` one array per identity column, ``versions`` the xmin (text) of each row
    as it was read: a row updated since is a newer version, left alone (and published).
    """
    table = sql.Identifier(plan.schema, plan.table)
    names = [sql.Identifier(f"k{i}") for i in range(len(plan.identity))]
    arrays = sql.SQL(", ").join(sql.Placeholder(f"k{i}") + sql.SQL("::" + t + "[]") for i, t in enumerate(plan.identity_types))
    source = sql.SQL("unnest({}, %(versions)s::text[]) AS u({}, v)").format(arrays, sql.SQL(", ").join(names))
    match = sql.SQL(" AND ").join(
        sql.SQL("t.{} = u.{}").format(sql.Identifier(c), n) for c, n in zip(plan.identity, names)
    ) + sql.SQL(" AND t.xmin::text = u.v")
    returning = sql.SQL(", ").join(_column_text(c) for c in plan.identity)
    if action == "delete":
        return sql.SQL("DELETE FROM {} AS t USING {} WHERE {} RETURNING {}").format(table, source, match, returning)
    return sql.SQL("UPDATE {} AS t SET {} = true FROM {} WHERE {} RETURNING {}").format(
        table, sql.Identifier(plan.processed_column), source, match, returning)


def build_rows_by_key(plan: PollPlan, selected: sql.Composable | None = None) -> sql.Composed:
    """The current version of some rows (by key, ``k0..`` arrays) up to the position ``u0..``, in position order.

    After an ack, the rows whose version changed meanwhile are read again this way and
    published, before their range counts as done. ``selected``: another select list (the COPY read's).
    """
    if selected is None:
        selected = sql.SQL(", ").join([*(_column_text(c) for c in plan.select_columns), _row_json(plan)])
    table = sql.Identifier(plan.schema, plan.table)
    keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in plan.identity)
    arrays = sql.SQL(", ").join(sql.Placeholder(f"k{i}") + sql.SQL("::" + t + "[]") for i, t in enumerate(plan.identity_types))
    conditions = [sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(keys, arrays), _compare(plan, len(plan.position_columns), "<=", "u")]
    if plan.processed_column:
        conditions.append(sql.SQL("t.{} IS NOT TRUE").format(sql.Identifier(plan.processed_column)))
    if plan.row_filter:
        conditions.append(_row_filter(plan))
    order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in plan.position_columns)
    return sql.SQL("SELECT {} FROM {} AS t WHERE {} ORDER BY {}").format(
        selected, table, sql.SQL(" AND ").join(conditions), order)


