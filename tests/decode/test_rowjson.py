"""The compiled row decoders and ChangeEncoder's fast path against the general path and row_to_json."""

from __future__ import annotations

import struct
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgsource.changes import ChangeBatch, ChangeEncoder
from pgsource.config.model import Config
from pgsource.decode import pgoutput as po
from pgsource.decode.pgoutput import decode_message
from pgsource.decode.rowjson import compile_row_json
from pgsource.decode.values import compile_columns, decode_tuple_json
from pgsource.encode.envelope import encode_envelope
from pgsource.encode.ids import cdc_message_id
from pgsource.pg.types import load_type_catalog
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


def tuple_data(values) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            parts.append(b"n")
        elif value == "<u>":
            parts.append(b"u")
        else:
            data = value.encode()
            parts += [b"t", struct.pack("!I", len(data)), data]
    return b"".join(parts)


def run_row(functions, values, prefix="<", suffix=">", pad=b""):
    """Both variants over the tuple placed inside a larger buffer; the result the fast path would use."""
    data = pad + tuple_data(values)
    buf = data + b"trailing message"
    text = buf.decode("latin-1")
    fast = functions["latin1"](buf, text, len(pad), len(data), prefix, suffix)
    if fast is not None and not fast.isascii():
        fast = None
    slow = functions["utf8"](buf, None, len(pad), len(data), prefix, suffix)
    return fast, slow


def test_bench_row_equals_general_decoder():
    functions = compile_row_json(COLUMNS, CATALOG)
    want = decode_tuple_json(compile_columns("bench", COLUMNS, CATALOG), VALUES)
    assert run_row(functions, VALUES, pad=b"\x00" * 7) == ("<" + want + ">", "<" + want + ">")


def test_every_type_matches_row_to_json(all_types_conn):
    cols = columns_of(all_types_conn, "all_types")
    catalog = load_type_catalog(all_types_conn, [oid for _, oid, _ in cols])
    columns = [(name, oid) for name, oid, _ in cols]
    functions = compile_row_json(columns, catalog, [f"k_{name}" for name, _ in columns])
    general = compile_columns("all_types", columns, catalog)
    functions_same_keys = compile_row_json(columns, catalog)
    for want, row in zip(expected_json(all_types_conn, "all_types"), raw_text_rows(all_types_conn, "all_types"),
                         strict=True):
        fast, slow = run_row(functions_same_keys, row, "", "")
        assert slow == want == decode_tuple_json(general, row)
        assert fast in (None, want)
        assert run_row(functions, row, "", "")[1].startswith('{"k_id":')


def test_unusual_tuples_are_left_to_the_general_decoder():
    functions = compile_row_json(COLUMNS, CATALOG)
    values = list(VALUES)
    assert run_row(functions, values[:-1]) == (None, None)  # fewer columns than the relation
    assert run_row(functions, [*values[:-1], "<u>"]) == (None, None)  # unchanged TOAST: the marker
    for index, bad_text in ((6, "maybe"), (4, "not a timestamp"), (7, "{unclosed"), (9, "\\xzz")):
        row = list(values)
        row[index] = bad_text
        assert run_row(functions, row) == (None, None)
    buf = tuple_data(values)
    assert functions["utf8"](buf + b"x", None, 0, len(buf) + 1, "", "") is None  # does not end at the message end


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(st.none(), _text),
    amount=st.one_of(st.none(), st.sampled_from(["NaN", "Infinity", "-Infinity", "0", "-12.50", "1e+30"])),
    stamp=st.sampled_from(["2024-01-15 10:30:00+00", "2024-01-15 10:30:00.5-03:30", "infinity",
                           "0044-03-15 10:00:00+00 BC", "12345-06-07 08:09:10+00"]),
    plain=st.sampled_from(["2024-01-15 10:30:00", "infinity", "0044-03-15 10:00:00 BC"]),
    flag=st.sampled_from(["t", "f", None]),
)
def test_random_rows_equal_general_decoder(name, amount, stamp, plain, flag):
    functions = compile_row_json(COLUMNS, CATALOG)
    general = compile_columns("bench", COLUMNS, CATALOG)
    row = ("1", name, "é" if name is None else name, amount, stamp, plain, flag, "{a,NULL}", "[1]", None)
    want = "<" + decode_tuple_json(general, row) + ">"
    fast, slow = run_row(functions, row)
    assert slow == want
    assert fast in (None, want)
    if all(v is None or v.isascii() for v in row):
        assert fast == want


