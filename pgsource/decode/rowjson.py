"""Per-relation compiled row decoders: pgoutput TupleData bytes straight to the payload bytes.

``values.decode_tuple_json`` needs a tuple of ``str`` (one ``bytes.decode`` per value)
and then calls one converter per column. For the hot path of CDC, ``compile_row_json``
builds, once per Relation, one row function that walks the TupleData of that relation
and returns ``prefix + row JSON + suffix`` as UTF-8 ``bytes``: the keys are constants, the
common categories are converted inline (integers and json copied, numerics checked for
NaN/Infinity, text JSON-escaped, bool, date, uuid, timestamp[tz] rewritten by slicing),
everything else calls the column's ``ValueDecoder``.

Two implementations, byte-identical (tested against each other, ``decode_tuple_json`` and
``row_to_json``):

- ``compile_plan``: the C extension ``pgsource.decode._rowjson`` (a ``Plan`` per relation),
  used when it was built (``NATIVE``): ~10x faster.
- ``compile_python``: the pure-Python twin. It generates the source of one function per
  relation that walks the tuple up to twice: first slicing the values from the *whole
  message decoded as latin-1* (no ``decode`` per value), which is right only when every
  value is ASCII, so that result is kept only if ``str.isascii()`` (O(1) in CPython);
  else ``bytes.decode()``-ing each value, as pgoutput's text is UTF-8.

A row function is called as ``row(message, text, start, end, prefix, suffix)``: ``text`` is
the message decoded as latin-1 or ``None`` (only the Python twin uses it), ``start:end``
the TupleData, ``prefix``/``suffix`` the caller's envelope parts (bytes). It returns
``None`` when the row is not a plain one: a column count that differs from the relation,
an unchanged-TOAST (``'u'``) or binary value, a tuple that does not end at ``end``, text
that is not UTF-8. The caller then uses the general decoder, which gives the exact error
or the marker. A converter that raises means the same: fall back, and let the general
decoder raise its precise ``SourceError``. ``start``/``end`` outside the message are the
caller's bug: ``ValueError``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping, Sequence

from pgsource.decode.containers import encode_string
from pgsource.decode.values import _timestamp, _timestamptz, compile_value_decoder
from pgsource.pg import types as t
from pgsource.pg.types import TypeInfo

try:
    from pgsource.decode._rowjson import Plan
except ImportError:  # not built (no compiler or headers): the Python twin does the same work
    Plan = None

__all__ = ["NATIVE", "RowJson", "compile_plan", "compile_python", "compile_row_json"]

NATIVE = Plan is not None

# (message bytes, the same decoded as latin-1 or None, start of TupleData, its end, prefix, suffix)
RowJson = Callable[[bytes, "str | None", int, int, bytes, bytes], "bytes | None"]

_INTEGERS = {20, 21, 23}
_UUID = 2950
_BOOL = {"t": "true", "f": "false"}

# One expression per category; ``v`` is the value text, ``a``/``e`` its bounds in the buffers.
_INLINE = {
    "int": "v",
    t.JSON: "v",
    t.JSONB: "v",
    t.NUMBER: "v if '0' <= v[-1] <= '9' else '\"' + v + '\"'",  # NaN, Infinity, -Infinity end in a letter
    t.BOOL: "BOOL[v]",
    t.DATE: "Q(v)",  # '"' + v + '"'; text PostgreSQL never sends for them is left to the general decoder
    "uuid": "Q(v)",
    t.OTHER: "esc(v)",
    t.TIMESTAMPTZ: (
        "'\"' + v[:10] + 'T' + v[11:] + ':00\"' if len(v) > 21 and v[4] == '-' and v[10] == ' '"
        " and v[13] == ':' and v[-3] in '+-' else TSTZ(v)"
    ),
    t.TIMESTAMP: (
        "'\"' + v[:10] + 'T' + v[11:] + '\"' if len(v) > 18 and v[4] == '-' and v[10] == ' '"
        " and v[13] == ':' and v[-1] != 'C' else TS(v)"
    ),
}

_VALUE = {"latin1": "s[a:e]", "utf8": "b[a:e].decode()"}


_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]').search


def _plain_quoted(text: str) -> str:
    """date and uuid text as a JSON string; one that would need escaping is not a plain row (as in C)."""
    if _NEEDS_ESCAPE(text):
        raise ValueError("date or uuid text with characters PostgreSQL never prints there")
    return '"' + text + '"'


def _kind(info: TypeInfo) -> str:
    if info.base_oid in _INTEGERS:
        return "int"
    if info.base_oid == _UUID:
        return "uuid"
    if info.category in _INLINE and info.category != t.OTHER:
        return info.category
    if info.category == t.OTHER:
        return t.OTHER
    return "call"


def _walk(kinds: Sequence[str], variant: str) -> list[str]:
    """Lines that read the TupleData from ``p`` into ``j0``, ``j1``...; structural misfits return None."""
    count = len(kinds)
    lines = [
        f"if b[p] != {count >> 8} or b[p + 1] != {count & 0xFF}:",
        "    return None",
        "p += 2",
    ]
    for index, kind in enumerate(kinds):
        expression = f"D{index}(v)" if kind == "call" else _INLINE[kind]
        lines += [
            "k = b[p]",
            "if k == 116:",
            "    a = p + 5",
            "    e = a + I32(b, p + 1)[0]",
            f"    v = {_VALUE[variant]}",
            f"    j{index} = {expression}",
            "    p = e",
            "elif k == 110:",
            f"    j{index} = 'null'",
            "    p += 1",
            "else:",
            "    return None",
        ]
    return lines


def _source(kinds: Sequence[str]) -> str:
    """One function, two walks: latin-1 slices first (kept only if all ASCII), else UTF-8."""
    count = len(kinds)
    join = "j = f'" + "".join(f"{{K{i}}}{{j{i}}}" for i in range(count)) + "}}'" if count else "j = '{}'"
    lines = [
        "def row(b, s, start, end, P, S):",
        "    if not 0 <= start <= end <= len(b):",
        "        raise ValueError(f'start {start} and end {end} do not delimit a part of the message')",
        "    while s is not None:",
        "        p = start",
        "        try:",
        *("            " + line for line in _walk(kinds, "latin1")),
        "        except Exception:",
        "            break  # maybe a converter given latin-1 text it cannot take: the UTF-8 walk decides",
        "        if p != end:",
        "            return None",
        "        " + join,
        "        if not j.isascii():",
        "            break",
        "        return P + j.encode() + S",
        "    p = start",
        "    try:",
        *("        " + line for line in _walk(kinds, "utf8")),
        "    except Exception:",
        "        return None",
        "    if p != end:",
        "        return None",
        "    " + join,
        "    try:",
        "        return P + j.encode() + S",
        "    except UnicodeEncodeError:  # a converter's str with a lone surrogate: not a plain row either",
        "        return None",
    ]
    return "\n".join(lines) + "\n"


def _keys(columns: Sequence[tuple[str, int]], keys: Sequence[str] | None) -> list[str]:
    """What comes before each value: '{"name":' for the first column, ',"name":' after."""
    keys = [name for name, _ in columns] if keys is None else list(keys)
    if len(keys) != len(columns):
        raise ValueError(f"{len(keys)} output keys for {len(columns)} columns")
    return [("{" if index == 0 else ",") + encode_string(key) + ":" for index, key in enumerate(keys)]


def _converter(kind: str, oid: int, catalog: Mapping[int, TypeInfo]):
    """The Python converter a column needs beyond the inline rules, or None."""
    if kind == "call":
        return compile_value_decoder(oid, catalog)
    return {t.TIMESTAMP: _timestamp, t.TIMESTAMPTZ: _timestamptz}.get(kind)


def compile_python(
    columns: Sequence[tuple[str, int]], catalog: Mapping[int, TypeInfo], keys: Sequence[str] | None = None
) -> RowJson:
    """The pure-Python row function of a relation's (name, type oid) columns."""
    kinds = [_kind(catalog[oid]) for _, oid in columns]
    namespace: dict = {
        "I32": struct.Struct("!I").unpack_from,
        "BOOL": _BOOL,
        "esc": encode_string,
        "Q": _plain_quoted,
        "TS": _timestamp,
        "TSTZ": _timestamptz,
    }
    for index, ((_, oid), kind, key) in enumerate(zip(columns, kinds, _keys(columns, keys), strict=True)):
        namespace[f"K{index}"] = key
        if kind == "call":
            namespace[f"D{index}"] = _converter(kind, oid, catalog)
    exec(compile(_source(kinds), "<row_json>", "exec"), namespace)  # noqa: S102 - our own source
    return namespace["row"]


def compile_plan(
    columns: Sequence[tuple[str, int]], catalog: Mapping[int, TypeInfo], keys: Sequence[str] | None = None
) -> RowJson:
    """The C row function (a ``_rowjson.Plan``) of a relation; ``NATIVE`` says whether it exists."""
    if Plan is None:
        raise RuntimeError("pgsource.decode._rowjson is not built")
    kinds = [_kind(catalog[oid]) for _, oid in columns]
    return Plan([
        (kind, key.encode(), _converter(kind, oid, catalog))
        for (_, oid), kind, key in zip(columns, kinds, _keys(columns, keys), strict=True)
    ])


def compile_row_json(
    columns: Sequence[tuple[str, int]], catalog: Mapping[int, TypeInfo], keys: Sequence[str] | None = None
) -> RowJson:
    """The row function of a relation's (name, type oid) columns: C when built, else Python.

    Raises as ``compile_value_decoder`` does when a type is unknown (the caller compiles
    ``values.compile_columns`` first, which reports that with the table and column).
    """
    return (compile_plan if NATIVE else compile_python)(columns, catalog, keys)
