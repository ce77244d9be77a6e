"""The row functions (C ``Plan`` and Python twin) and ChangeEncoder's fast path, against the
general path, ``row_to_json`` and each other."""

from __future__ import annotations

import functools
import gc
import json
import struct
import tracemalloc
from unittest import mock

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pgsource.cdc import encoder as changes
from pgsource.cdc.encoder import ChangeBatch, ChangeEncoder
from pgsource.config.model import Config
from pgsource.decode import pgoutput as po
from pgsource.decode import rowjson
from pgsource.decode.containers import encode_string
from pgsource.decode.pgoutput import decode_message
from pgsource.decode.values import compile_columns, decode_tuple_json
from pgsource.encode.ids import cdc_message_id
from pgsource.pg import types as t
from pgsource.pg.types import TypeInfo, load_type_catalog
from tests.decode.bench_decode import CATALOG, COLUMNS, VALUES
from tests.decode.oracle import (
    ALL_TYPES_DDL,
    ALL_TYPES_ROWS,
    columns_of,
    connect,
    expected_json,
    raw_text_rows,
)
from tests.decode.test_pgoutput import peek

# Both implementations run every test; "c" fails (never skips) when the extension is not built.
IMPLEMENTATIONS = {"c": rowjson.compile_plan, "python": rowjson.compile_python}
each_implementation = pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))


