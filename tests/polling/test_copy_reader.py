"""The COPY read (``CopyReader``) gives the messages of the row path, byte for byte, for the same rows.

Each test builds a table in a fresh database of the private cluster, then reads it batch by batch
twice, from the same offsets: the row path (the reader's ``read_batch`` + ``RowEncoder.encode_batch``
+ ``encode_partition_frames``: PostgreSQL's ``row_to_json``) and the COPY path, in C and in Python.
The frames (ids, payloads, partitions, checksums), the offsets, the identities and the snapshots
must agree, through every batch to the end of the table.
"""

from __future__ import annotations

import psycopg2.extensions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2 import sql

from pgsource.config.model import Config
from pgsource.encode.frames import encode_partition_frames
from pgsource.errors import SourceError, TableChanged
from pgsource.pg import connect as pg
from pgsource.polling.late_commits import SentIds
from pgsource.polling.reader import open_reader
from pgsource.rows import copyjson
from pgsource.rows.copy_reader import CopyReader
from pgsource.state import PollingOffset
from tests.decode.oracle import ALL_TYPES_DDL, ALL_TYPES_ROWS
from tests.decode.test_roundtrip_property import COLUMNS as RANDOM_COLUMNS
from tests.decode.test_roundtrip_property import ROW as RANDOM_ROW
from tests.support import execute

STAMP = "2024-01-01T00:00:00.000000Z"
both = pytest.mark.parametrize("native", [True, False], ids=["c", "python"])


@pytest.fixture(autouse=True)
def fixed_timestamp(monkeypatch):
    """Both paths stamp the envelope with the time of the read: the same one here."""
    monkeypatch.setattr("pgsource.rows.encoder.iso_timestamp", lambda: STAMP)
    monkeypatch.setattr("pgsource.rows.copy_reader.iso_timestamp", lambda: STAMP)


def _readers(dsn: str, native: bool, *, table=None, iggy: dict | None = None, **source):
    tables = [table] if table is not None else source.pop("tables")
    config = Config.model_validate({
        "source": {"connection_string": dsn, "mode": "polling", "tables": tables, "late_commits": "off", **source},
        "iggy": {"address": "127.0.0.1:1", **(iggy or {})},
    })
    conn = pg.connect(dsn)
    reader = open_reader(conn, config, config.source.tables[0] if config.source.tables else None)
    reader.batch_size = config.source.batch_size  # what the worker passes to every read (here: the tests' helpers)
    return config, reader, CopyReader(reader, native=native)


def _same_read(reader, copy: CopyReader, offset, read_rows: int):
    """One batch both ways from ``offset``; asserts they agree and returns the row path's read."""
    read = reader.read_batch(offset, reader.batch_size)
    encoded = reader.encoder.encode_batch(read.rows, read_rows)
    parts = encode_partition_frames(encoded.messages.ids, encoded.messages.partitions, encoded.messages.payloads)
    fast = copy.read_batch(offset, reader.batch_size, read_rows=read_rows)
    assert fast.rows == fast.messages == len(read.rows)
    assert fast.parts == parts
    assert fast.message_ids() == encoded.messages.ids
    assert fast.identities == encoded.identities
    assert fast.after == read.after
    assert (fast.snapshot is None) == (read.snapshot is None)
    return read, fast


def _read_all(reader, copy: CopyReader, offset: PollingOffset | None = None) -> int:
    """Every batch of the table both ways; the number of rows read."""
    read_rows = 0
    while True:
        read, _ = _same_read(reader, copy, offset, read_rows)
        if not read.rows:
            return read_rows
        offset, read_rows = read.after, read_rows + len(read.rows)


@both
@pytest.mark.parametrize("include_metadata", [True, False])
def test_every_type_gives_the_row_paths_messages(pg_dsn, native, include_metadata):
    execute(pg_dsn, ALL_TYPES_DDL)
    for row in ALL_TYPES_ROWS:
        execute(pg_dsn, row)
    execute(pg_dsn, "CREATE TYPE blob_pair AS (tag text, data bytea)")
    execute(pg_dsn, "CREATE EXTENSION IF NOT EXISTS hstore")
    execute(pg_dsn, "ALTER TABLE all_types ADD COLUMN bb bytea[], ADD COLUMN bp blob_pair, ADD COLUMN hs hstore,"
                    " ADD COLUMN \"Odd \"\"name\"\"\t%s\" text")
    execute(pg_dsn, "UPDATE all_types SET bb = '{{\\\\x01,\\\\x02},{\\\\x03,NULL}}', bp = ROW('t', '\\x00ff'),"
                    " hs = 'a=>1, \"b c\"=>NULL', \"Odd \"\"name\"\"\t%s\" = E'tab\\there' WHERE id = 1")
    _, reader, copy = _readers(pg_dsn, native, table="all_types", batch_size=2, include_metadata=include_metadata)
    assert copy.native is native
    # PostgreSQL still writes these columns' JSON: bytea inside arrays and composites, a type with a json cast
    assert [key for _, key, oid in copy.layout.data if oid is None] == ["ba", "bb", "bp", "hs"]
    assert _read_all(reader, copy) == len(ALL_TYPES_ROWS)


