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

CTID = "ctid"


@dataclass(frozen=True)
class PollPlan:
    """How one table is read: its cursor columns (tracking first) and how a row is selected."""

    schema: str
    table: str
    cursor_columns: tuple[str, ...]  # tracking column, then tie-breakers
    cursor_types: tuple[str, ...]
    identity: tuple[str, ...]  # the row's key (for ids, partitions, delete/mark); () = none
    identity_types: tuple[str, ...]
    select_columns: tuple[str, ...]  # cursor columns + identity columns not among them
    json_columns: tuple[tuple[str, str, sql.Composable | None], ...]  # (column, key, value SQL or None = as is)
    processed_column: str | None = None

    @property
    def tracking_column(self) -> str:
        return self.cursor_columns[0]

    @property
    def key_columns(self) -> tuple[str, ...]:
        """What identifies a row for its message id and partition."""
        return self.identity or self.cursor_columns


def build_poll_plan(
    info: TableInfo,
    tracking_column: str,
    *,
    snake_case: bool = False,
    allow_non_unique: bool = False,
    processed_column: str | None = None,
    need_identity: bool = False,
    catalog: Mapping[int, t.TypeInfo] | None = None,
) -> PollPlan:
    """Check the table against the settings and decide the cursor; errors name table and column.

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
    if need_identity and not info.identity:
        raise PrerequisiteError(f"table {where}: delete_after_read/processed_column need a primary key or a unique NOT NULL key")
    if info.is_unique((tracking_column,)) and tracking.not_null:
        cursor: tuple[str, ...] = (tracking_column,)
    elif info.identity:
        cursor = (tracking_column, *[c for c in info.identity if c != tracking_column])
    elif allow_non_unique:
        cursor = (tracking_column, CTID)
    else:
        raise PrerequisiteError(
            f"table {where}: tracking_column {tracking_column!r} is not unique and the table has no primary key"
            " or unique NOT NULL key to break ties, so rows sharing a value could be lost at batch boundaries;"
            " add a key, or set source.allow_non_unique_tracking: true (ties broken by ctid, see README)"
        )
    types = {c.name: c.type_sql for c in info.columns} | {CTID: "tid"}
    names = [c.name for c in info.columns]
    keys = output_names(names, snake_case)
    json_columns = tuple(
        (c.name, key, _column_value(c, catalog)) for c, key in zip(info.columns, keys)
    )
    extra = tuple(c for c in info.identity if c not in cursor)
    return PollPlan(
        schema=info.schema,
        table=info.name,
        cursor_columns=cursor,
        cursor_types=tuple(types[c] for c in cursor),
        identity=info.identity,
        identity_types=tuple(types[c] for c in info.identity),
        select_columns=cursor + extra,
        json_columns=json_columns,
        processed_column=processed_column,
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
    plain = all(column == key and value is None for column, key, value in plan.json_columns)
    if plain:
        return sql.SQL("row_to_json(t)::text")
    parts = []
    for column, key, value in plan.json_columns:
        ident = sql.SQL("t.") + sql.Identifier(column)
        parts.append(sql.SQL("{} AS {}").format(value if value is not None else ident, sql.Identifier(key)))
    return sql.SQL("(SELECT row_to_json(s) FROM (SELECT {}) s)::text").format(sql.SQL(", ").join(parts))


INTEGER_TYPES = ("smallint", "integer", "bigint")


def build_select_batch(plan: PollPlan, offset_width: int, bounds: tuple[bool, bool] = (False, False)) -> sql.Composed:
    """One batch after an offset of ``offset_width`` values (0 = from the start).

    ``bounds`` (has a lower, has an upper bound) restricts the tracking column to a
    chunk ``[lo, hi)``. Params: offset..., lo (if any), hi (if any), limit.
    """
    table = sql.Identifier(plan.schema, plan.table)
    selected = sql.SQL(", ").join(
        sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in plan.select_columns
    )
    conditions = []
    if offset_width:
        columns = plan.cursor_columns[:offset_width]
        types = plan.cursor_types[:offset_width]
        left = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns)
        right = sql.SQL(", ").join(sql.SQL("%s::" + t) for t in types)
        conditions.append(sql.SQL("({}) > ({})").format(left, right) if offset_width > 1 else sql.SQL("{} > {}").format(left, right))
    conditions.append(sql.SQL("t.{} IS NOT NULL").format(sql.Identifier(plan.tracking_column)))
    for present, operator in zip(bounds, (">=", "<")):
        if present:
            conditions.append(sql.SQL("t.{} " + operator + " %s::" + plan.cursor_types[0]).format(sql.Identifier(plan.tracking_column)))
    if plan.processed_column:
        conditions.append(sql.SQL("t.{} IS NOT TRUE").format(sql.Identifier(plan.processed_column)))
    order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in plan.cursor_columns)
    return sql.SQL("SELECT {}, {} FROM {} AS t WHERE {} ORDER BY {} LIMIT %s").format(
        selected, _row_json(plan), table, sql.SQL(" AND ").join(conditions), order
    )


def build_key_bounds(plan: PollPlan) -> sql.Composed:
    """``min`` and ``max`` of the tracking column: where a bulk load is cut into chunks."""
    column = sql.Identifier(plan.tracking_column)
    return sql.SQL("SELECT min({0})::text, max({0})::text FROM {1}").format(column, sql.Identifier(plan.schema, plan.table))


def build_acknowledged_rows(plan: PollPlan, action: str) -> sql.Composed:
    """DELETE or mark the rows of an acknowledged batch; params: one array per identity column."""
    table = sql.Identifier(plan.schema, plan.table)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in plan.identity)
    arrays = sql.SQL(", ").join(sql.SQL("%s::" + t + "[]") for t in plan.identity_types)
    match = sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(columns, arrays)
    if action == "delete":
        return sql.SQL("DELETE FROM {} WHERE {}").format(table, match)
    return sql.SQL("UPDATE {} SET {} = true WHERE {}").format(table, sql.Identifier(plan.processed_column), match)


_PLACEHOLDER = re.compile(r"\$([12])(?!\d)")


def build_custom_query(query: str) -> str:
    """The user's ``$1``/``$2`` query as a psycopg2 query with named bound parameters."""
    escaped = query.replace("%", "%%")
    converted = _PLACEHOLDER.sub(lambda m: "%(offset)s" if m.group(1) == "1" else "%(limit)s", escaped)
    if re.search(r"\$\d", converted):
        raise ConfigError("source.custom_query: only $1 (last offset) and $2 (batch size) are bound")
    return converted