# ---------------------------------------------------------------- ChangeEncoder: fast path == general path


@pytest.fixture
def all_types_conn(pg_dsn):
    conn = connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(ALL_TYPES_DDL)
        for row in ALL_TYPES_ROWS:
            cur.execute(row)
    yield conn
    conn.close()


def _config(metadata: bool, **iggy) -> Config:
    return Config.model_validate({
        "source": {"connection_string": "x", "mode": "cdc", "tables": ["all_types", "other.t2"],
                   "include_metadata": metadata, "capture_operations": ["INSERT", "UPDATE", "DELETE", "TRUNCATE"]},
        "iggy": {"address": "127.0.0.1:1", "stream": "s", "topic": "{table}", **iggy},
    })


def _encode(config, conn, messages, fast: bool) -> list:
    encoder = ChangeEncoder(config, "slot_a", lambda oids: load_type_catalog(conn, oids))
    batch = ChangeBatch()
    for data in messages:
        if fast:
            buf = b"\x07" * 5 + data + b"\x00next"  # a message inside a larger chunk
            encoder.feed_buffer(buf, buf.decode("latin-1"), 5, 5 + len(data), batch)
        else:
            encoder.feed(decode_message(data), batch)
    return batch.topic_messages


@pytest.mark.parametrize("iggy", [{}, {"partitions": 3}, {"partitions": 3, "partitioning": "table"}])
@pytest.mark.parametrize("metadata", [True, False])
def test_fast_path_equals_general_path(pg_dsn, iggy, metadata):
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
        cur.execute("ALTER TABLE other.t2 REPLICA IDENTITY FULL; UPDATE other.t2 SET v = 'w' WHERE id > 40;"
                    " DELETE FROM other.t2 WHERE id > 45; DELETE FROM all_types WHERE id > 1000;"
                    " TRUNCATE t3, other.t2")
    messages = [data for _, _, data in peek(conn)]
    config = _config(metadata, **iggy)
    general = _encode(config, conn, messages, fast=False)
    with mock.patch.object(po, "decode_message", wraps=po.decode_message) as general_calls:
        fast = _encode(config, conn, messages, fast=True)
    if iggy.get("partitioning") == "table" or not iggy:  # a fixed partition per table: the fast path applies
        assert general_calls.call_count < len(messages) - 50  # it did take the plain rows
    conn.close()
    assert set(general) == {"all_types", "t2"}
    assert fast == general
    ids, parts, payloads, headers = general["all_types"]
    assert len(payloads) == 6 + 6 + 6 + 1 + 6  # inserts, inserts, key updates, update, deletes
    if not metadata:
        assert payloads[:6] == want
        return
    stamps = [p.split('"timestamp":"')[1][:27] for p in payloads[:6]]  # one transaction each
    assert payloads[:6] == [encode_envelope("all_types", "INSERT", s, row, None) for s, row in zip(stamps, want)]
    assert ids[6:8] == [cdc_message_id(ids[6] >> 64, "slot_a", 0), cdc_message_id(ids[6] >> 64, "slot_a", 1)]
    assert headers[0] == {"table": "all_types", "operation": "INSERT", "lsn": headers[0]["lsn"],
                          "xid": headers[0]["xid"]}
    t2 = general["t2"][2]
    assert any("__pgsource_unchanged_toast__" in p for p in t2) and any('"v":"\u00fc2"' in p for p in t2)
    assert any('"operation_type":"TRUNCATE"' in p for p in t2) and any('"v":"x\\"y' in p for p in t2)
