"""``PollPlan``: how one table is read, decided once against the catalog (``build_poll_plan``).

A poll reads one batch in keyset order: ``WHERE (tracking, key...) > (offset...) ORDER BY
tracking, key... LIMIT n``, so rows that share a tracking value are neither skipped nor
repeated at a batch boundary. The plan says which columns make that position (the
tracking column, then tie-breakers), which identify a row (ids, partitions, delete/mark),
and how each column goes into the row's JSON (``pgsource/pg/json_values.py``). Errors name
the table and the column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from psycopg2 import sql

from pgsource.encode.names import output_names
from pgsource.errors import PrerequisiteError
from pgsource.pg import types as t
from pgsource.pg.catalog import TableInfo
from pgsource.pg.json_values import column_value

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


INTEGER_TYPES = ("smallint", "integer", "bigint")
XMIN = "xmin"  # a system column: no user column can take the name




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
    _check_columns(info, tracking_column, processed_column, [*(columns or ()), *exclude_columns], payload)
    identity = _identity(info, primary_key_column, need_identity)
    position = _position(info, tracking_column, identity, allow_non_unique)
    types = {c.name: c.type_sql for c in info.columns} | {CTID: "tid"}
    kept = [c for c in info.columns if (columns is None or c.name in columns) and c.name not in exclude_columns]
    keys = output_names([c.name for c in kept], snake_case)
    json_columns = tuple((c.name, key, column_value(c, catalog)) for c, key in zip(kept, keys))
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


def _check_columns(info: TableInfo, tracking_column: str, processed_column: str | None, listed: list[str],
                   payload: tuple[str, str] | None) -> None:
    """Every column the settings name exists and can do its job."""
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
    for name in listed:
        if info.column(name) is None:
            raise PrerequisiteError(f"table {where}: column {name!r} (in columns/exclude_columns) does not exist")
    if payload is not None:
        check_payload(info, *payload)


def _identity(info: TableInfo, primary_key_column: str | None, need_identity: bool) -> tuple[str, ...]:
    """What identifies a row: the table's key, or ``primary_key_column`` when it is set."""
    identity = info.identity
    if primary_key_column is not None:
        key = info.column(primary_key_column)
        if key is None:
            raise PrerequisiteError(f"table {info.qualified}: primary_key_column {primary_key_column!r} does not exist")
        if not (key.not_null and info.is_unique((primary_key_column,))):
            raise PrerequisiteError(
                f"table {info.qualified}: primary_key_column {primary_key_column!r} must be NOT NULL and unique on its own"
                " (delete/mark act on the rows it names)"
            )
        identity = (primary_key_column,)
    if need_identity and not identity:
        raise PrerequisiteError(f"table {info.qualified}: delete_after_read/processed_column need a primary key or a unique NOT NULL key")
    return identity


def _position(info: TableInfo, tracking_column: str, identity: tuple[str, ...], allow_non_unique: bool) -> tuple[str, ...]:
    """The position columns: the tracking column, then what breaks its ties."""
    if info.is_unique((tracking_column,)) and info.column(tracking_column).not_null:
        return (tracking_column,)
    if identity:
        return (tracking_column, *[c for c in identity if c != tracking_column])
    if allow_non_unique:
        return (tracking_column, CTID)
    raise PrerequisiteError(
        f"table {info.qualified}: tracking_column {tracking_column!r} is not unique and the table has no primary key"
        " or unique NOT NULL key to break ties, so rows sharing a value could be lost at batch boundaries;"
        " add a key, or set source.allow_non_unique_tracking: true (ties broken by ctid, see docs/delivery.md)"
    )


PAYLOAD_TYPES = {
    "bytea": ("bytea",),
    "text": ("text", "character varying", "character", "name", "citext"),
    "json_direct": ("json", "jsonb"),
}


def check_payload(info: TableInfo, column: str, payload_format: str) -> None:
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