def _bench_like(dsn: str, rows: int = 40) -> None:
    execute(dsn, """CREATE TABLE b (id bigserial PRIMARY KEY, name text NOT NULL, price numeric(12,2), active bool,
                    at timestamptz, attrs jsonb, ref uuid, "CamelCase" int)""")
    execute(dsn, """INSERT INTO b (name, price, active, at, attrs, ref, "CamelCase")
                    SELECT 'n ' || g || E' \\\\ "q" \\t é', g * 1.5, g %% 3 = 0, '2024-01-01 00:00:00+00'::timestamptz
                           + g * interval '1.5 s', jsonb_build_object('g', g, 's', E'a\\nb'), gen_random_uuid(), g
                    FROM generate_series(1, %s) g""", (rows,))


@both
@pytest.mark.parametrize("partitioning", ["primary_key", "balanced", "table"])
def test_partitions_are_those_of_the_row_path(pg_dsn, native, partitioning):
    _bench_like(pg_dsn)
    _, reader, copy = _readers(pg_dsn, native, table="b", batch_size=7,
                               iggy={"partitions": 4, "partitioning": partitioning})
    assert _read_all(reader, copy) == 40


@both
def test_columns_exclude_snake_case_and_row_filter(pg_dsn, native):
    _bench_like(pg_dsn)
    table = {"name": "b", "exclude_columns": ["ref"], "row_filter": "id % 2 = 0"}
    _, reader, copy = _readers(pg_dsn, native, table=table, batch_size=6, snake_case_columns=True)
    assert _read_all(reader, copy) == 20
    _, reader, copy = _readers(pg_dsn, native, table={"name": "b", "columns": ["name", "CamelCase"]}, batch_size=6)
    assert _read_all(reader, copy) == 40


@both
def test_tie_breakers_ctid_and_chunks(pg_dsn, native):
    execute(pg_dsn, "CREATE TABLE ev (k int NOT NULL, s text NOT NULL, grp int, body text, PRIMARY KEY (k, s))")
    execute(pg_dsn, "INSERT INTO ev SELECT g / 3, 's' || g, g % 4, repeat('x', g) FROM generate_series(1, 30) g")
    _, reader, copy = _readers(pg_dsn, native, table={"name": "ev", "tracking_column": "grp"}, batch_size=4,
                               iggy={"partitions": 3})
    assert _read_all(reader, copy) == 30
    execute(pg_dsn, "CREATE TABLE loose (grp int, body text)")
    execute(pg_dsn, "INSERT INTO loose SELECT g % 5, 'b' || g FROM generate_series(1, 23) g")
    _, reader, copy = _readers(pg_dsn, native, table={"name": "loose", "tracking_column": "grp"}, batch_size=4,
                               allow_non_unique_tracking=True, iggy={"partitions": 2})
    assert _read_all(reader, copy) == 23
    _bench_like(pg_dsn)
    _, reader, copy = _readers(pg_dsn, native, table="b", batch_size=6)
    reader.restrict_to_chunk(10, 30)
    assert _read_all(reader, copy) == 20


@both
@pytest.mark.parametrize("ack", ["delete_after_read", "processed_column"])
def test_delete_and_mark_get_the_same_identities_and_versioned_ids(pg_dsn, native, ack):
    _bench_like(pg_dsn, 15)
    execute(pg_dsn, "ALTER TABLE b ADD COLUMN done bool NOT NULL DEFAULT false")
    extra = {"delete_after_read": True} if ack == "delete_after_read" else {"processed_column": "done"}
    _, reader, copy = _readers(pg_dsn, native, table="b", batch_size=4, **extra)
    assert _read_all(reader, copy) == 15
    read, fast = _same_read(reader, copy, None, 0)
    keys = [identity[:-1] for identity in fast.identities[:2]]
    again = reader.read_rows_by_key(keys, read.after.position)
    encoded = reader.encoder.encode_batch(again, 0)
    by_key = copy.read_rows_by_key(keys, read.after.position)
    assert by_key.parts == encode_partition_frames(encoded.messages.ids, encoded.messages.partitions,
                                                   encoded.messages.payloads)
    assert by_key.identities == encoded.identities and by_key.rows == 2


