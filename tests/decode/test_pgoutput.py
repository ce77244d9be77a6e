"""The pgoutput decoder against what a real PostgreSQL 15 slot sends, over both transports."""

from __future__ import annotations

import json
import select
import time
import uuid
from decimal import Decimal

import psycopg2
import psycopg2.extras
import pytest
from psycopg2 import sql

from pgsource.decode.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    Relation,
    Truncate,
    Type,
    Update,
    decode_message,
    pg_timestamp_to_datetime,
    pg_timestamp_to_iso,
)
from pgsource.decode.values import UNCHANGED_TOAST, compile_relation, decode_tuple_json
from pgsource.errors import SourceError
from pgsource.lsn import format_lsn
from pgsource.pg.types import load_type_catalog
from tests.decode.oracle import ALL_TYPES_DDL, ALL_TYPES_ROWS, SESSION, connect, expected_json

OPTIONS = {"proto_version": "1", "publication_names": "pub", "messages": "true"}
BIG = sql.SQL("(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 100) g)")  # 3200 chars


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def peek(conn) -> list[tuple[int, int, bytes]]:
    args = [x for kv in OPTIONS.items() for x in kv]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT lsn::text, xid::text::int8, data FROM pg_logical_slot_peek_binary_changes("
            "'s', NULL, NULL" + ", %s" * len(args) + ")",
            args,
        )
        return [(parse_lsn(lsn), xid, bytes(data)) for lsn, xid, data in cur.fetchall()]


