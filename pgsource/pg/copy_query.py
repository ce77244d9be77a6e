"""``build_*``: polling's reads as ``COPY (SELECT ...) TO STDOUT``, and what each field of a line holds.

The row path has PostgreSQL build each row's JSON (``row_to_json``, ~half of COPY's own speed)
and psycopg2 make Python objects per row. The COPY path selects the columns themselves and
lets ``pgsource/rows/copyjson.py`` write the JSON from their text output, as the CDC decoder
does from pgoutput's. ``CopyLayout`` says which field is what; the WHERE and ORDER BY are
``build_batch_query``'s, so both paths read exactly the same rows.

Where the decoder cannot write what ``row_to_json`` would, PostgreSQL still builds that one
column's JSON (``to_json(...)::text``, embedded as it is): bytea nested in arrays or composites
(``build_json_value``: polling flattens multi-dimensional ones) and user types with a cast to
json (``row_to_json`` calls the cast). A plain bytea column is base64-ed by the decoder.

A COPY names its columns one by one, so a column added later would be missed: each batch
statement carries the table's column definition as the plan knew it, and returns no row once
it differs (``_same_definition``); the reader then checks the definition and raises
``TableChanged``. A dropped or renamed column fails the statement, as in the row path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from psycopg2 import sql

from pgsource.pg import types as t
from pgsource.pg.custom_query import build_custom_select
from pgsource.pg.plan import XMIN, PollPlan
from pgsource.pg.select import Reading, build_batch_query, build_rows_by_key

INTEGERS = (20, 21, 23)  # int8, int2, int4: their ::text is their output text, so a data field serves as position


@dataclass(frozen=True)
class CopyLayout:
    """The fields of one COPY line, by role (indexes into ``select``)."""

    select: tuple[sql.Composable, ...]  # the SELECT list, one expression per field
    positions: tuple[int, ...]  # the position columns (tracking first): the offset after a row
    keys: tuple[int, ...]  # what picks the partition and names a row in errors (identity, else position)
    ids: tuple[int, ...]  # what the message id hashes: positions (+ xmin when versioned); custom: tracking, JSON
    identities: tuple[int, ...] | None  # identity columns + xmin, when delete/mark act on the rows
    data: tuple[tuple[int, str, int | None], ...]  # (field, key, type oid; None: PostgreSQL wrote the JSON)
    body: str  # "object" (data), "json" (custom_query), "text", "bytea", "compact" (payload_column)
    body_field: int | None = None

    @property
    def fields(self) -> int:
        return len(self.select)


def build_copy_layout(plan: PollPlan, column_types: Mapping[str, int], catalog: Mapping[int, t.TypeInfo]) -> CopyLayout:
    """The layout of a table's COPY reads: its data columns, then the position/identity text not among them."""
    select: list[sql.Composable] = []
    by_column: dict[str, int] = {}  # columns whose data field is also their ::text
    data = []
    body, body_field = "object", None
    if plan.payload is not None:
        column, payload_format = plan.payload
        body = {"bytea": "bytea", "text": "text"}.get(payload_format, "compact")
        body_field = 0
        ident = sql.SQL("t.") + sql.Identifier(column)
        select.append(ident if body == "bytea" else ident + sql.SQL("::text"))
    else:
        for column, key, value in plan.json_columns:
            ident = sql.SQL("t.") + sql.Identifier(column)
            oid = column_types[column]
            info = catalog[oid]
            if info.category == t.BYTEA:
                select.append(ident)  # the decoder base64s it
            elif value is not None or info.category == t.CAST:
                select.append(sql.SQL("to_json({})::text").format(value if value is not None else ident))
                oid = None
            else:
                select.append(ident)
                if info.base_oid in INTEGERS:
                    by_column[column] = len(select) - 1
            data.append((len(select) - 1, key, oid))

    def field(column: str) -> int:
        if column not in by_column:
            by_column[column] = len(select)
            select.append(sql.SQL("t.{}::text").format(sql.Identifier(column)))
        return by_column[column]

    positions = tuple(field(c) for c in plan.position_columns)
    keys = tuple(field(c) for c in plan.key_columns)
    ids = positions + ((field(XMIN),) if plan.versioned else ())
    identities = tuple(field(c) for c in (*plan.identity, XMIN)) if plan.versioned else None
    return CopyLayout(tuple(select), positions, keys, ids, identities, tuple(data), body, body_field)


CUSTOM_LAYOUT = CopyLayout((), positions=(0,), keys=(0,), ids=(0, 1), identities=None, data=(), body="json",
                           body_field=1)
CUSTOM_FIELDS = 2  # build_custom_select: the tracking value as text, row_to_json(q)::text


def _copy(select: sql.Composable) -> sql.Composed:
    return sql.SQL("COPY ({}) TO STDOUT").format(select)


def _same_definition() -> sql.Composable:
    """True while the table's columns are those of the plan (params ``relation``, ``definition``:
    ``select.table_definition``); an InitPlan, evaluated once per statement."""
    return sql.SQL(
        "(SELECT coalesce(string_agg(a.attname || ' ' || a.atttypid::text, ',' ORDER BY a.attnum), '')"
        " FROM pg_attribute a WHERE a.attrelid = %(relation)s AND a.attnum > 0 AND NOT a.attisdropped)"
        " = %(definition)s"
    )


def build_copy_batch(plan: PollPlan, layout: CopyLayout, reading: Reading) -> sql.Composed:
    """``build_select_batch`` as a COPY of ``layout``'s fields (then the snapshot when the reading asks).

    Params: those of ``build_select_batch``, plus ``relation`` (the table's oid) and ``definition``.
    """
    return _copy(build_batch_query(plan, reading, sql.SQL(", ").join(layout.select), _same_definition()))


def build_copy_rows_by_key(plan: PollPlan, layout: CopyLayout) -> sql.Composed:
    """``build_rows_by_key`` as a COPY of ``layout``'s fields."""
    return _copy(build_rows_by_key(plan, sql.SQL(", ").join(layout.select)))


def build_copy_custom(query: str, tracking_column: str) -> sql.Composed:
    """The wrapped custom_query (``build_custom_select``) as a COPY: PostgreSQL still writes its JSON."""
    return _copy(build_custom_select(query, tracking_column))