def tuple_data(values) -> bytes:
    """TupleData of values given as str, bytes (kept as is), None (NULL) or "<u>" (unchanged TOAST)."""
    parts = [struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            parts.append(b"n")
        elif value == "<u>":
            parts.append(b"u")
        else:
            data = value if isinstance(value, bytes) else value.encode()
            parts += [b"t", struct.pack("!I", len(data)), data]
    return b"".join(parts)


def call_row(row, data: bytes, end: int | None = None, prefix=b"<", suffix=b">", pad=b"\x00" * 7):
    """The row function over TupleData placed inside a larger buffer, with and without the latin-1 text."""
    end = len(data) if end is None else end
    buf = pad + data + b"t\x00\x00\x00\x02ab trailing message"
    with_text = row(buf, buf.decode("latin-1"), len(pad), len(pad) + end, prefix, suffix)
    without_text = row(buf, None, len(pad), len(pad) + end, prefix, suffix)
    assert with_text == without_text
    return without_text


def run_row(row, values, prefix=b"<", suffix=b">"):
    return call_row(row, tuple_data(values), prefix=prefix, suffix=suffix)


def test_c_extension_is_built_and_used():
    """CI has gcc and the Python headers: a broken build fails here instead of silently running slower."""
    from pgsource.decode import _rowjson

    assert rowjson.NATIVE
    assert isinstance(rowjson.compile_row_json(COLUMNS, CATALOG), _rowjson.Plan)
    encoder = ChangeEncoder(_config(True), "slot_a", lambda oids: {oid: CATALOG[oid] for oid in oids})
    assert not encoder.needs_text
    relation = b"".join([
        b"R", struct.pack("!I", 16390), b"public\x00all_types\x00d", struct.pack("!h", len(COLUMNS)),
        *(bytes([i == 0]) + name.encode() + b"\x00" + struct.pack("!Ii", oid, -1) for i, (name, oid) in enumerate(COLUMNS)),
    ])
    encoder.feed_buffer(relation, None, 0, len(relation), ChangeBatch())
    assert isinstance(encoder.relations[16390].row, _rowjson.Plan)


@each_implementation
def test_bench_row_equals_general_decoder(implementation):
    row = IMPLEMENTATIONS[implementation](COLUMNS, CATALOG)
    want = decode_tuple_json(compile_columns("bench", COLUMNS, CATALOG), VALUES)
    assert run_row(row, VALUES) == b"<" + want.encode() + b">"
    assert run_row(row, VALUES, b"", b"") == want.encode()


@each_implementation
def test_every_type_matches_row_to_json(all_types, implementation):
    compile_row = IMPLEMENTATIONS[implementation]
    cols = columns_of(all_types, "all_types")
    catalog = load_type_catalog(all_types, [oid for _, oid, _ in cols])
    columns = [(name, oid) for name, oid, _ in cols]
    renamed = compile_row(columns, catalog, [f"k_{name}" for name, _ in columns])
    general = compile_columns("all_types", columns, catalog)
    row = compile_row(columns, catalog)
    for want, values in zip(expected_json(all_types, "all_types"), raw_text_rows(all_types, "all_types"),
                            strict=True):
        assert run_row(row, values, b"", b"") == want.encode() == decode_tuple_json(general, values).encode()
        assert run_row(renamed, values, b"", b"").startswith(b'{"k_id":')


@each_implementation
def test_unusual_tuples_are_left_to_the_general_decoder(implementation):
    row = IMPLEMENTATIONS[implementation](COLUMNS, CATALOG)
    values = list(VALUES)
    assert run_row(row, values[:-1]) is None  # fewer columns than the relation
    assert run_row(row, [*values, "1"]) is None  # more
    assert run_row(row, [*values[:-1], "<u>"]) is None  # unchanged TOAST: the marker
    for index, bad_text in ((6, "maybe"), (4, "not a timestamp"), (7, "{unclosed"), (9, "\\xzz"), (3, ""),
                            (1, b"caf\xc3"), (0, b"\xff1"), (4, b"2024-01-15 10:30:00\xed\xa0\x80+00")):
        bad = list(values)
        bad[index] = bad_text
        assert run_row(row, bad) is None, (index, bad_text)
    data = tuple_data(values)
    assert call_row(row, data + b"x") is None  # does not end at the message end
    assert call_row(row, data, len(data) - 1) is None  # ends inside the last value
    binary = data.replace(b"t\x00\x00\x00\x01t", b"b\x00\x00\x00\x01t")  # the bool in binary format
    assert binary != data and call_row(row, binary) is None
    huge = data.replace(b"t\x00\x00\x00\x06123456", b"t\xff\xff\xff\xff123456")  # a length past the end
    assert huge != data and call_row(row, huge) is None
    for end in range(len(data)):  # every truncation, down to nothing at all
        assert call_row(row, data, end) is None


@each_implementation
def test_start_and_end_must_lie_in_the_message(implementation):
    row = IMPLEMENTATIONS[implementation](COLUMNS, CATALOG)
    data = tuple_data(VALUES)
    for start, end in ((0, len(data) + 1), (-1, 5), (5, 4)):
        with pytest.raises(ValueError):
            row(data, None, start, end, b"", b"")
    assert rowjson.compile_python([], {})(b"\x00\x00", None, 0, 2, b"<", b">") == b"<{}>"
    assert IMPLEMENTATIONS[implementation]([], {})(b"\x00\x00", None, 0, 2, b"<", b">") == b"<{}>"


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@each_implementation
@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(st.none(), _text),
    amount=st.one_of(st.none(), st.sampled_from(["NaN", "Infinity", "-Infinity", "0", "-12.50", "1e+30"])),
    stamp=st.sampled_from(["2024-01-15 10:30:00+00", "2024-01-15 10:30:00.5-03:30", "infinity",
                           "0044-03-15 10:00:00+00 BC", "12345-06-07 08:09:10+00"]),
    plain=st.sampled_from(["2024-01-15 10:30:00", "infinity", "0044-03-15 10:00:00 BC"]),
    flag=st.sampled_from(["t", "f", None]),
)
def test_random_rows_equal_general_decoder(implementation, name, amount, stamp, plain, flag):
    row_function = IMPLEMENTATIONS[implementation](COLUMNS, CATALOG)
    general = compile_columns("bench", COLUMNS, CATALOG)
    row = ("1", name, "é" if name is None else name, amount, stamp, plain, flag, "{a,NULL}", "[1]", None)
    assert run_row(row_function, row) == b"<" + decode_tuple_json(general, row).encode() + b">"


