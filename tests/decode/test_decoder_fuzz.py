"""The decoders on bytes PostgreSQL never sent: a clear ``SourceError``, never a crash or a hang.

Every pgoutput message kind is built from random fields (the encoder here follows the
protocol documentation, independently of the decoder): it decodes back to itself, every
strict prefix and every extension by a byte is a ``SourceError``, and random or mangled
bytes decode to a message or raise ``SourceError``, nothing else. The CDC row path (C row
function, then the general decoder it falls back to) gets the same treatment: a row, or
a ``SourceError`` naming the table and column. Fixed example counts, a deadline per example
and a timeout per test keep a hang from passing unnoticed.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgsource.decode import pgoutput as po
from pgsource.decode import rowjson
from pgsource.decode.values import compile_columns, decode_tuple_json
from pgsource.errors import SourceError
from tests.decode.test_rowjson import FUZZ_CATALOG, _fuzz_value, tuple_data

FUZZ = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True,
                database=None)

_u8, _u32 = st.integers(0, 255), st.integers(0, 2**32 - 1)
_i64 = st.integers(-(2**63), 2**63 - 1)
_name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_value = st.one_of(st.none(), st.just(po.UNCHANGED), st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
_tuple = st.lists(_value, max_size=6).map(tuple)


def _cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def _tuple_bytes(values) -> bytes:
    out = [struct.pack("!h", len(values))]
    for v in values:
        if v is None:
            out.append(b"n")
        elif v is po.UNCHANGED:
            out.append(b"u")
        else:
            data = v.encode()
            out += [b"t", struct.pack("!I", len(data)), data]
    return b"".join(out)


def encode(message) -> bytes:
    """pgoutput v1 bytes of a message (Logical Replication Message Formats, PostgreSQL 15)."""
    m = message
    if isinstance(m, po.Begin):
        return b"B" + struct.pack("!qqI", m.final_lsn, m.commit_ts, m.xid)
    if isinstance(m, po.Commit):
        return b"C" + struct.pack("!bqqq", m.flags, m.commit_lsn, m.end_lsn, m.commit_ts)
    if isinstance(m, po.Origin):
        return b"O" + struct.pack("!q", m.commit_lsn) + _cstr(m.name)
    if isinstance(m, po.Relation):
        columns = b"".join(bytes([c.flags]) + _cstr(c.name) + struct.pack("!Ii", c.type_oid, c.typmod) for c in m.columns)
        return (b"R" + struct.pack("!I", m.oid) + _cstr(m.namespace) + _cstr(m.name) + m.replica_identity.encode()
                + struct.pack("!h", len(m.columns)) + columns)
    if isinstance(m, po.Type):
        return b"Y" + struct.pack("!I", m.oid) + _cstr(m.namespace) + _cstr(m.name)
    if isinstance(m, po.Insert):
        return b"I" + struct.pack("!I", m.relation_oid) + b"N" + _tuple_bytes(m.new)
    if isinstance(m, po.Update):
        old = b"" if m.old_kind is None else m.old_kind.encode() + _tuple_bytes(m.old)
        return b"U" + struct.pack("!I", m.relation_oid) + old + b"N" + _tuple_bytes(m.new)
    if isinstance(m, po.Delete):
        return b"D" + struct.pack("!I", m.relation_oid) + m.old_kind.encode() + _tuple_bytes(m.old)
    if isinstance(m, po.Truncate):
        return b"T" + struct.pack("!Ib", len(m.relation_oids), m.options) + b"".join(struct.pack("!I", o) for o in m.relation_oids)
    if isinstance(m, po.Message):
        return b"M" + struct.pack("!bq", m.flags, m.lsn) + _cstr(m.prefix) + struct.pack("!I", len(m.content)) + m.content
    raise TypeError(m)


_old = st.one_of(st.tuples(st.none(), st.none()), st.tuples(st.sampled_from("KO"), _tuple))
MESSAGES = st.one_of(
    st.builds(po.Begin, _i64, _i64, _u32),
    st.builds(po.Commit, st.integers(-128, 127), _i64, _i64, _i64),
    st.builds(po.Origin, _i64, _name),
    st.builds(po.Relation, _u32, _name, _name, st.sampled_from("dnfi"),
              st.lists(st.builds(po.RelationColumn, _u8, _name, _u32, st.integers(-(2**31), 2**31 - 1)), max_size=5).map(tuple)),
    st.builds(po.Type, _u32, _name, _name),
    st.builds(po.Insert, _u32, _tuple),
    st.builds(lambda oid, old, new: po.Update(oid, old[0], old[1], new), _u32, _old, _tuple),
    st.builds(po.Delete, _u32, st.sampled_from("KO"), _tuple),
    st.builds(po.Truncate, st.integers(-128, 127), st.lists(_u32, max_size=6).map(tuple)),
    st.builds(po.Message, st.integers(-128, 127), _i64, _name, st.binary(max_size=30)),
)


def _decodes_or_refuses(data: bytes):
    """The decoder's only two outcomes on any input."""
    try:
        return po.decode_message(data)
    except SourceError as exc:
        assert str(exc).startswith("pgoutput: ")
        return None


