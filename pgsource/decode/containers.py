"""Parsers of PostgreSQL's container text formats, emitting JSON as ``to_json`` would.

array_out (``{a,"b c",NULL}``, ``[2:3]={1,2}``, ``{{1,2},{3,4}}``), record_out
(``(1,"x ""y"" z",)``), int2vector/oidvector (``1 2``) and hstore_out
(``"k"=>"v", "n"=>NULL``). Each builder takes the element converters and returns one
closure, so the per-value work is a parse and calls, no type dispatch. The texts are
trusted to come from the server's output functions; malformed ones raise ``ValueError``,
which the caller turns into a ``SourceError`` naming the column.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

try:  # the C escaper behind json.dumps(ensure_ascii=False): ~6x faster than ujson.dumps
    from json.encoder import c_encode_basestring as encode_string
except ImportError:  # pragma: no cover - CPython always has it
    from json.encoder import py_encode_basestring as encode_string

ValueDecoder = Callable[[str], str]  # column text -> JSON text of the value

_ARRAY_UNESCAPE = re.compile(r"\\(.)", re.S)
_ARRAY_TOKENS: dict[str, tuple[Callable, Callable]] = {}


def _array_tokens(delimiter: str) -> tuple[Callable, Callable]:
    """Tokenizers of array_out text, per delimiter.

    The first finds quoted element | brace | unquoted element | delimiter (any shape);
    the second finds (quoted, unquoted) elements of a one-dimensional array body.
    """
    finders = _ARRAY_TOKENS.get(delimiter)
    if finders is None:
        d = re.escape(delimiter)
        finders = (
            re.compile(rf'"((?:[^"\\]|\\.)*)"|([{{}}])|([^{{}}"{d}]+)|({d})', re.S).finditer,
            re.compile(rf'"((?:[^"\\]|\\.)*)"|([^"{d}]+)', re.S).findall,
        )
        _ARRAY_TOKENS[delimiter] = finders
    return finders


def array_decoder(element: ValueDecoder, delimiter: str) -> ValueDecoder:
    tokens, elements = _array_tokens(delimiter)
    unescape = _ARRAY_UNESCAPE.sub

    def decode_array(text: str) -> str:
        if text[0] == "[":  # "[2:3]={1,2}": row_to_json drops the bounds
            text = text[text.index("=") + 1 :]
        if text == "{}":
            return "[]"
        if text[0] != "{" or text[-1] != "}":
            raise ValueError("not an array literal")
        if text[1] != "{":  # one dimension: a nested array would start "{{"
            if '"' not in text:
                items = text[1:-1].split(delimiter)
                return "[" + ",".join(["null" if e == "NULL" else element(e) for e in items]) + "]"
            out = []
            for quoted, bare in elements(text, 1, len(text) - 1):
                if bare:
                    out.append("null" if bare == "NULL" else element(bare))
                else:
                    out.append(element(unescape(r"\1", quoted) if "\\" in quoted else quoted))
            return "[" + ",".join(out) + "]"
        out = []
        expect = 0  # position the next token must start at: array_out leaves no gaps
        for match in tokens(text):
            if match.start() != expect:
                raise ValueError("not an array literal")
            expect = match.end()
            kind = match.lastindex
            if kind == 1:
                quoted = match.group(1)
                out.append(element(unescape(r"\1", quoted) if "\\" in quoted else quoted))
            elif kind == 2:
                out.append("[" if match.group(2) == "{" else "]")
            elif kind == 3:
                value = match.group(3)
                out.append("null" if value == "NULL" else element(value))
            else:
                out.append(",")
        if expect != len(text):
            raise ValueError("not an array literal")
        return "".join(out)

    return decode_array


def vector_decoder(element: ValueDecoder) -> ValueDecoder:
    def decode_vector(text: str) -> str:
        return "[" + ",".join([element(e) for e in text.split()]) + "]"

    return decode_vector


_RECORD_FIELD = re.compile(r'"((?:[^"]|"")*)"|([^,]*)', re.S).match
_RECORD_UNESCAPE = re.compile(r'(["\\])\1').sub


def _split_record(text: str) -> list[str | None]:
    """Fields of record_out text: quoted ("" and \\\\ doubled), bare, or empty = NULL."""
    if len(text) < 2 or text[0] != "(" or text[-1] != ")":
        raise ValueError("not a record literal")
    body = text[1:-1]
    fields: list[str | None] = []
    pos = 0
    while True:
        match = _RECORD_FIELD(body, pos)
        quoted, bare = match.groups()
        if quoted is not None:
            fields.append(_RECORD_UNESCAPE(r"\1", quoted))
        else:
            fields.append(bare or None)
        pos = match.end()
        if pos >= len(body):
            return fields
        if body[pos] != ",":
            raise ValueError("not a record literal")
        pos += 1


def composite_decoder(keys: Sequence[str], decoders: Sequence[ValueDecoder]) -> ValueDecoder:
    pairs = list(zip(keys, decoders, strict=True))
    if not pairs:
        return lambda text: "{}"

    def decode_composite(text: str) -> str:
        fields = _split_record(text)
        if len(fields) != len(pairs):
            raise ValueError(f"record has {len(fields)} fields, type has {len(pairs)} attributes")
        return (
            "{"
            + ",".join([k + ("null" if v is None else f(v)) for (k, f), v in zip(pairs, fields, strict=True)])
            + "}"
        )

    return decode_composite


_HSTORE_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"=>(?:"((?:[^"\\]|\\.)*)"|(NULL))(?:, |$)', re.S).match


def decode_hstore(text: str) -> str:
    """hstore_out text -> what hstore_to_json prints (note its ": " and ", ")."""
    out = []
    pos = 0
    while pos < len(text):
        match = _HSTORE_PAIR(text, pos)
        if match is None:
            raise ValueError("not an hstore literal")
        key, value, null = match.groups()
        key = encode_string(_ARRAY_UNESCAPE.sub(r"\1", key))
        out.append(key + ": " + ("null" if null else encode_string(_ARRAY_UNESCAPE.sub(r"\1", value))))
        pos = match.end()
    return "{" + ", ".join(out) + "}"