# ---------------------------------------------------------------- aimed at the C code

_any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # controls, NUL, quotes, U+2028...
_special_text = st.lists(
    st.sampled_from(['"', "\\", "\x00", "\x01", "\x1f", "\x7f", "\b", "\f", "\n", "\r", "\t", "é", "😀", "\u2028",
                     "abcdefgh", "a\"b\\c"]),
    max_size=12,
).map("".join)


@each_implementation
@settings(max_examples=400, deadline=None)
@given(text=st.one_of(_any_text, _special_text), other=_any_text)
def test_text_is_escaped_like_encode_string(implementation, text, other):
    columns = [("t", 25), ("u", 25)]
    row = IMPLEMENTATIONS[implementation](columns, CATALOG)
    want = '{"t":' + encode_string(text) + ',"u":' + encode_string(other) + "}"
    assert want == decode_tuple_json(compile_columns("x", columns, CATALOG), (text, other))
    assert run_row(row, (text, other), b"", b"") == want.encode()


_INVALID_UTF8 = [
    b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc3", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xe2\x82",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x8f\xbf\xbf", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80", b"\xff", b"\xfe",
]  # fmt: skip


@each_implementation
@settings(max_examples=300, deadline=None)
@given(
    oid=st.sampled_from([oid for _, oid in COLUMNS]),
    before=_any_text,
    junk=st.sampled_from(_INVALID_UTF8),
    after=_any_text,
)
def test_invalid_utf8_in_any_column_falls_back(implementation, oid, before, junk, after):
    row = IMPLEMENTATIONS[implementation]([("c", oid)], CATALOG)
    value = before.encode() + junk + after.encode()
    with pytest.raises(UnicodeDecodeError):
        value.decode()
    assert run_row(row, [value]) is None


FUZZ_CATALOG = {
    **CATALOG,
    20: TypeInfo(20, "bigint", 20, t.NUMBER),
    114: TypeInfo(114, "json", 114, t.JSON),
    1082: TypeInfo(1082, "date", 1082, t.DATE),
    2950: TypeInfo(2950, "uuid", 2950, t.OTHER),
    1009: TypeInfo(1009, "text[]", 1009, t.ARRAY, element_oid=25),
}
_PLAUSIBLE = {  # per type oid, texts its column accepts (so that whole rows do, often enough)
    20: ["1", "-9223372036854775808"], 23: ["0", "42"], 25: ["", "x"], 114: ["{}", '{"a" : [1, "é"]}'],
    3802: ["[1]", "null"], 1700: ["1.50", "NaN", "-Infinity", "1e+30"], 16: ["t", "f"], 1082: ["2024-01-15"],
    2950: ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
    1184: ["2024-01-15 10:30:00+00", "2024-01-15 10:30:00.123456-03:30", "infinity", "0044-03-15 10:00:00+00 BC",
           "12345-06-07 08:09:10+00", "2024-01-15 10:30:00+05:30:15"],
    1114: ["2024-01-15 10:30:00", "2024-01-15 10:30:00.5", "-infinity", "0044-03-15 10:00:00 BC"],
    1009: ["{a,NULL}", '{"b c",d}', "{}"], 17: ["\\x00ff", "\\001a"],
}  # fmt: skip


@functools.cache
def _fuzz_rows(layout: tuple[int, ...]):
    columns = [(f"c{i}", oid) for i, oid in enumerate(layout)]
    return rowjson.compile_plan(columns, FUZZ_CATALOG), rowjson.compile_python(columns, FUZZ_CATALOG)


