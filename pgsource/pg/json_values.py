"""``build_json_value``: each column as ``row_to_json`` must see it, so that polling sends what CDC sends.

PostgreSQL builds each polled row's JSON (``row_to_json``). bytea is turned into base64
first wherever it sits (a column, a domain, array elements, attributes of composites, any
depth), as the CDC decoder does (``pgsource/decode/values.py``); a column that needs no
conversion goes in as it is.
"""

from __future__ import annotations

from collections.abc import Mapping

from psycopg2 import sql

from pgsource.pg import types as t


def column_value(column, catalog: Mapping[int, t.TypeInfo] | None) -> sql.Composable | None:
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


