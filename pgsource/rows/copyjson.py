"""A polling batch read as ``COPY (SELECT ...) TO STDOUT`` text, turned into Iggy frames in one pass.

Polling used to have PostgreSQL build each row's JSON (``row_to_json``) and psycopg2 make a
tuple of ``str`` per row, which the worker then wrapped, hashed and framed. Here the COPY
text of the row's columns goes straight to a decoder that writes, per line: the message id
(XXH3-128 of the table and the position values, as ``encode/ids.py`` does), the partition,
the payload (the envelope's prefix, the row's JSON as the CDC decoder writes it from the same
text forms, the suffix; or the ``payload_column`` as it is) and its frame (``encode/frames.py``).

Two implementations, byte-identical (tested against each other and against the row path):

- ``pgsource.rows._copyjson`` (C): no Python object per row; used when built (``NATIVE``).
- ``CopyPlanPython`` here: the same rules in Python, for machines without a compiler.

A plan is built once per table and reading shape (``compile_copy_plan``); ``plan.batch(prefix,
suffix, read_rows, exclude)`` returns the sink psycopg2's ``copy_expert`` writes into, and
``finish()`` returns ``(parts, rows, messages, position, snapshot, ids, identities, problem)``
(see ``_copyjson.c``). A bad row never raises inside the COPY (that would leave the connection
in the middle of it): the first problem is kept and returned by ``finish()``; the caller
(``pgsource/rows/copy_reader.py``) raises the error the row path would have raised.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Sequence

import xxhash

from pgsource.decode.containers import encode_string
from pgsource.decode.rowjson import _kind
from pgsource.decode.values import compile_value_decoder
from pgsource.encode.frames import MAX_PAYLOAD, encode_frames_python
from pgsource.pg import types as t
from pgsource.pg.types import TypeInfo

try:
    from pgsource.rows import _copyjson
except ImportError:  # not built: CopyPlanPython does the same work
    _copyjson = None

__all__ = ["NATIVE", "E_EMPTY_PAYLOAD", "E_FORMAT", "E_NULL_PAYLOAD", "E_NULL_TRACKING", "E_OVERSIZE", "E_VALUE",
           "CopyPlanPython", "compile_copy_plan", "sort_ids"]

NATIVE = _copyjson is not None
# Problems finish() reports, as _copyjson.c numbers them.
E_FORMAT, E_NULL_TRACKING, E_NULL_PAYLOAD, E_EMPTY_PAYLOAD, E_OVERSIZE, E_VALUE = range(1, 7)

_FAST_KINDS = ("call", "timestamp", "timestamptz")  # kinds whose fast path calls the converter itself
_COPY_ESCAPE = re.compile(rb"\\(.?)", re.S)
_CONTROL = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
_BYTEA_ESCAPE = re.compile(rb"\\(\\|[0-3][0-7][0-7])?")
# compact_json's rule on bytes; a string left open runs to the end (as in _copyjson.c's write_compact)
_JSON_SPACE = re.compile(rb'("(?:[^"\\]|\\.)*(?:"|\\?\Z))|[ \t\n\r]+', re.S)


class _Problem(Exception):
    """A bad row: the code and detail ``finish()`` reports."""

    def __init__(self, code: int, detail) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def _identity(text: str) -> str:
    return text


def _unescape(field: bytes) -> bytes:
    def one(match: re.Match) -> bytes:
        char = match.group(1)
        if not char:
            raise _Problem(E_FORMAT, "a COPY field ends in a lone backslash")
        return _CONTROL.get(char, char)

    return _COPY_ESCAPE.sub(one, field)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


def _bytea_bytes(value: bytes) -> bytes:
    """bytea text, hex or the escape format, as its bytes (what ``_copyjson.c`` accepts, no more)."""
    try:
        if value[:2] == b"\\x":
            return binascii.a2b_hex(value[2:])

        def one(match: re.Match) -> bytes:
            code = match.group(1)
            if code is None:
                raise ValueError
            return b"\\" if code == b"\\" else bytes((int(code, 8),))

        return _BYTEA_ESCAPE.sub(one, value)
    except (ValueError, binascii.Error):
        raise _Problem(E_FORMAT, "a bytea payload_column value that is not bytea text") from None


class CopyPlanPython:
    """The pure-Python ``_copyjson.CopyPlan``: same constructor, same ``batch()``."""

    def __init__(self, table: bytes, fields: int, ids: Sequence[int], keys: Sequence[int], positions: Sequence[int],
                 identities: Sequence[int] | None, snapshot: int, body: str, body_field: int, columns: Sequence[tuple],
                 partitioning: str, partitions: int, partition: int, max_payload: int) -> None:
        if not 0 <= partition < partitions or body not in ("object", "json", "text", "bytea", "compact"):
            raise ValueError("CopyPlanPython(): partition or body out of range")
        self.table, self.fields, self.ids, self.keys = table, fields, tuple(ids), tuple(keys)
        self.positions, self.identities, self.snapshot = tuple(positions), identities, snapshot
        self.body, self.body_field, self.partitioning = body, body_field, partitioning
        self.partitions, self.partition, self.max_payload = partitions, partition, max_payload
        self.columns = [(field, key, convert) for field, _kind_name, key, _fast, convert in columns]

    def batch(self, prefix: bytes, suffix: bytes, read_rows: int, exclude: bytes | None = None,
              segment: int = 0) -> CopyBatchPython:
        if read_rows < 0 or segment < 0:
            raise ValueError("batch(): read_rows and segment must not be negative")
        return CopyBatchPython(self, prefix, suffix, read_rows, exclude or None, segment)


class CopyBatchPython:
    """The sink of one COPY (``write`` any chunking), then ``finish()``; see ``_copyjson.c``."""

    def __init__(self, plan: CopyPlanPython, prefix: bytes, suffix: bytes, read_rows: int, exclude: bytes | None,
                 segment: int) -> None:
        self.plan, self.prefix, self.suffix, self.read_rows = plan, prefix, suffix, read_rows
        self.exclude = {exclude[i:i + 16] for i in range(0, len(exclude), 16)} if exclude else set()
        self.segment = segment
        self.segments: list[tuple] = []
        self.tail = b""
        self.snapshot = None
        self.rows = self.messages = 0  # of the whole COPY
        self.problem: _Problem | None = None
        self.finished = False
        self._start_segment()

    def _start_segment(self) -> None:
        self.parts: dict[int, tuple[list[int], list[bytes]]] = {}
        self.ids: list[bytes] = []
        self.identities = [] if self.plan.identities is not None else None
        self.position: tuple | None = None
        self.seg_rows = self.seg_messages = 0

    def _segment_tuple(self) -> tuple:
        parts = []
        for partition, (ids, payloads) in self.parts.items():
            frames, sums = encode_frames_python(ids, payloads)
            parts.append((partition, len(ids), frames, sums))
        out = (parts, self.seg_rows, self.seg_messages, self.position, self.snapshot, b"".join(self.ids),
               self.identities, None)
        self._start_segment()
        return out

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.finished:
            raise ValueError("CopyBatch.write() after finish()")
        data = bytes(data)
        lines = (self.tail + data).split(b"\n")
        self.tail = lines.pop()
        for line in lines:
            if self.problem is None:
                try:
                    self._line(line)
                except _Problem as problem:
                    self.problem = problem
                    continue
                if self.segment and self.seg_rows == self.segment:
                    self.segments.append(self._segment_tuple())
        return len(data)

    def finish(self) -> tuple:
        if self.finished:
            raise ValueError("CopyBatch.finish() called twice")
        self.finished = True
        if self.tail and self.problem is None:
            self.problem = _Problem(E_FORMAT, "the COPY output ended in the middle of a row")
        if self.problem is not None:
            last = ([], self.seg_rows, self.seg_messages, None, None, b"", None, (self.problem.code, self.problem.detail))
        elif self.segment and not self.seg_rows and self.segments:
            return self.segments  # the COPY ended on a segment's last row
        else:
            last = self._segment_tuple()
        return [*self.segments, last] if self.segment else last

    # -- one line -----------------------------------------------------------------------------

    def _split(self, line: bytes) -> list[bytes | None]:
        nfields = self.plan.fields
        values: list[bytes | None] = []
        for index, field in enumerate(line.split(b"\t")):
            if index == nfields:
                raise _Problem(E_FORMAT, f"a COPY row of more than {nfields} fields")
            values.append(None if field == b"\\N" else _unescape(field) if b"\\" in field else field)
        if len(values) != nfields:
            raise _Problem(E_FORMAT, f"a COPY row of {len(values)} fields, expected {nfields}")
        return values

    def _texts(self, values: list, fields: Sequence[int]) -> tuple:
        return tuple(None if values[f] is None else _text(values[f]) for f in fields)

    def _line(self, line: bytes) -> None:
        plan = self.plan
        values = self._split(line)
        self.rows += 1
        self.seg_rows += 1
        self.position = self._texts(values, plan.positions)
        if self.rows == 1 and plan.snapshot >= 0:
            self.snapshot = None if values[plan.snapshot] is None else _text(values[plan.snapshot])
        if plan.positions and values[plan.positions[0]] is None:
            shown = values[plan.positions[0] if plan.body == "object" else plan.body_field]
            raise _Problem(E_NULL_TRACKING, ("" if shown is None else _text(shown),))
        hashed = plan.table + b"".join(b"\x00" + (values[f] or b"") for f in plan.ids)
        message_id = xxhash.xxh3_128_intdigest(hashed) or 1
        id_bytes = message_id.to_bytes(16, "big")
        if id_bytes in self.exclude:
            return
        if plan.partitioning == "balanced":
            partition = (self.read_rows + self.messages) % plan.partitions
        elif plan.partitioning == "key":
            partition = xxhash.xxh32_intdigest(b"\x00".join(values[f] or b"" for f in plan.keys)) % plan.partitions
        else:
            partition = plan.partition
        payload = self.prefix + self._body(values, message_id) + self.suffix
        if not payload:
            raise _Problem(E_EMPTY_PAYLOAD, (self._texts(values, plan.positions), message_id))
        if len(payload) > plan.max_payload:
            raise _Problem(E_OVERSIZE, (self._texts(values, plan.keys), len(payload)))
        ids, payloads = self.parts.setdefault(partition, ([], []))
        ids.append(message_id)
        payloads.append(payload)
        self.ids.append(id_bytes)
        if self.identities is not None:
            self.identities.append(self._texts(values, plan.identities))
        self.messages += 1
        self.seg_messages += 1

    def _body(self, values: list, message_id: int) -> bytes:
        plan = self.plan
        if plan.body == "object":
            return self._object(values)
        value = values[plan.body_field]
        if plan.body == "json":
            return b"null" if value is None else value
        body = None
        if value is not None:
            body = value if plan.body == "text" else _bytea_bytes(value) if plan.body == "bytea" else _compact(value)
        if not body:
            code = E_NULL_PAYLOAD if value is None else E_EMPTY_PAYLOAD
            raise _Problem(code, (self._texts(values, plan.positions), message_id))
        return body

    def _object(self, values: list) -> bytes:
        if not self.plan.columns:
            return b"{}"
        out = []
        for index, (field, key, convert) in enumerate(self.plan.columns):
            value = values[field]
            if value is None:
                out.append(key + b"null")
                continue
            try:
                out.append(key + convert(value.decode()).encode())
            except Exception as exc:  # noqa: BLE001 - the C twin reports any converter failure the same way
                raise _Problem(E_VALUE, (index, _text(value), str(exc))) from None
        return b"".join(out) + b"}"


def _compact(value: bytes) -> bytes:
    return _JSON_SPACE.sub(lambda m: m.group(1) or b"", value)


def sort_ids(blob: bytes) -> bytes:
    """16-byte ids sorted (as bytes compare): the ``exclude=`` of a later re-read."""
    if _copyjson is not None:
        return _copyjson.sort_ids(blob)
    return b"".join(sorted(blob[i:i + 16] for i in range(0, len(blob), 16)))


def column_spec(field: int, key: str, oid: int | None, catalog: dict[int, TypeInfo], first: bool) -> tuple:
    """(field, kind, key bytes, fast converter, converter) of one ``data`` column; ``oid`` None:
    PostgreSQL built the column's JSON (``to_json``), which goes in as it is."""
    key_bytes = (("{" if first else ",") + encode_string(key) + ":").encode()
    if oid is None:
        return field, "json", key_bytes, None, _identity
    info = catalog[oid]
    kind = "bytea" if info.category == t.BYTEA else _kind(info)
    convert: Callable[[str], str] = compile_value_decoder(oid, catalog)
    return field, kind, key_bytes, convert if kind in _FAST_KINDS else None, convert


def compile_copy_plan(*, table: str, fields: int, ids: Sequence[int], keys: Sequence[int], positions: Sequence[int],
                      identities: Sequence[int] | None, snapshot: int | None, body: str, body_field: int | None,
                      columns: Sequence[tuple], partitioning: str, partitions: int, partition: int = 0,
                      max_payload: int = MAX_PAYLOAD, native: bool | None = None):
    """The plan of one COPY shape: C when built (or ``native`` says), else Python.

    ``columns``: (field, kind, key bytes, fast, converter) per ``data`` column (``column_spec``).
    """
    arguments = dict(table=table.encode(), fields=fields, ids=tuple(ids), keys=tuple(keys), positions=tuple(positions),
                     identities=None if identities is None else tuple(identities),
                     snapshot=-1 if snapshot is None else snapshot, body=body,
                     body_field=-1 if body_field is None else body_field, columns=list(columns),
                     partitioning=partitioning, partitions=partitions, partition=partition, max_payload=max_payload)
    use_c = NATIVE if native is None else native
    if use_c and _copyjson is None:
        raise RuntimeError("pgsource.rows._copyjson is not built")
    return _copyjson.CopyPlan(**arguments) if use_c else CopyPlanPython(**arguments)
