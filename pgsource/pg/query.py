"""``build_*``: the SQL of polling, composed from identifiers and placeholders, never from text.

A poll reads one batch in keyset order: ``WHERE (tracking, key...) > (offset...) ORDER BY
tracking, key... LIMIT n``, so rows that share a tracking value are neither skipped nor
repeated at a batch boundary. PostgreSQL builds each row's JSON (``row_to_json``); bytea
is turned into base64 first wherever it sits (a column, a domain, array elements,
attributes of composites, any depth: ``build_json_value``), so polling sends exactly what
the CDC decoder sends; columns are renamed when snake_case is asked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg2 import sql

from pgsource.encode.names import output_names
from pgsource.errors import ConfigError, PrerequisiteError
from pgsource.pg import types as t
from pgsource.pg.catalog import TableInfo
from pgsource.pg.row_filter import predicate_sql

CTID = "ctid"


@dataclass(frozen=True)
class PollPlan:
    """How one table is read: its position columns (tracking first) and how a row is selected."""

    schema: str
    table: str
    position_columns: tuple[str, ...]  # tracking column, then tie-breakers
    position_types: tuple[str, ...]
    identity: tuple[str, ...]  # the row's key (for ids, partitions, delete/mark); () = none
    identity_types: tuple[str, ...]
    select_columns: tuple[str, ...]  # position columns + identity columns not among them
    json_columns: tuple[tuple[str, str, sql.Composable | None], ...]  # (column, key, value SQL or None = as is)
    processed_column: str | None = None
    versioned: bool = False  # xmin is read with each row (delete/mark act on that version; ids include it)
    row_filter: str | None = None  # the user's predicate on the row (tables[].row_filter)
    all_columns: bool = True  # `data` holds every column (no columns/exclude_columns)
    payload: tuple[str, str] | None = None  # (column, format): the column's value is the message, no JSON

    @property
    def tracking_column(self) -> str:
        return self.position_columns[0]

    @property
    def whole_row(self) -> bool:
        """``data`` is ``row_to_json(t)``, which follows the table's columns as they are now; otherwise
        the columns are named one by one as they were when the plan was made."""
        return self.payload is None and self.all_columns and all(
            column == key and value is None for column, key, value in self.json_columns)

    @property
    def key_columns(self) -> tuple[str, ...]:
        """What identifies a row for its message id and partition."""
        return self.identity or self.position_columns


def build_poll_plan(
    info: TableInfo,
    tracking_column: str,
    *,
    snake_case: bool = False,
    allow_non_unique: bool = False,
    processed_column: str | None = None,
    need_identity: bool = False,
    catalog: Mapping[int, t.TypeInfo] | None = None,
    versioned: bool = False,
    columns: list[str] | None = None,
    exclude_columns: list[str] = (),
    row_filter: str | None = None,
    payload: tuple[str, str] | None = None,
    primary_key_column: str | None = None,
) -> PollPlan:
    """Check the table against the settings and decide the position; errors name table and column.

    ``catalog`` (``load_type_catalog`` of the columns' types) lets bytea nested in composites
    and arrays be found; without it only bytea and bytea[] columns (domains included) are.
    """
    where = info.qualified
    tracking = info.column(tracking_column)
    if tracking is None:
        raise PrerequisiteError(
            f"table {where}: tracking_column {tracking_column!r} does not exist"
            f" (columns: {', '.join(c.name for c in info.columns)})"
        )
    if tracking.type_sql in ("json", "xml", "point", "polygon", "box", "circle") or tracking.is_bytea_array:
        raise PrerequisiteError(f"table {where}: tracking_column {tracking_column!r} of type {tracking.type_sql} cannot be ordered")
    if processed_column is not None:
        marked = info.column(processed_column)
        if marked is None:
            raise PrerequisiteError(f"table {where}: processed_column {processed_column!r} does not exist")
        if marked.type_sql != "boolean":
            raise PrerequisiteError(f"table {where}: processed_column {processed_column!r} must be boolean, not {marked.type_sql}")
    identity = info.identity
    if primary_key_column is not None:
        key = info.column(primary_key_column)
        if key is None:
            raise PrerequisiteError(f"table {where}: primary_key_column {primary_key_column!r} does not exist")
        if not (key.not_null and info.is_unique((primary_key_column,))):
            raise PrerequisiteError(
                f"table {where}: primary_key_column {primary_key_column!r} must be NOT NULL and unique on its own"
                " (delete/mark act on the rows it names)"
            )
        identity = (primary_key_column,)
    if need_identity and not identity:
        raise PrerequisiteError(f"table {where}: delete_after_read/processed_column need a primary key or a unique NOT NULL key")
    for listed in (*(columns or ()), *exclude_columns):
        if info.column(listed) is None:
            raise PrerequisiteError(f"table {where}: column {listed!r} (in columns/exclude_columns) does not exist")
    if payload is not None:
        _check_payload(info, *payload)
    if info.is_unique((tracking_column,)) and tracking.not_null:
        position: tuple[str, ...] = (tracking_column,)
    elif identity:
        position = (tracking_column, *[c for c in identity if c != tracking_column])
    elif allow_non_unique:
        position = (tracking_column, CTID)
    else:
        raise PrerequisiteError(
            f"table {where}: tracking_column {tracking_column!r} is not unique and the table has no primary key"
            " or unique NOT NULL key to break ties, so rows sharing a value could be lost at batch boundaries;"
            " add a key, or set source.allow_non_unique_tracking: true (ties broken by ctid, see docs/delivery.md)"
        )
    types = {c.name: c.type_sql for c in info.columns} | {CTID: "tid"}
    kept = [c for c in info.columns if (columns is None or c.name in columns) and c.name not in exclude_columns]
    keys = output_names([c.name for c in kept], snake_case)
    json_columns = tuple((c.name, key, _column_value(c, catalog)) for c, key in zip(kept, keys))
    extra = tuple(c for c in identity if c not in position)
    return PollPlan(
        schema=info.schema,
        table=info.name,
        position_columns=position,
        position_types=tuple(types[c] for c in position),
        identity=identity,
        identity_types=tuple(types[c] for c in identity),
        select_columns=position + extra + ((XMIN,) if versioned else ()),
        json_columns=json_columns,
        processed_column=processed_column,
        versioned=versioned,
        row_filter=row_filter,
        payload=payload,
        all_columns=len(kept) == len(info.columns),
    )


PAYLOAD_TYPES = {
    "bytea": ("bytea",),
    "text": ("text", "character varying", "character", "name", "citext"),
    "json_direct": ("json", "jsonb"),
}


def cdc_payload_problem(info: TableInfo, column: str, payload_format: str, captures_updates: bool) -> str | None:
    """CDC with payload_column: the column must be of its format's type, and an UPDATE must carry the
    value even when it is an unchanged TOASTed one, which only REPLICA IDENTITY FULL does."""
    try:
        _check_payload(info, column, payload_format)
    except PrerequisiteError as exc:
        return str(exc)
    if captures_updates and info.replica_identity != "f":
        return (
            f"table {info.qualified}: payload_column {column!r} in cdc mode needs REPLICA IDENTITY FULL when UPDATE"
            " is captured (an UPDATE that leaves a large payload unchanged carries no value for it otherwise):"
            f" ALTER TABLE {info.qualified} REPLICA IDENTITY FULL, or capture_operations without UPDATE"
        )
    return None


def _check_payload(info: TableInfo, column: str, payload_format: str) -> None:
    """A payload column must exist and be of a type its format reads (domains look through)."""
    found = info.column(column)
    if found is None:
        raise PrerequisiteError(f"table {info.qualified}: payload_column {column!r} does not exist")
    base = found.type_sql.split("(")[0]
    allowed = PAYLOAD_TYPES[payload_format]
    if base not in allowed and not (payload_format == "bytea" and found.is_bytea):
        raise PrerequisiteError(
            f"table {info.qualified}: payload_column {column!r} is {found.type_sql}; payload_format"
            f" {payload_format} reads {' or '.join(allowed)}"
        )


def _column_value(column, catalog: Mapping[int, t.TypeInfo] | None) -> sql.Composable | None:
    ident = sql.SQL("t.") + sql.Identifier(column.name)
    if catalog is not None and column.type_oid in catalog:
        return build_json_value(ident, column.type_oid, catalog)
    if column.is_bytea:
        return _base64(ident)
    if column.is_bytea_array:
        return _each_element(ident, _base64(sql.SQL("e0")), 0)
    return None


def build_json_value(value: sql.Composable, oid: int, catalog: Mapping[int, t.TypeInfo], depth: int = 0) -> sql.Composable | None:
    """SQL for ``value`` (of type ``oid``) as ``row_to_json`` must see it under pgsource's contract.

    None when no bytea hides in the type (the value goes in as it is). Else: bytea → its
    base64 text; an array → the array of its converted elements (NULL stays NULL, empty
    stays ``[]``; multi-dimensional arrays come out flattened); a composite → the JSON
    object of its converted attributes, built by ``row_to_json`` too (same compact text),
    NULL for a NULL composite and ``{"a":null,...}`` for one whose attributes are all NULL,
    as ``row_to_json`` itself does.
    """
    info = catalog[oid]
    if info.category == t.BYTEA:
        return _base64(value)
    if info.category == t.ARRAY:
        element = sql.SQL(f"e{depth}")
        inner = build_json_value(element, info.element_oid, catalog, depth + 1)
        return None if inner is None else _each_element(value, inner, depth)
    if info.category == t.COMPOSITE:
        parts, changed = [], False
        for name, attribute_oid in info.attributes:
            field = sql.SQL("({}).{}").format(value, sql.Identifier(name))
            inner = build_json_value(field, attribute_oid, catalog, depth + 1)
            changed = changed or inner is not None
            parts.append(sql.SQL("{} AS {}").format(inner if inner is not None else field, sql.Identifier(name)))
        if not changed:
            return None
        return sql.SQL("CASE WHEN num_nulls({}) = 1 THEN NULL ELSE (SELECT row_to_json(r{}) FROM (SELECT {}) r{}) END").format(
            value, sql.SQL(str(depth)), sql.SQL(", ").join(parts), sql.SQL(str(depth))
        )
    return None


def _base64(value: sql.Composable) -> sql.Composable:
    return sql.SQL("translate(encode({}, 'base64'), E'\\n', '')").format(value)


def _each_element(array: sql.Composable, element: sql.Composable, depth: int) -> sql.Composable:
    """``element`` (an expression of ``e<depth>``) over every element of ``array``, in order.

    ``unnest`` in the select list, not in FROM: in FROM it would expand composite elements
    into their columns. Two set-returning functions in one select list run in lockstep.
    """
    e, n = sql.SQL(f"e{depth}"), sql.SQL(f"n{depth}")
    return sql.SQL(
        "CASE WHEN {array} IS NULL THEN NULL ELSE coalesce((SELECT array_agg({element} ORDER BY {n})"
        " FROM (SELECT unnest({array}) AS {e}, generate_series(1, cardinality({array})) AS {n}) u{d}), '{{}}') END"
    ).format(array=array, element=element, e=e, n=n, d=sql.SQL(str(depth)))


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


INTEGER_TYPES = ("smallint", "integer", "bigint")
XMIN = "xmin"  # a system column: no user column can take the name


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
    table = sql.Identifier(plan.schema, plan.table)
    selected = sql.SQL(", ").join(_column_text(c) for c in plan.select_columns)
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
    order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in plan.position_columns)
    snapshot = sql.SQL(", (SELECT pg_current_snapshot()::text)") if reading.snapshot else sql.SQL("")
    return sql.SQL("SELECT {}, {}{} FROM {} AS t WHERE {} ORDER BY {} LIMIT %(limit)s").format(
        selected, _row_json(plan), snapshot, table, sql.SQL(" AND ").join(conditions), order
    )


def build_table_definition() -> sql.SQL:
    """The columns of a table (``%s``: its oid) as ``name type,name type...`` in column order (types as
    ``format_type`` prints them, typmods included); a read
    that names the columns one by one compares it with ``table_definition`` of its plan's columns."""
    return sql.SQL(
        "SELECT coalesce(string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum), '')"
        " FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped"
    )


def table_definition(info: TableInfo) -> str:
    """What ``build_table_definition`` returns for the table described by ``info``."""
    return ",".join(f"{column.name} {column.type_sql}" for column in info.columns)


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


def build_rows_by_key(plan: PollPlan) -> sql.Composed:
    """The current version of some rows (by key, ``k0..`` arrays) up to the position ``u0..``, in position order.

    After an ack, the rows whose version changed meanwhile are read again this way and
    published, before their range counts as done.
    """
    table = sql.Identifier(plan.schema, plan.table)
    keys = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in plan.identity)
    arrays = sql.SQL(", ").join(sql.Placeholder(f"k{i}") + sql.SQL("::" + t + "[]") for i, t in enumerate(plan.identity_types))
    conditions = [sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(keys, arrays), _compare(plan, len(plan.position_columns), "<=", "u")]
    if plan.processed_column:
        conditions.append(sql.SQL("t.{} IS NOT TRUE").format(sql.Identifier(plan.processed_column)))
    if plan.row_filter:
        conditions.append(_row_filter(plan))
    order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in plan.position_columns)
    return sql.SQL("SELECT {}, {} FROM {} AS t WHERE {} ORDER BY {}").format(
        sql.SQL(", ").join(_column_text(c) for c in plan.select_columns), _row_json(plan), table,
        sql.SQL(" AND ").join(conditions), order)