def _fuzz_value(oid: int):
    return st.one_of(
        st.sampled_from(_PLAUSIBLE[oid]).map(str.encode),
        st.sampled_from(_PLAUSIBLE[oid]).map(str.encode),
        st.none(),
        _any_text.map(str.encode),
        st.binary(max_size=24),
        st.lists(st.one_of(st.sampled_from(_INVALID_UTF8), _any_text.map(str.encode)), max_size=4).map(b"".join),
    )


@settings(max_examples=2000, deadline=None)
@given(data=st.data())
def test_c_and_python_agree_on_any_tuple(data):
    """Byte-identical results (or both None) on any bytes: valid rows, odd text, broken or mangled tuples."""
    layout = tuple(data.draw(st.lists(st.sampled_from(sorted(FUZZ_CATALOG)), max_size=6), label="layout"))
    plan, python = _fuzz_rows(layout)
    values = [data.draw(_fuzz_value(oid), label=f"c{i}") for i, oid in enumerate(layout)]
    tuple_bytes = bytearray(tuple_data(values))
    end = len(tuple_bytes)
    mangle = data.draw(st.sampled_from(["none", "none", "truncate", "length", "byte", "count"]), label="mangle")
    if mangle == "truncate":
        end = data.draw(st.integers(0, end), label="end")
    elif mangle == "length":  # any length field: 0, past the end, 2**32-1...
        starts = [i for i in range(2, len(tuple_bytes) - 4) if tuple_bytes[i] == 0x74]
        if starts:
            at = data.draw(st.sampled_from(starts), label="at")
            length = data.draw(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1])))
            tuple_bytes[at + 1 : at + 5] = struct.pack("!I", length)
    elif mangle == "byte" and tuple_bytes:
        tuple_bytes[data.draw(st.integers(0, len(tuple_bytes) - 1))] = data.draw(st.integers(0, 255))
    elif mangle == "count":
        tuple_bytes[0:2] = struct.pack("!H", data.draw(st.integers(0, 65535)))
    got = call_row(plan, bytes(tuple_bytes), end)
    assert got == call_row(python, bytes(tuple_bytes), end)
    event(f"{mangle}: {'row' if got is not None else 'None'}")
    if mangle == "none" and all(v is None or v.decode("utf-8", "replace") in _PLAUSIBLE[oid]
                                for v, oid in zip(values, layout, strict=True)):
        general = compile_columns("x", [(f"c{i}", oid) for i, oid in enumerate(layout)], FUZZ_CATALOG)
        want = decode_tuple_json(general, [v if v is None else v.decode() for v in values])
        assert got == b"<" + want.encode() + b">"


def test_plan_arguments_and_converters():
    """What only the C Plan can be asked directly: argument checks, odd converter results, BaseException."""
    from pgsource.decode._rowjson import Plan

    def interrupt(text):
        raise KeyboardInterrupt

    data = tuple_data(["x"])
    assert Plan([("call", b'{"a":', lambda text: text.upper())])(data, None, 0, len(data), b"", b"") == b'{"a":X}'
    assert Plan([("call", b'{"a":', lambda text: 5)])(data, None, 0, len(data), b"", b"") is None  # not a str
    assert Plan([("call", b'{"a":', lambda text: "\ud800")])(data, None, 0, len(data), b"", b"") is None
    assert Plan([("call", b'{"a":', lambda text: 1 / 0)])(data, None, 0, len(data), b"", b"") is None
    with pytest.raises(KeyboardInterrupt):
        Plan([("call", b'{"a":', interrupt)])(data, None, 0, len(data), b"", b"")
    plan = Plan([("other", b'{"a":', None)])
    assert plan(memoryview(data), None, 0, len(data), b"", b"") == b'{"a":"x"}'  # any buffer
    for args in ((data, None, 0, len(data), "", b""), (data, None, 0), (data, None, "0", len(data), b"", b"")):
        with pytest.raises(TypeError):
            plan(*args)
    with pytest.raises(TypeError):
        plan(data, None, 0, len(data), b"", suffix=b"")
    for columns, error in (([("nope", b"", None)], ValueError), ([("call", b"", None)], TypeError),
                           ([("int", "k", None)], TypeError), ([("int", b"k")], TypeError), (5, TypeError)):
        with pytest.raises(error):
            Plan(columns)


