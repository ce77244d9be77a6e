"""Turn pgoutput column text into the JSON ``row_to_json`` would produce for the row.

Polling builds each row's JSON inside PostgreSQL with ``row_to_json`` (session
``TimeZone=UTC``, ``DateStyle=ISO``, ``IntervalStyle=postgres``, ``extra_float_digits=1``),
bytea replaced by its base64. CDC gets the same columns as text output and must emit
the same JSON text; this module does that without a database round trip. The text is
produced in the decoding session, so that session needs the same settings (over the
streaming protocol: the startup ``options='-c TimeZone=UTC -c DateStyle=ISO ...'``).

Per JSON category of the column's type (``pgsource.pg.types``), matching PostgreSQL's
``datum_to_json``:

- int2/int4/int8: the text as a JSON number. numeric, float4, float8: the text as a
  JSON number (every digit kept, never through a float), except ``NaN``, ``Infinity``
  and ``-Infinity``, which become JSON strings, as ``to_json`` does.
- bool: ``true``/``false``. json, jsonb: the text embedded as is.
- date: a JSON string of the text (ISO equals the XSD form ``to_json`` uses).
  timestamp/timestamptz: the ISO text rewritten to XSD form, ``T`` between date and time,
  the offset as ``+HH:MM`` (``2024-01-15T08:30:00.123456+00:00``); ``infinity`` and
  `` BC`` kept as ``to_json`` prints them. Other DateStyles are refused, not guessed.
- bytea: standard base64 with padding, no newlines (the pgsource contract; ``to_json``
  would give the ``\\x`` hex text). Applies to bytea elements of arrays and composites too.
- arrays: JSON arrays, nested for multi-dimensional ones, bounds dropped, NULL elements
  ``null``, each element converted by its own type. int2vector/oidvector likewise.
- composites: a JSON object of the live attributes, each converted by its own type.
- oid and everything else (text, time, interval, uuid, enum, inet, money, ranges...):
  a JSON string of the text output. Note: ``to_json`` gives oid as a string, not a number.
- domains: as their base type. NULL: ``null``.
- user-defined types with a function cast to json: ``to_json`` calls the cast. hstore's
  (``hstore_to_json``) is reproduced: ``{"k": "v", "n": null}``, its own spacing. Any
  other cast cannot be run without the database: such a type is sent as a JSON string of
  its text, which differs from polling (a known, documented gap).

An unchanged TOASTed column of an UPDATE (pgoutput kind ``'u'``) has no value in the
change: it is emitted as the JSON string ``UNCHANGED_TOAST``
(``"__pgsource_unchanged_toast__"``), never as null, so consumers can tell "not sent"
from NULL and merge with the row they already have.

For polling to agree, its SELECT base64s every bytea it sends, not only top-level bytea
columns (``pgsource.pg.json_values.build_json_value``): bytea[] elements, domains over bytea and
bytea attributes of composites would come out of ``row_to_json`` as ``\\x`` hex text.

Speed: ``compile_columns`` picks one small function per column once per Relation;
``decode_tuple_json`` then only calls them and joins strings.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pgsource.decode.containers import (
    ValueDecoder,
    array_decoder,
    composite_decoder,
    decode_hstore,
    encode_string,
    vector_decoder,
)
from pgsource.decode.pgoutput import UNCHANGED, Relation, TupleValue
from pgsource.errors import SourceError
from pgsource.pg import types as t
from pgsource.pg.types import TypeInfo

__all__ = [
    "UNCHANGED_TOAST",
    "ColumnDecoder",
    "compile_columns",
    "compile_relation",
    "compile_value_decoder",
    "decode_tuple_json",
    "encode_string",
]

UNCHANGED_TOAST = "__pgsource_unchanged_toast__"
_UNCHANGED_JSON = encode_string(UNCHANGED_TOAST)


@dataclass(frozen=True, slots=True)
class ColumnDecoder:
    """One column of a relation: its output key, already JSON-escaped, and its converter."""

    table: str
    column: str  # the name PostgreSQL sends
    key: str  # the output key (maybe snake_cased by the caller)
    type_name: str
    key_json: str  # '"key":'
    decode: ValueDecoder


# ---------------------------------------------------------------- scalar converters


def _identity(text: str) -> str:
    return text


def _number(text: str) -> str:
    # NaN, Infinity, -Infinity are the only outputs not ending in a digit.
    return text if "0" <= text[-1] <= "9" else '"' + text + '"'


_BOOL = {"t": "true", "f": "false"}.__getitem__


def _quoted_plain(text: str) -> str:
    """For outputs that never hold a character JSON must escape (date)."""
    return '"' + text + '"'


_TIMESTAMP = re.compile(r"\d{4,}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?(?: BC)?").fullmatch
_TIMESTAMPTZ = re.compile(
    r"(\d{4,}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d{1,6})?)([+-]\d\d)(:\d\d(?::\d\d)?)?( BC)?"
).fullmatch


def _timestamp(text: str) -> str:
    if len(text) > 18 and text[4] == "-" and text[10] == " " and text[13] == ":" and text[-1] != "C":
        return '"' + text[:10] + "T" + text[11:] + '"'  # the common case, without the regex
    if _TIMESTAMP(text):
        return '"' + text.replace(" ", "T", 1) + '"'
    if text == "infinity" or text == "-infinity":
        return '"' + text + '"'
    raise ValueError("not an ISO timestamp (DateStyle must be ISO)")


def _timestamptz(text: str) -> str:
    if len(text) > 21 and text[4] == "-" and text[10] == " " and text[13] == ":" and text[-3] in "+-":
        return '"' + text[:10] + "T" + text[11:] + ':00"'  # "+HH" offset, 4-digit year, AD
    match = _TIMESTAMPTZ(text)
    if match:
        date, time, hours, rest, era = match.groups()
        return f'"{date}T{time}{hours}{rest or ":00"}{era or ""}"'
    if text == "infinity" or text == "-infinity":
        return '"' + text + '"'
    raise ValueError("not an ISO timestamptz (DateStyle must be ISO)")


_BYTEA_ESCAPE = re.compile(rb"\\(\\|[0-3][0-7][0-7])")


def _bytea_unescape(match: re.Match) -> bytes:
    code = match.group(1)
    return b"\\" if code == b"\\" else bytes((int(code, 8),))


def _bytea(text: str) -> str:
    if text.startswith("\\x"):
        data = binascii.a2b_hex(text[2:])
    else:  # bytea_output = escape
        data = _BYTEA_ESCAPE.sub(_bytea_unescape, text.encode("ascii"))
    return '"' + binascii.b2a_base64(data, newline=False).decode("ascii") + '"'


# ---------------------------------------------------------------- compilation

_SCALARS: dict[str, ValueDecoder] = {
    t.NUMBER: _number,
    t.BOOL: _BOOL,
    t.DATE: _quoted_plain,
    t.TIMESTAMP: _timestamp,
    t.TIMESTAMPTZ: _timestamptz,
    t.JSON: _identity,
    t.JSONB: _identity,
    t.BYTEA: _bytea,
    t.OTHER: encode_string,
}
_INTEGERS = {20, 21, 23}


def compile_value_decoder(type_oid: int, catalog: Mapping[int, TypeInfo], _depth: int = 0) -> ValueDecoder:
    """The text -> JSON converter for one type; ``catalog`` must hold what it reaches."""
    info = catalog.get(type_oid)
    if info is None:
        raise KeyError(f"type oid {type_oid} is not in the type catalog")
    if _depth > 64:
        raise ValueError(f"type {info.name} nests too deeply")
    category = info.category
    if info.base_oid in _INTEGERS:
        return _identity
    scalar = _SCALARS.get(category)
    if scalar is not None:
        return scalar
    if category == t.CAST and info.json_cast == "hstore_to_json":
        return decode_hstore
    if category == t.ARRAY:
        return array_decoder(compile_value_decoder(info.element_oid, catalog, _depth + 1), info.delimiter)
    if category == t.VECTOR:
        return vector_decoder(compile_value_decoder(info.element_oid, catalog, _depth + 1))
    if category == t.COMPOSITE:
        return composite_decoder(
            [encode_string(name) + ":" for name, _ in info.attributes],
            [compile_value_decoder(oid, catalog, _depth + 1) for _, oid in info.attributes],
        )
    if category == t.CAST:
        return encode_string  # documented gap: the cast to json cannot run here
    raise ValueError(f"type {info.name} has unknown JSON category {category!r}")


def compile_columns(
    table: str,
    columns: Sequence[tuple[str, int]],
    catalog: Mapping[int, TypeInfo],
    keys: Sequence[str] | None = None,
) -> list[ColumnDecoder]:
    """Build the decoders of a relation's columns, given as (name, type oid), once.

    ``keys`` are the output names (for snake_case); by default the column names.
    """
    keys = [name for name, _ in columns] if keys is None else list(keys)
    if len(keys) != len(columns):
        raise SourceError(f"table {table}: {len(keys)} output keys for {len(columns)} columns")
    compiled = []
    for (name, oid), key in zip(columns, keys, strict=True):
        try:
            decoder = compile_value_decoder(oid, catalog)
        except (KeyError, ValueError) as exc:
            raise SourceError(f"table {table}, column {name}: {exc.args[0]}") from None
        compiled.append(ColumnDecoder(table, name, key, catalog[oid].name, encode_string(key) + ":", decoder))
    return compiled


def compile_relation(
    relation: Relation, catalog: Mapping[int, TypeInfo], keys: Sequence[str] | None = None
) -> list[ColumnDecoder]:
    """``compile_columns`` for a pgoutput Relation message."""
    namespace = relation.namespace or "pg_catalog"  # the protocol sends "" for pg_catalog
    table = relation.name if namespace == "public" else f"{namespace}.{relation.name}"
    return compile_columns(table, [(c.name, c.type_oid) for c in relation.columns], catalog, keys)


def decode_tuple_json(columns: Sequence[ColumnDecoder], values: Sequence[TupleValue]) -> str:
    """The JSON object text of one tuple, keys in column order, like ``row_to_json``."""
    if len(values) != len(columns):
        table = columns[0].table if columns else "?"
        raise SourceError(
            f"table {table}: tuple has {len(values)} values, relation has {len(columns)} columns"
        )
    try:
        return (
            "{"
            + ",".join(
                [
                    c.key_json + ("null" if v is None else _UNCHANGED_JSON if v is UNCHANGED else c.decode(v))
                    for c, v in zip(columns, values, strict=True)
                ]
            )
            + "}"
        )
    except Exception:
        _raise_for_bad_value(columns, values)
        raise


def _raise_for_bad_value(columns: Sequence[ColumnDecoder], values: Sequence[TupleValue]) -> None:
    """Find the value that failed and say which table, column and type it belongs to."""
    for column, value in zip(columns, values, strict=True):
        if value is None or value is UNCHANGED:
            continue
        try:
            column.decode(value)
        except Exception as exc:
            shown = value if len(value) <= 80 else value[:80] + "..."
            raise SourceError(
                f"table {column.table}, column {column.column} (type {column.type_name}):"
                f" cannot convert {shown!r} to JSON: {exc}"
            ) from None