@pytest.mark.timeout(120)
@FUZZ
@given(message=MESSAGES)
def test_every_message_round_trips_and_every_cut_or_extension_is_refused(message):
    data = encode(message)
    assert po.decode_message(data) == message
    assert po.decode_message(memoryview(data)) == message
    for end in range(len(data)):
        with pytest.raises(SourceError):
            po.decode_message(data[:end])
    with pytest.raises(SourceError, match="^pgoutput: "):
        po.decode_message(data + b"\x00")


@pytest.mark.timeout(120)
@FUZZ
@given(message=MESSAGES, data=st.data())
def test_mangled_messages_decode_or_raise_source_error(message, data):
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4), label="mangles")):
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        how = data.draw(st.sampled_from(["byte", "u32", "i16", "delete", "insert"]), label="how")
        if how == "byte":
            raw[at] = data.draw(_u8)
        elif how == "u32":
            raw[at:at + 4] = struct.pack("!I", data.draw(st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1])))
        elif how == "i16":
            raw[at:at + 2] = struct.pack("!h", data.draw(st.sampled_from([-32768, -1, 0, 32767])))
        elif how == "delete" and len(raw) > 1:
            del raw[at]
        else:
            raw.insert(at, data.draw(_u8))
    _decodes_or_refuses(bytes(raw))


@pytest.mark.timeout(120)
@settings(max_examples=1500, deadline=2000, derandomize=True, database=None)
@given(data=st.binary(max_size=64), kind=st.sampled_from(b"BCORYIUDTMSEcA\x00\xff"))
def test_random_bytes_decode_or_raise_source_error(data, kind):
    _decodes_or_refuses(bytes([kind]) + data)


@pytest.mark.timeout(120)
@settings(max_examples=1500, deadline=2000, derandomize=True, database=None)
@given(data=st.data())
def test_the_cdc_row_path_gives_a_row_or_a_source_error(data):
    """C row function first (None = not a plain row), then the general decoder, as ChangeEncoder does:
    any TupleData ends in a JSON row or a SourceError that names the table, never anything else."""
    layout = data.draw(st.lists(st.sampled_from(sorted(FUZZ_CATALOG)), max_size=5), label="layout")
    columns = [(f"c{i}", oid) for i, oid in enumerate(layout)]
    row = (rowjson.compile_plan if rowjson.NATIVE else rowjson.compile_python)(columns, FUZZ_CATALOG)
    general = compile_columns("fuzzed", columns, FUZZ_CATALOG)
    body = bytearray(tuple_data([data.draw(_fuzz_value(oid)) for oid in layout]))
    if body and data.draw(st.booleans(), label="mangle"):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(_u8)
    message = b"I" + struct.pack("!I", 16384) + b"N" + bytes(body)
    fast = row(message, None, 6, len(message), b"", b"")
    try:
        insert = po.decode_message(message)
        text = decode_tuple_json(general, insert.new)
    except SourceError as exc:
        assert fast is None
        assert str(exc).startswith(("pgoutput: ", "table fuzzed"))
        return
    if fast is not None:
        assert fast == text.encode()