def test_plan_does_not_leak():
    """Every path (row, None, converter error, bad arguments) releases what it took."""
    from pgsource.decode._rowjson import Plan

    def fail(text):
        raise ValueError(text)

    plans = [Plan([("call", b'{"a":', f), ("other", b',"b":', None), ("timestamptz", b',"c":', f)])
             for f in (encode_string, fail, lambda text: 5)]
    tuples = [tuple_data(v) for v in (["x", "y\xe9\"\n" * 500, "2024-01-15 10:30:00+00"], ["x", "y", "odd"],
                                      ["x", b"\xff", None], ["x"])]

    def run():
        for plan in plans:
            for data in tuples:
                plan(data, None, 0, len(data), b"<" * 50, b">")
                with pytest.raises(ValueError):
                    plan(data, None, 0, len(data) + 1, b"", b"")

    for _ in range(200):
        run()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            run()
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] - before < 50_000
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------- ChangeEncoder: fast path == general path



def _config(metadata: bool, **iggy) -> Config:
    return Config.model_validate({
        "source": {"connection_string": "x", "mode": "cdc", "tables": ["all_types", "other.t2"],
                   "include_metadata": metadata, "capture_operations": ["INSERT", "UPDATE", "DELETE", "TRUNCATE"]},
        "iggy": {"address": "127.0.0.1:1", "stream": "s", "topic": "{table}", **iggy},
    })


def _encode(config, conn, messages, fast: bool, batch_size: int = 0) -> list[dict]:
    """The topic_messages of each batch; a new batch once one holds ``batch_size`` messages, if given."""
    encoder = ChangeEncoder(config, "slot_a", lambda oids: load_type_catalog(conn, oids))
    batches = [ChangeBatch()]
    for data in messages:
        if fast:
            buf = b"\x07" * 5 + data + b"\x00next"  # a message inside a larger chunk
            text = buf.decode("latin-1") if encoder.needs_text else None
            encoder.feed_buffer(buf, text, 5, 5 + len(data), batches[-1])
        else:
            encoder.feed(decode_message(data), batches[-1])
        if batch_size and batches[-1].count >= batch_size:
            batches.append(ChangeBatch())
    return [batch.topic_messages for batch in batches]