@both
@pytest.mark.parametrize("payload_format", ["bytea", "text", "json_direct"])
def test_payload_columns_are_sent_as_they_are(pg_dsn, native, payload_format):
    kind = {"bytea": "bytea", "text": "text", "json_direct": "jsonb"}[payload_format]
    execute(pg_dsn, sql.SQL("CREATE TABLE q (id serial PRIMARY KEY, body {} NOT NULL, note json)").format(sql.SQL(kind)))
    values = {"bytea": ["\\x00ff5c0a09", "\\x" + bytes(range(256)).hex()],
              "text": ["plain", "tab\tnl\nback\\slash é ✓"],
              "json_direct": ['{"a": [1, 2.50, {"k": "v \\"q\\" \\n"}]}', "[true,  false]"]}[payload_format]
    for value in values * 3:
        execute(pg_dsn, "INSERT INTO q (body) VALUES (%s)", (value,))
    source = {"payload_column": "body", "payload_format": payload_format}
    _, reader, copy = _readers(pg_dsn, native, table="q", batch_size=4, **source)
    assert _read_all(reader, copy) == 6


@both
def test_custom_query(pg_dsn, native):
    _bench_like(pg_dsn, 25)
    query = "SELECT id, name, price, attrs FROM b WHERE id > $offset ORDER BY id LIMIT $limit"
    _, reader, copy = _readers(pg_dsn, native, tables=[], custom_query=query, initial_offset=0, batch_size=10,
                               tracking_column="id")
    assert _read_all(reader, copy, offset=PollingOffset(("0",), 0, None)) == 25


@both
def test_late_rows_leave_out_what_the_first_read_sent(pg_dsn, native):
    _bench_like(pg_dsn, 12)
    _, reader, copy = _readers(pg_dsn, native, table="b", batch_size=100)
    first = copy.read_batch(None, 100)
    snapshot = "1:1:"  # every row version is "late" for this snapshot: the re-read returns them all
    sent = first.message_ids()[:5]
    rows = reader.read_late_rows(None, first.after.position, snapshot, 100)
    kept = SentIds(sent)
    new = [row for row, message_id in zip(rows, reader.encoder.message_ids(rows)) if message_id not in kept]
    encoded = reader.encoder.encode_batch(new, 3)
    late = copy.read_late_rows(None, first.after.position, snapshot, 100,
                               exclude=copyjson.sort_ids(first.ids[:5 * 16]), read_rows=3)
    assert (late.rows, late.messages) == (12, 7) and late.position == first.after.position
    assert late.parts == encode_partition_frames(encoded.messages.ids, encoded.messages.partitions,
                                                 encoded.messages.payloads)


@both
def test_late_commit_snapshot_and_xid8_ticks(pg_dsn, native):
    _bench_like(pg_dsn, 10)
    _, reader, copy = _readers(pg_dsn, native, table="b", batch_size=4, late_commits="auto")
    read, fast = _same_read(reader, copy, None, 0)
    assert fast.snapshot.count(":") == 2
    execute(pg_dsn, "CREATE TABLE x (id serial PRIMARY KEY, tx xid8 NOT NULL DEFAULT pg_current_xact_id(), v text)")
    for _ in range(3):  # three transactions
        execute(pg_dsn, "INSERT INTO x (v) SELECT 'v' || g FROM generate_series(1, 3) g")
    _, reader, copy = _readers(pg_dsn, native, table={"name": "x", "tracking_column": "tx"}, batch_size=2,
                               allow_non_unique_tracking=True)
    assert reader.exact
    assert _read_all(reader, copy) == 9


@both
def test_bad_payloads_stop_with_the_row_paths_error(pg_dsn, native):
    execute(pg_dsn, "CREATE TABLE q (id serial PRIMARY KEY, body text)")
    execute(pg_dsn, "INSERT INTO q (body) VALUES ('fine'), (NULL), ('')")
    _, reader, copy = _readers(pg_dsn, native, table="q", payload_column="body", payload_format="text")
    with pytest.raises(SourceError) as row_error:
        reader.encoder.encode_batch(reader.read_batch(None, 1000).rows, 0)
    with pytest.raises(SourceError) as copy_error:
        copy.read_batch(None, 1000)
    assert str(copy_error.value) == str(row_error.value)
    assert "row 2 (message id 0x" in str(copy_error.value) and "a NULL payload_column 'body'" in str(copy_error.value)
    execute(pg_dsn, "DELETE FROM q WHERE body IS NULL")
    with pytest.raises(SourceError, match="row 3 .* an empty payload_column"):
        copy.read_batch(None, 1000)
    execute(pg_dsn, "CREATE TABLE c (id int, v text)")
    execute(pg_dsn, "INSERT INTO c VALUES (1, 'a'), (NULL, 'b')")
    custom = "SELECT id, v FROM c WHERE coalesce(id, 0) >= $offset LIMIT $limit"
    _, reader, copy = _readers(pg_dsn, native, tables=[], custom_query=custom, initial_offset=0, tracking_column="id")
    start = PollingOffset(("0",), 0, None)
    with pytest.raises(SourceError) as row_error:
        reader.encoder.encode_batch(reader.read_batch(start, 1000).rows, 0)
    with pytest.raises(SourceError, match=r"custom_query: a row has NULL in tracking_column 'id': \{\"id\":null") as copy_error:
        copy.read_batch(start, 1000)
    assert str(row_error.value) == str(copy_error.value)
    assert copy.reader.conn.status == psycopg2.extensions.STATUS_READY  # the COPY was read to its end