_PLACEHOLDER = re.compile(r"'\$(offset|now_unix|now)'|\$(table|offset|limit|now_unix|now)\b|\$([12])(?!\d)")
_BOUND = {"1": "offset", "2": "limit", "offset": "offset", "limit": "limit", "now": "now", "now_unix": "now_unix"}


def build_custom_query(query: str, table: tuple[str, str] | None = None, conn=None) -> str:
    """The user's query as a psycopg2 query with named bound parameters.

    ``$1``/``$offset`` (also quoted, ``'$offset'``, as the Rust connector's queries write it),
    ``$2``/``$limit``, ``$now`` (the read's time, UTC) and ``$now_unix`` become bound
    parameters — never spliced text; ``$table`` becomes the table's quoted identifier.
    """
    escaped = query.replace("%", "%%")

    def placeholder(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name == "table":
            if table is None:
                raise ConfigError("source.custom_query: $table needs the table it runs for (list it in tables)")
            return sql.Identifier(*table).as_string(conn).replace("%", "%%")  # the query is run with bound values
        return f"%({_BOUND[name]})s"

    converted = _PLACEHOLDER.sub(placeholder, escaped)
    if re.search(r"\$\d", converted):
        raise ConfigError("source.custom_query: only $1 (last offset) and $2 (batch size) are bound")
    return converted


def build_custom_select(query: str, tracking_column: str) -> sql.Composed:
    """The user's (converted) query wrapped: the tracking value as text, the row's JSON, in tracking order.

    Ordered again outside, since a subquery's ORDER BY is not promised to survive the
    wrapping, and the last row's value becomes the next offset. The user's text is SQL by
    definition (never ``.format``-ed: its braces stay braces); the column is an identifier.
    """
    tracking = sql.Identifier(tracking_column)
    return (sql.SQL("SELECT q.{}::text, row_to_json(q)::text FROM (").format(tracking) + sql.SQL(query)
            + sql.SQL(") AS q ORDER BY q.{}").format(tracking))


def build_custom_probe(query: str) -> sql.Composed:
    """The user's (converted) query, no rows: what ``check`` runs to learn its columns."""
    return sql.SQL("SELECT * FROM (") + sql.SQL(query) + sql.SQL(") AS q LIMIT 0")