@each_implementation
@pytest.mark.parametrize("iggy", [{}, {"partitions": 3}, {"partitions": 3, "partitioning": "table"}])
@pytest.mark.parametrize("metadata", [True, False])
def test_fast_path_equals_general_path(pg_dsn, iggy, metadata, implementation, monkeypatch):
    monkeypatch.setattr(changes, "compile_row_json", IMPLEMENTATIONS[implementation])
    monkeypatch.setattr(changes, "NATIVE", implementation == "c")
    conn = connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(ALL_TYPES_DDL)
        cur.execute("CREATE SCHEMA other; CREATE TABLE other.t2 (id int PRIMARY KEY, v text, big text);"
                    " ALTER TABLE other.t2 ALTER big SET STORAGE EXTERNAL;"
                    " CREATE TABLE t3 (id int PRIMARY KEY); CREATE PUBLICATION pub FOR ALL TABLES")
        cur.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
        for row in ALL_TYPES_ROWS:
            cur.execute(row)
        want = expected_json(conn, "all_types")
        cur.execute("BEGIN; INSERT INTO all_types SELECT id + 100, i2, i4, i8 FROM all_types;"
                    " UPDATE all_types SET id = id + 1000 WHERE id < 7; UPDATE all_types SET tx = 'é'"
                    " WHERE id = 1001; INSERT INTO t3 VALUES (1); COMMIT")
        cur.execute("INSERT INTO other.t2 SELECT g, CASE WHEN g % 2 = 0 THEN 'ü' || g ELSE NULL END,"
                    " repeat(md5(g::text), 400) FROM generate_series(1, 50) g")
        cur.execute("UPDATE other.t2 SET v = 'x\"y\\\\z' WHERE id < 20")  # big: TOASTed, unchanged
        cur.execute("BEGIN; INSERT INTO other.t2 VALUES (100, 'a', 'b');"  # Relation messages mid-transaction
                    " ALTER TABLE other.t2 ALTER v TYPE jsonb USING to_jsonb(v);"
                    " INSERT INTO other.t2 VALUES (101, '{\"k\": 1}', 'd'); ALTER TABLE other.t2 ADD extra int"
                    " DEFAULT 5; INSERT INTO other.t2 VALUES (102, 'null', 'e'); COMMIT")
        cur.execute("ALTER TABLE other.t2 REPLICA IDENTITY FULL; UPDATE other.t2 SET v = '\"w\"' WHERE id > 40;"
                    " DELETE FROM other.t2 WHERE id > 45; DELETE FROM all_types WHERE id > 1000;"
                    " TRUNCATE t3, other.t2")
    messages = [data for _, _, data in peek(conn)]
    config = _config(metadata, **iggy)
    [general] = _encode(config, conn, messages, fast=False)
    with mock.patch.object(po, "decode_message", wraps=po.decode_message) as general_calls:
        [fast] = _encode(config, conn, messages, fast=True)
    if iggy.get("partitioning") == "table" or not iggy:  # a fixed partition per table: the fast path applies
        assert general_calls.call_count < len(messages) - 50  # it did take the plain rows
    assert set(general) == {"all_types", "t2"}
    assert fast == general
    small = _encode(config, conn, messages, fast=False, batch_size=4)
    assert len(small) > 20 and _encode(config, conn, messages, fast=True, batch_size=4) == small
    conn.close()
    assert {type(p) for lists in [*fast.values(), *general.values()] for p in lists[2]} == {bytes}
    ids, parts, payloads, headers = general["all_types"]
    assert len(payloads) == 6 + 6 + 6 + 1 + 6  # inserts, inserts, key updates, update, deletes
    payloads = [p.decode() for p in payloads]
    if not metadata:
        assert payloads[:6] == want
        return
    stamps = [p.split('"timestamp":"')[1][:27] for p in payloads[:6]]  # one transaction each
    assert [json.loads(p) for p in payloads[:6]] == [  # the SPEC's envelope around each row, key order kept
        {"table_name": "all_types", "operation_type": "INSERT", "timestamp": s, "data": json.loads(row), "old_data": None}
        for s, row in zip(stamps, want)
    ]
    assert all(p.startswith('{"table_name":"all_types","operation_type":"INSERT","timestamp":') for p in payloads[:6])
    assert ids[6:8] == [cdc_message_id(ids[6] >> 64, "slot_a", 0), cdc_message_id(ids[6] >> 64, "slot_a", 1)]
    assert headers[0] == {"table": "all_types", "operation": "INSERT", "lsn": headers[0]["lsn"],
                          "xid": headers[0]["xid"], "txn_index": ""}  # "": each frame's own position (encode/frames.py)
    t2 = [p.decode() for p in general["t2"][2]]
    assert any("__pgsource_unchanged_toast__" in p for p in t2) and any('"v":"\u00fc2"' in p for p in t2)
    assert any('"operation_type":"TRUNCATE"' in p for p in t2) and any('"v":"x\\"y' in p for p in t2)
    assert '"data":{"id":100,"v":"a","big":"b"}' in "".join(t2)
    assert '"data":{"id":101,"v":{"k": 1},"big":"d"}' in "".join(t2)
    assert '"data":{"id":102,"v":null,"big":"e","extra":5}' in "".join(t2)
