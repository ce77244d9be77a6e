"""Per-relation compiled row decoders: pgoutput TupleData bytes straight to the row's JSON.

``values.decode_tuple_json`` needs a tuple of ``str`` (one ``bytes.decode`` per value)
and then calls one converter per column. For the hot path of CDC, ``compile_row_json``
generates, once per Relation, one Python function that walks the TupleData of that
relation and builds the JSON object in a single f-string: the keys are constants, the
common categories are converted inline (integers and json copied, numerics checked for
NaN/Infinity, text escaped by the C escaper, bool, date, uuid, timestamp[tz] rewritten
by slicing), everything else calls the column's ``ValueDecoder``.

Two variants come from the same source:

- ``latin1``: the values are slices of the *whole message decoded as latin-1*, so a
  slice costs no ``decode``. It is right only when every value is ASCII; the caller
  checks the result with ``str.isascii()`` (O(1) in CPython) and otherwise takes
- ``utf8``: each value is ``bytes.decode()``d, as pgoutput's text is UTF-8.

A row function returns ``prefix + row JSON + suffix`` (the caller's envelope parts), or
``None`` when the row is not a plain one: a column count that differs from the relation,
an unchanged-TOAST (``'u'``) or binary value, or a tuple that does not end where the
message ends. The caller then uses the general decoder, which gives the exact error or
the marker. A converter that raises means the same: fall back, and let the general
decoder raise its precise ``SourceError``. Output is identical to ``decode_tuple_json``
for every input the functions accept (tested against it and against ``row_to_json``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence

from pgsource.decode.containers import encode_string
from pgsource.decode.values import _timestamp, _timestamptz, compile_value_decoder
from pgsource.pg import types as t
from pgsource.pg.types import TypeInfo

__all__ = ["RowJson", "compile_row_json"]

# (message bytes, the same decoded as latin-1 or None, start of TupleData, message end, prefix, suffix)
RowJson = Callable[[bytes, str, int, int, str, str], "str | None"]

_INTEGERS = {20, 21, 23}
_UUID = 2950
_BOOL = {"t": "true", "f": "false"}

# One expression per category; ``v`` is the value text, ``a``/``e`` its bounds in the buffers.
_INLINE = {
    "int": "v",
    t.JSON: "v",
    t.JSONB: "v",
    t.NUMBER: "v if v[-1] <= '9' else '\"' + v + '\"'",  # NaN, Infinity, -Infinity end in a letter
    t.BOOL: "BOOL[v]",
    t.DATE: "'\"' + v + '\"'",
    "uuid": "'\"' + v + '\"'",
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


def _source(kinds: Sequence[str], variant: str) -> str:
    count = len(kinds)
    lines = [
        "def row(b, s, p, end, P, S):",
        f"    if b[p] != {count >> 8} or b[p + 1] != {count & 0xFF}:",
        "        return None",
        "    p += 2",
        "    try:",
    ]
    for index, kind in enumerate(kinds):
        expression = f"D{index}(v)" if kind == "call" else _INLINE[kind]
        lines += [
            "        k = b[p]",
            "        if k == 116:",
            "            a = p + 5",
            "            e = a + I32(b, p + 1)[0]",
            f"            v = {_VALUE[variant]}",
            f"            j{index} = {expression}",
            "            p = e",
            "        elif k == 110:",
            f"            j{index} = 'null'",
            "            p += 1",
            "        else:",
            "            return None",
        ]
    lines += ["    except Exception:", "        return None", "    if p != end:", "        return None"]
    parts = "".join(f"{{K{i}}}{{j{i}}}" for i in range(count))
    lines.append(f"    return f'{{P}}{parts}{{KE}}{{S}}'" if count else "    return P + '{}' + S")
    return "\n".join(lines) + "\n"


def compile_row_json(
    columns: Sequence[tuple[str, int]], catalog: Mapping[int, TypeInfo], keys: Sequence[str] | None = None
) -> dict[str, RowJson]:
    """The ``latin1`` and ``utf8`` row functions of a relation's (name, type oid) columns.

    Raises as ``compile_value_decoder`` does when a type is unknown (the caller compiles
    ``values.compile_columns`` first, which reports that with the table and column).
    """
    keys = [name for name, _ in columns] if keys is None else list(keys)
    kinds = [_kind(catalog[oid]) for _, oid in columns]
    namespace: dict = {
        "I32": struct.Struct("!I").unpack_from,
        "BOOL": _BOOL,
        "esc": encode_string,
        "TS": _timestamp,
        "TSTZ": _timestamptz,
        "KE": "}" if columns else "",
    }
    for index, ((_, oid), key) in enumerate(zip(columns, keys, strict=True)):
        namespace[f"K{index}"] = ("{" if index == 0 else ",") + encode_string(key) + ":"
        if kinds[index] == "call":
            namespace[f"D{index}"] = compile_value_decoder(oid, catalog)
    functions = {}
    for variant in _VALUE:
        scope = dict(namespace)
        exec(compile(_source(kinds, variant), f"<row_json {variant}>", "exec"), scope)  # noqa: S102 - our own source
        functions[variant] = scope["row"]
    return functions