def stream(dsn: str, count: int, timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """The same slot through the streaming replication protocol, without confirming anything."""
    options = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=1"
    conn = psycopg2.connect(
        dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection, options=options
    )
    try:
        cur = conn.cursor()
        cur.start_replication(slot_name="s", decode=False, options=OPTIONS)
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            msg = cur.read_message()
            if msg is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                select.select([cur], [], [], min(remaining, 1.0))
                continue
            got.append((msg.data_start, bytes(msg.payload)))
        return got
    finally:
        conn.close()


@pytest.fixture
def db(pg_dsn):
    conn = connect(pg_dsn)
    with conn.cursor() as cur:
        # The test cluster runs with synchronous_commit=off, and logical decoding reads only
        # flushed WAL: without this, a peek right after a commit may not see it yet.
        cur.execute("SET synchronous_commit = on")
        cur.execute(
            "CREATE TYPE feeling AS ENUM ('sad', 'ok');"
            "CREATE TABLE items (id int PRIMARY KEY, name text, big text, qty int, m feeling);"
            "ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;"
            "CREATE TABLE full_items (id int PRIMARY KEY, name text, big text);"
            "ALTER TABLE full_items REPLICA IDENTITY FULL;"
            "ALTER TABLE full_items ALTER COLUMN big SET STORAGE EXTERNAL;"
            "CREATE PUBLICATION pub FOR TABLE items, full_items"
        )
        cur.execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')")
    yield conn
    conn.close()


def _run(conn, *statements: str | sql.Composable) -> None:
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def _bound(conn, statement: str, params: tuple) -> None:
    with conn.cursor() as cur:
        cur.execute(statement, params)


def test_every_message_kind_in_order(db, pg_dsn):
    _run(db, sql.SQL("INSERT INTO items VALUES (1, 'a', {}, 5, 'ok')").format(BIG))
    _run(db, "UPDATE items SET qty = 6 WHERE id = 1")  # key unchanged: no old tuple
    _run(db, "UPDATE items SET id = 10 WHERE id = 1")  # key changed: old key 'K'
    _run(db, sql.SQL("INSERT INTO full_items VALUES (1, 'a', {})").format(BIG))
    _run(db, "UPDATE full_items SET name = 'b' WHERE id = 1")  # FULL: old row 'O'
    _run(db, "BEGIN; INSERT INTO items VALUES (99, 'never'); ROLLBACK")
    _run(db, "DELETE FROM items WHERE id = 10; DELETE FROM full_items WHERE id = 1")  # one transaction
    _run(
        db,
        "BEGIN; SELECT pg_logical_emit_message(true, 'pfx', 'tx é'); INSERT INTO items (id) VALUES (2); COMMIT",
    )
    _run(db, "SELECT pg_logical_emit_message(false, 'nontx', '\\x00ff'::bytea)")
    _run(db, "TRUNCATE items, full_items RESTART IDENTITY")
    origin = f"upstream_{uuid.uuid4().hex[:8]}"  # origins are cluster-wide, not per database
    _bound(db, "SELECT pg_replication_origin_create(%s)", (origin,))
    try:
        _bound(db, "SELECT pg_replication_origin_session_setup(%s)", (origin,))
        _run(
            db,
            "BEGIN; SELECT pg_replication_origin_xact_setup('0/1234', now());"
            " INSERT INTO items (id) VALUES (3); COMMIT",
            "SELECT pg_replication_origin_session_reset()",
        )
    finally:
        _bound(db, "SELECT pg_replication_origin_drop(%s)", (origin,))
    with db.cursor() as cur:
        cur.execute(
            "SELECT 'items'::regclass::oid::int8, 'full_items'::regclass::oid::int8, 'feeling'::regtype::oid::int8"
        )
        items, full_items, feeling = cur.fetchone()

    rows = peek(db)
    msgs = [decode_message(data) for _, _, data in rows]
    big = "".join(__import__("hashlib").md5(str(g).encode()).hexdigest() for g in range(1, 101))
    kinds = [type(m).__name__ for m in msgs]
    assert kinds == [
        "Begin", "Type", "Relation", "Insert", "Commit",
        "Begin", "Update", "Commit",
        "Begin", "Update", "Commit",
        "Begin", "Relation", "Insert", "Commit",
        "Begin", "Update", "Commit",
        "Begin", "Delete", "Delete", "Commit",
        "Begin", "Message", "Insert", "Commit",
        "Message",
        "Begin", "Type", "Relation", "Relation", "Truncate", "Commit",  # TRUNCATE invalidated the schemas
        "Begin", "Origin", "Type", "Relation", "Insert", "Commit",
    ]  # fmt: skip

    assert msgs[1] == Type(feeling, "public", "feeling")
    rel = msgs[2]
    assert (rel.oid, rel.namespace, rel.name, rel.replica_identity) == (items, "public", "items", "d")
    assert [(c.name, c.type_oid, c.is_key) for c in rel.columns] == [
        ("id", 23, True), ("name", 25, False), ("big", 25, False), ("qty", 23, False), ("m", feeling, False),
    ]  # fmt: skip
    assert msgs[3] == Insert(items, ("1", "a", big, "5", "ok"))
    # the toasted column is not sent when an UPDATE leaves it alone
    assert msgs[6] == Update(items, None, None, ("1", "a", UNCHANGED, "6", "ok"))
    assert msgs[9] == Update(items, "K", ("1", None, None, None, None), ("10", "a", UNCHANGED, "6", "ok"))
    assert msgs[12].replica_identity == "f" and msgs[12].oid == full_items
    assert msgs[16] == Update(full_items, "O", ("1", "a", big), ("1", "b", UNCHANGED))
    assert msgs[19] == Delete(items, "K", ("10", None, None, None, None))
    assert msgs[20] == Delete(full_items, "O", ("1", "b", big))
    assert msgs[23] == Message(1, msgs[23].lsn, "pfx", "tx é".encode())
    assert msgs[24] == Insert(items, ("2", None, None, None, None))
    assert msgs[26] == Message(0, msgs[26].lsn, "nontx", b"\x00\xff")
    assert not msgs[26].transactional and msgs[23].transactional
    assert [m.oid for m in msgs[29:31]] == [items, full_items]
    assert msgs[31] == Truncate(2, (items, full_items))
    assert msgs[31].restart_identity and not msgs[31].cascade
    assert msgs[34] == Origin(0x1234, origin)

    # transaction framing: xids, LSNs, timestamps
    begins = [i for i, m in enumerate(msgs) if isinstance(m, Begin)]
    for start in begins:
        end = next(i for i in range(start, len(msgs)) if isinstance(msgs[i], Commit))
        begin, commit = msgs[start], msgs[end]
        assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
        assert commit.end_lsn == rows[end][0]  # the commit row's lsn is the end of the commit record
        assert begin.commit_ts == commit.commit_ts
        assert {rows[i][1] for i in range(start, end + 1)} == {begin.xid}
    assert len({msgs[i].xid for i in begins}) == len(begins)
    assert "99" not in [m.new[0] for m in msgs if isinstance(m, Insert)]  # rolled back
    with db.cursor() as cur:
        cur.execute(
            "SELECT %s::pg_lsn = %s::pg_lsn, now() - %s::timestamptz < interval '1 minute'",
            (format_lsn(msgs[-1].end_lsn), format_lsn(rows[-1][0]), pg_timestamp_to_iso(msgs[-1].commit_ts)),
        )
        assert cur.fetchone() == (True, True)
    assert pg_timestamp_to_iso(0) == "2000-01-01T00:00:00.000000Z"
    assert pg_timestamp_to_datetime(1).microsecond == 1

    # the same slot through streaming replication decodes to the same messages at the same LSNs
    streamed = stream(pg_dsn, len(rows))
    assert [decode_message(data) for _, data in streamed] == msgs
    # The walsender sends data_start 0 for a pgoutput write that is not the last of its
    # callback (Type, Relation, and a Begin followed by Origin): positions come from the rest.
    for (lsn, _), (peek_lsn, _, _), m in zip(streamed, rows, msgs, strict=True):
        if isinstance(m, (Type, Relation)) or (isinstance(m, Begin) and lsn == 0):
            assert lsn == 0
        else:
            assert lsn == peek_lsn, m
    assert [data for _, data in streamed] == [data for _, _, data in rows]


def test_update_json_marks_unchanged_toast(db):
    _run(db, sql.SQL("INSERT INTO items VALUES (1, 'a', {}, 5, 'ok')").format(BIG), "UPDATE items SET qty = 6")
    msgs = [decode_message(data) for _, _, data in peek(db)]
    rel = next(m for m in msgs if isinstance(m, Relation))
    update = next(m for m in msgs if isinstance(m, Update))
    catalog = load_type_catalog(db, [c.type_oid for c in rel.columns])
    row = json.loads(decode_tuple_json(compile_relation(rel, catalog), update.new))
    assert row == {"id": 1, "name": "a", "big": UNCHANGED_TOAST, "qty": 6, "m": "ok"}


def test_cdc_json_equals_polling_json_for_every_type(db, pg_dsn):
    """End to end: rows inserted, decoded from the slot, equal row_to_json of the same rows."""
    _run(db, ALL_TYPES_DDL, "ALTER PUBLICATION pub ADD TABLE all_types", *ALL_TYPES_ROWS)
    with db.cursor() as cur:
        cur.execute(SESSION)
    msgs = [decode_message(data) for _, _, data in peek(db)]
    rel = next(m for m in msgs if isinstance(m, Relation) and m.name == "all_types")
    catalog = load_type_catalog(db, [c.type_oid for c in rel.columns])
    decoders = compile_relation(rel, catalog)
    decoded = [
        decode_tuple_json(decoders, m.new)
        for m in msgs
        if isinstance(m, Insert) and m.relation_oid == rel.oid
    ]
    expected = expected_json(db, "all_types")
    assert [json.loads(d, parse_float=Decimal) for d in decoded] == [
        json.loads(e, parse_float=Decimal) for e in expected
    ]
    assert decoded == expected
    # and through the replication protocol, whose session settings come from the startup options
    streamed = [decode_message(data) for _, data in stream(pg_dsn, len(msgs))]
    assert streamed == msgs


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", "empty message"),
        (b"S\x00\x00\x00\x01", "unsupported message type 'S'"),
        (b"B\x00\x00", "malformed 'B'"),
        (b"I\x00\x00\x00\x01N\x00\x01b\x00\x00\x00\x01x", "binary format"),
        (b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09x", "runs past"),
        (b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x01\xff", "malformed 'I'"),
        (b"I\x00\x00\x00\x01N\x00\x01z", "unknown TupleData kind"),
        (b"I\x00\x00\x00\x01X", "lacks its 'N' tuple"),
        (b"R\x00\x00\x00\x01public", "malformed 'R'"),
    ],
)
def test_malformed_input_raises_source_error(data, error):
    with pytest.raises(SourceError, match=error):
        decode_message(data)


def test_memoryview_and_bytes_decode_alike():
    data = b"I\x00\x00\x00\x07N\x00\x03t\x00\x00\x00\x02\xc3\xa9nu"
    assert decode_message(memoryview(data)) == decode_message(data) == Insert(7, ("é", None, UNCHANGED))
