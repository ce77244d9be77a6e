"""Decode the binary messages of PostgreSQL's ``pgoutput`` plugin, protocol version 1.

The same bytes arrive whichever transport reads the slot: a row's ``data`` of
``pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', ...)`` or the payload
of a streaming-replication XLogData message (psycopg2 ``read_message()`` with
``decode=False``). ``decode_message`` turns one of them into a frozen dataclass.

Layout reference: "Logical Replication Message Formats" in the PostgreSQL manual.
Column values are requested in text format; a tuple value is decoded to ``str``
(UTF-8: pgoutput sends text in the database encoding, pgsource requires UTF8),
``None`` for SQL NULL, or the ``UNCHANGED`` marker for an unchanged TOASTed value
(kind ``'u'``, only in the new tuple of an UPDATE). Binary values (kind ``'b'``) are
only sent when the ``binary`` option is on, which pgsource never asks for: they raise.
Protocol v2+ streaming messages (``S``/``E``/``c``/``A``) are not supported and raise.

Timestamps are microseconds since 2000-01-01 00:00:00 UTC, kept as ``int``;
``pg_timestamp_to_iso`` renders one. LSNs are ``int``; ``format_lsn`` renders one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pgsource.errors import SourceError

__all__ = [
    "UNCHANGED",
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "Message",
    "Origin",
    "PgoutputMessage",
    "Relation",
    "RelationColumn",
    "Truncate",
    "TupleValue",
    "Type",
    "Update",
    "decode_message",
    "pg_timestamp_to_datetime",
    "pg_timestamp_to_iso",
]


class _UnchangedToast:
    """The marker for a TupleData value of kind 'u' (TOASTed, not changed, not sent)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:  # unpickles to the module's singleton
        return "UNCHANGED"


UNCHANGED = _UnchangedToast()
TupleValue = str | None | _UnchangedToast
Tuple = tuple[TupleValue, ...]

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)


def pg_timestamp_to_datetime(micros: int) -> datetime:
    """A pgoutput timestamp (µs since 2000-01-01 UTC) as an aware ``datetime``."""
    return _PG_EPOCH + timedelta(microseconds=micros)