@both
def test_a_column_added_or_dropped_is_noticed(pg_dsn, native):
    _bench_like(pg_dsn, 5)
    _, reader, copy = _readers(pg_dsn, native, table="b")
    assert copy.read_batch(None, 1000).rows == 5
    execute(pg_dsn, "ALTER TABLE b ADD COLUMN later text DEFAULT 'x'")
    with pytest.raises(TableChanged):
        copy.read_batch(None, 1000)
    _, reader, copy = _readers(pg_dsn, native, table="b")
    execute(pg_dsn, "ALTER TABLE b DROP COLUMN later")
    with pytest.raises(TableChanged):
        copy.read_batch(None, 1000)


@pytest.fixture
def random_table(pg_dsn):
    """``rt`` with a column of every type the round-trip test draws, and its readers (C and Python)."""
    columns = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
                                 for name, kind, *_ in RANDOM_COLUMNS)  # kind: a type name from RANDOM_COLUMNS
    execute(pg_dsn, sql.SQL("CREATE TABLE rt (id bigserial PRIMARY KEY, {})").format(columns))
    pairs = [_readers(pg_dsn, native, table="rt", iggy={"partitions": 3})[1:] for native in (True, False)]
    yield pg_dsn, pairs
    for reader, _ in pairs:
        reader.conn.close()


@pytest.mark.timeout(300)
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(RANDOM_ROW, min_size=1, max_size=3))
def test_random_values_of_every_type_give_the_row_paths_messages(random_table, rows):
    dsn, pairs = random_table
    names = [name for name, *_ in RANDOM_COLUMNS]
    values = sql.SQL(", ").join(
        sql.SQL("({})").format(sql.SQL(", ").join(
            sql.SQL("({})::{}").format(sql.Literal(row[name] if row[name] is None or bind is None else bind(row[name])),
                                       sql.SQL(kind))
            for name, kind, _, bind, _ in RANDOM_COLUMNS))
        for row in rows)
    execute(dsn, sql.SQL("TRUNCATE rt; INSERT INTO rt ({}) VALUES {}").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), values))
    for reader, copy in pairs:
        read, fast = _same_read(reader, copy, None, 0)
        assert fast.rows == len(rows)


@both
@pytest.mark.parametrize("partitioning", ["primary_key", "balanced"])
def test_one_copy_of_several_batches_gives_the_batches_one_by_one(pg_dsn, native, partitioning):
    _bench_like(pg_dsn, 40)
    _, reader, copy = _readers(pg_dsn, native, table="b", batch_size=6,
                               iggy={"partitions": 3, "partitioning": partitioning})
    offset, read_rows, copies = None, 0, 0
    while True:
        reads, error = copy.read_batches(offset, 6, 4, read_rows=read_rows)
        copies += 1
        assert error is None and 1 <= len(reads) <= 4
        for read in reads:
            one = copy.read_batch(offset, 6, read_rows=read_rows)
            assert (read.parts, read.ids, read.rows, read.position, read.after) == (
                one.parts, one.ids, one.rows, one.position, one.after)
            offset, read_rows = read.after, read_rows + read.rows
        if reads[-1].rows < 6:
            break
    assert (read_rows, copies) == (40, 2)


@both
def test_a_bad_row_in_a_later_batch_of_one_copy_keeps_the_batches_before_it(pg_dsn, native):
    execute(pg_dsn, "CREATE TABLE q (id serial PRIMARY KEY, body text)")
    execute(pg_dsn, "INSERT INTO q (body) SELECT CASE WHEN g = 8 THEN NULL ELSE 'b' || g END FROM generate_series(1, 12) g")
    _, reader, copy = _readers(pg_dsn, native, table="q", batch_size=3, payload_column="body", payload_format="text")
    reads, error = copy.read_batches(None, 3, 4)
    assert [read.rows for read in reads] == [3, 3] and reads[-1].after.position == ("6",)
    assert isinstance(error, SourceError) and "row 8 (message id 0x" in str(error)