def pg_timestamp_to_iso(micros: int) -> str:
    """A pgoutput timestamp as ISO 8601 UTC with microseconds: ``2024-01-15T10:30:00.123456Z``."""
    return pg_timestamp_to_datetime(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # LSN of the commit record (== Commit.commit_lsn)
    commit_ts: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int  # start of the commit record
    end_lsn: int  # end of the commit record: the position to confirm once delivered
    commit_ts: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    flags: int  # 1 = part of the replica identity key
    name: str
    type_oid: int
    typmod: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str  # "" means pg_catalog, as the protocol says
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """Sent before a Relation that uses a non-built-in type (enum, domain, composite...)."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    old_kind: str | None  # 'K' old key columns only, 'O' whole old row (FULL), None absent
    old: Tuple | None
    new: Tuple


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old_kind: str  # 'K' or 'O' as for Update
    old: Tuple


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int  # bit 1 CASCADE, bit 2 RESTART IDENTITY
    relation_oids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & 2)


@dataclass(frozen=True, slots=True)
class Message:
    """A logical decoding message (``pg_logical_emit_message``); needs option messages=true."""

    flags: int  # 1 = transactional
    lsn: int
    prefix: str
    content: bytes

    @property
    def transactional(self) -> bool:
        return bool(self.flags & 1)


PgoutputMessage = Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message

_BEGIN = struct.Struct("!qqI").unpack_from
_COMMIT = struct.Struct("!bqqq").unpack_from
_I64 = struct.Struct("!q").unpack_from
_I32 = struct.Struct("!I").unpack_from
_I16 = struct.Struct("!h").unpack_from
_COLUMN_TAIL = struct.Struct("!Ii").unpack_from
_TRUNCATE_HEAD = struct.Struct("!Ib").unpack_from
_MESSAGE_HEAD = struct.Struct("!bq").unpack_from


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[Tuple, int]:
    (count,) = _I16(buf, pos)
    if count < 0:
        raise SourceError(f"pgoutput: TupleData with {count} columns")
    pos += 2
    values: list[TupleValue] = []
    append = values.append
    for index in range(count):
        kind = buf[pos]
        pos += 1
        if kind == 0x74:  # 't'
            (length,) = _I32(buf, pos)
            pos += 4
            end = pos + length
            if end > len(buf):
                raise SourceError(f"pgoutput: column {index} value runs past the message end")
            append(buf[pos:end].decode())
            pos = end
        elif kind == 0x6E:  # 'n'
            append(None)
        elif kind == 0x75:  # 'u'
            append(UNCHANGED)
        elif kind == 0x62:  # 'b'
            raise SourceError(
                f"pgoutput: column {index} is in binary format; pgsource requests text (binary=false)"
            )
        else:
            raise SourceError(f"pgoutput: unknown TupleData kind {kind!r} for column {index}")
    return tuple(values), pos


# Each decoder returns the message and where it ended: a message must end where its bytes do
# (a length or count that disagrees is corruption, reported, never a message read half).


def _begin(buf: bytes) -> tuple[Begin, int]:
    return Begin(*_BEGIN(buf, 1)), 21


def _commit(buf: bytes) -> tuple[Commit, int]:
    return Commit(*_COMMIT(buf, 1)), 26


def _origin(buf: bytes) -> tuple[Origin, int]:
    (lsn,) = _I64(buf, 1)
    name, pos = _cstring(buf, 9)
    return Origin(lsn, name), pos


_IDENTITIES = frozenset("dnfi")


def _relation(buf: bytes) -> tuple[Relation, int]:
    (oid,) = _I32(buf, 1)
    namespace, pos = _cstring(buf, 5)
    name, pos = _cstring(buf, pos)
    identity = chr(buf[pos])
    if identity not in _IDENTITIES:
        raise SourceError(f"pgoutput: Relation {oid} has an unknown replica identity {identity!r}")
    (count,) = _I16(buf, pos + 1)
    if count < 0:
        raise SourceError(f"pgoutput: Relation {oid} with {count} columns")
    pos += 3
    columns = []
    for _ in range(count):
        flags = buf[pos]
        colname, pos = _cstring(buf, pos + 1)
        type_oid, typmod = _COLUMN_TAIL(buf, pos)
        pos += 8
        columns.append(RelationColumn(flags, colname, type_oid, typmod))
    return Relation(oid, namespace, name, identity, tuple(columns)), pos


def _type(buf: bytes) -> tuple[Type, int]:
    (oid,) = _I32(buf, 1)
    namespace, pos = _cstring(buf, 5)
    name, pos = _cstring(buf, pos)
    return Type(oid, namespace, name), pos


def _insert(buf: bytes) -> tuple[Insert, int]:
    (oid,) = _I32(buf, 1)
    if buf[5] != 0x4E:  # 'N'
        raise SourceError(f"pgoutput: Insert for relation {oid} lacks its 'N' tuple")
    new, pos = _tuple(buf, 6)
    return Insert(oid, new), pos


def _update(buf: bytes) -> tuple[Update, int]:
    (oid,) = _I32(buf, 1)
    pos = 5
    old_kind = None
    old = None
    if buf[pos] in (0x4B, 0x4F):  # 'K', 'O'
        old_kind = chr(buf[pos])
        old, pos = _tuple(buf, pos + 1)
    if buf[pos] != 0x4E:
        raise SourceError(f"pgoutput: Update for relation {oid} lacks its 'N' tuple")
    new, pos = _tuple(buf, pos + 1)
    return Update(oid, old_kind, old, new), pos


def _delete(buf: bytes) -> tuple[Delete, int]:
    (oid,) = _I32(buf, 1)
    if buf[5] not in (0x4B, 0x4F):
        raise SourceError(f"pgoutput: Delete for relation {oid} lacks its 'K'/'O' tuple")
    old, pos = _tuple(buf, 6)
    return Delete(oid, chr(buf[5]), old), pos


def _truncate(buf: bytes) -> tuple[Truncate, int]:
    count, options = _TRUNCATE_HEAD(buf, 1)
    if 6 + 4 * count != len(buf):  # checked before unpacking: a huge count must not build a huge format
        raise SourceError(f"pgoutput: Truncate of {count} relations in a message of {len(buf)} bytes")
    oids = struct.unpack_from(f"!{count}I", buf, 6)
    return Truncate(options, oids), len(buf)


def _message(buf: bytes) -> tuple[Message, int]:
    flags, lsn = _MESSAGE_HEAD(buf, 1)
    prefix, pos = _cstring(buf, 10)
    (length,) = _I32(buf, pos)
    content = bytes(buf[pos + 4 : pos + 4 + length])
    if len(content) != length:
        raise SourceError("pgoutput: Message content runs past the message end")
    return Message(flags, lsn, prefix, content), pos + 4 + length


_DECODERS = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
}


def decode_message(buf: bytes | bytearray | memoryview) -> PgoutputMessage:
    """Decode one pgoutput v1 message; malformed or unsupported input raises ``SourceError``."""
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    if not buf:
        raise SourceError("pgoutput: empty message")
    decoder = _DECODERS.get(buf[0])
    if decoder is None:
        raise SourceError(
            f"pgoutput: unsupported message type {chr(buf[0])!r} (protocol v1 without streaming expected)"
        )
    try:
        message, end = decoder(buf)
    except SourceError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError) as exc:  # UnicodeDecodeError is a ValueError
        raise SourceError(f"pgoutput: malformed {chr(buf[0])!r} message ({len(buf)} bytes): {exc}") from None
    if end != len(buf):
        raise SourceError(
            f"pgoutput: malformed {chr(buf[0])!r} message: it ends at byte {end} of {len(buf)} (a length or count is wrong)")
    return message
