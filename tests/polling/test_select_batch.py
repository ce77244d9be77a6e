"""``build_select_batch`` run against real tables: which rows a poll returns for an offset, a chunk, a re-read.

Each test builds the plan the reader would (``describe_table`` + ``build_poll_plan``), runs the
SQL in a fresh database of the private cluster, and checks the rows: nothing skipped or
repeated at a batch boundary, tie-breakers on a composite key, chunk bounds, names that
need quoting.
"""

from __future__ import annotations

import json

import psycopg2
import pytest
from psycopg2 import sql

from pgsource.pg.catalog import describe_table
from pgsource.pg.plan import PollPlan, build_poll_plan
from pgsource.pg.select import Reading, build_select_batch, position_params, snapshot_params
from pgsource.pg.statements import fetch_all
from pgsource.pg.types import load_column_types
from tests.support import execute


@pytest.fixture
def conn(pg_dsn):
    connection = psycopg2.connect(pg_dsn)
    connection.autocommit = True
    try:
        yield connection
    finally:
        connection.close()


def _plan(conn, table: str, tracking: str, schema: str = "public", **options) -> PollPlan:
    info = describe_table(conn, schema, table)
    catalog = load_column_types(conn, [column.type_oid for column in info.columns])
    return build_poll_plan(info, tracking, catalog=catalog, **options)


def _read(conn, plan: PollPlan, reading: Reading | None = None, limit: int = 1000, **params) -> list[tuple]:
    return fetch_all(conn, build_select_batch(plan, reading or Reading()), {"limit": limit, **params})  # as polling runs it


def _read_all(conn, plan: PollPlan, limit: int, **params) -> list[list[tuple]]:
    """Batches from the start to the end, each after the cursor of the previous one's last row (as polling does)."""
    width = len(plan.position_columns)
    batches, after = [], ()
    while True:
        rows = _read(conn, plan, Reading(len(after), "lo" in params, "hi" in params), limit,
                     **position_params("o", after), **params)
        if not rows:
            return batches
        batches.append(rows)
        after = tuple(rows[-1][:width])


def _data(rows: list[tuple], at: int) -> list[dict]:
    return [json.loads(row[at]) for row in rows]


def test_a_poll_returns_the_rows_after_the_offset_in_order(conn, pg_dsn):
    execute(pg_dsn, "CREATE TABLE users (id bigint PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 10) g")
    plan = _plan(conn, "users", "id")
    assert plan.position_columns == ("id",)
    first = _read(conn, plan, limit=3)
    assert first == [("1", '{"id":1,"name":"user 1"}'), ("2", '{"id":2,"name":"user 2"}'),
                     ("3", '{"id":3,"name":"user 3"}')]
    after_seven = _read(conn, plan, Reading(1), limit=100, o0="7")
    assert [row[0] for row in after_seven] == ["8", "9", "10"]  # numeric order, not text order
    assert _read(conn, plan, Reading(1), o0="10") == []  # caught up


def test_rows_sharing_a_tracking_value_are_neither_skipped_nor_repeated_across_batches(conn, pg_dsn):
    """A composite primary key breaks ties: (updated_at, tenant, id) is the cursor."""
    execute(pg_dsn, "CREATE TABLE orders (tenant text, id int, updated_at timestamptz NOT NULL, total numeric,"
                    " PRIMARY KEY (tenant, id))")
    execute(pg_dsn, "SET TIME ZONE 'UTC'")
    execute(pg_dsn, "INSERT INTO orders VALUES"
                    " ('b', 1, '2024-01-01 10:00:00+00', 1), ('a', 2, '2024-01-01 10:00:00+00', 2),"
                    " ('a', 1, '2024-01-01 10:00:00+00', 3), ('a', 3, '2024-01-01 09:00:00+00', 4),"
                    " ('c', 1, '2024-01-01 10:00:00+00', 5), ('b', 2, '2024-01-01 11:00:00+00', 6),"
                    " ('a', 10, '2024-01-01 10:00:00+00', 7)")
    plan = _plan(conn, "orders", "updated_at")
    assert plan.position_columns == ("updated_at", "tenant", "id")
    expected = [("a", 3), ("a", 1), ("a", 2), ("a", 10), ("b", 1), ("c", 1), ("b", 2)]
    for limit in (1, 2, 3, 7):  # every batch boundary falls somewhere inside the five equal timestamps
        batches = _read_all(conn, plan, limit)
        seen = [(row[1], int(row[2])) for batch in batches for row in batch]
        assert seen == expected, f"batch size {limit}"
    # the offset a restart resumes from: the last row's three cursor values
    rest = _read(conn, plan, Reading(3), o0="2024-01-01 10:00:00+00", o1="a", o2="2")
    assert [(row[1], int(row[2])) for row in rest] == [("a", 10), ("b", 1), ("c", 1), ("b", 2)]
    # an offset of the tracking value alone (initial_offset) starts after every row that has it
    later = _read(conn, plan, Reading(1), o0="2024-01-01 10:00:00+00")
    assert [(row[1], int(row[2])) for row in later] == [("b", 2)]


def test_a_chunk_reads_only_its_range_of_the_tracking_column(conn, pg_dsn):
    execute(pg_dsn, "CREATE TABLE events (id bigint PRIMARY KEY, kind text)")
    execute(pg_dsn, "INSERT INTO events SELECT g, 'k' FROM generate_series(1, 100) g")
    plan = _plan(conn, "events", "id")
    chunks = [(None, 26), (26, 51), (51, 76), (76, None)]  # [lo, hi): open at both ends of the table
    read = []
    for lo, hi in chunks:
        bounds = {name: value for name, value in (("lo", lo), ("hi", hi)) if value is not None}
        ids = [int(row[0]) for batch in _read_all(conn, plan, 10, **bounds) for row in batch]
        assert ids == sorted(ids) and all((lo is None or i >= lo) and (hi is None or i < hi) for i in ids)
        read.extend(ids)
    assert read == list(range(1, 101))  # the chunks together: every row once


def test_a_re_read_stops_at_the_range_end_and_sees_only_versions_newer_than_the_snapshot(conn, pg_dsn):
    execute(pg_dsn, "CREATE TABLE t (id bigint PRIMARY KEY, note text)")
    execute(pg_dsn, "INSERT INTO t SELECT g, 'old' FROM generate_series(1, 6) g")
    plan = _plan(conn, "t", "id")
    assert [row[0] for row in _read(conn, plan, Reading(1, upto=True), o0="2", u0="4")] == ["3", "4"]
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_snapshot()::text")
        (snapshot,) = cur.fetchone()  # what the first read of (0, 6] saw
    execute(pg_dsn, "UPDATE t SET note = 'late' WHERE id IN (2, 5)")  # committed after that read
    execute(pg_dsn, "INSERT INTO t VALUES (3.5 * 2, 'beyond the range')")
    rows = _read(conn, plan, Reading(0, upto=True, invisible=True), u0="6", **snapshot_params(snapshot))
    assert [(row[0], json.loads(row[1])["note"]) for row in rows] == [("2", "late"), ("5", "late")]


def test_marked_filtered_and_null_rows_are_not_read(conn, pg_dsn):
    execute(pg_dsn, "CREATE TABLE jobs (id int PRIMARY KEY, seq int UNIQUE, state text, done boolean)")
    execute(pg_dsn, "INSERT INTO jobs VALUES (1, 1, 'ok', false), (2, 2, 'ok', true), (3, NULL, 'ok', false),"
                    " (4, 4, 'skip', NULL), (5, 5, 'skip', false), (6, 6, 'ok', NULL)")
    plan = _plan(conn, "jobs", "seq", processed_column="done", need_identity=True, row_filter="state <> 'skip'")
    rows = _read(conn, plan)
    assert [row[0] for row in rows] == ["1", "6"]  # 2 is processed, 3 has no tracking value, 4 and 5 filtered


def test_the_read_can_return_its_snapshot(conn, pg_dsn):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO t VALUES (1), (2)")
    plan = _plan(conn, "t", "id")
    rows = _read(conn, plan, Reading(snapshot=True))
    assert [row[0] for row in rows] == ["1", "2"]
    xmin, xmax, _ = rows[0][-1].split(":")
    assert int(xmin) <= int(xmax) and rows[0][-1] == rows[1][-1]  # one snapshot for the whole batch


HOSTILE_SCHEMA = 'sch"ema; DROP TABLE x; --'
HOSTILE_TABLE = "Ta ble'); DELETE FROM x; --"
HOSTILE_COLUMNS = ('id"; DROP TABLE x; --', "select", "Name With Spaces", "ü😀", "{0}", "$1")


def test_names_that_need_quoting_are_read_as_names(conn, pg_dsn):
    execute(pg_dsn, "CREATE TABLE x (v int); INSERT INTO x VALUES (42)")
    key, tie, *others = HOSTILE_COLUMNS
    execute(pg_dsn, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(HOSTILE_SCHEMA)).as_string(conn))
    execute(pg_dsn, sql.SQL("CREATE TABLE {} ({} int NOT NULL, {} text NOT NULL, {}, PRIMARY KEY ({}, {}))").format(
        sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE), sql.Identifier(key), sql.Identifier(tie),
        sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in others),
        sql.Identifier(key), sql.Identifier(tie)).as_string(conn))
    values = [(1, "b", "x"), (1, "a", "'); DROP TABLE x; --"), (2, "a", "%(limit)s %s")]
    with conn.cursor() as cur:
        for number, text, value in values:
            cur.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s)").format(
                sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE)), (number, text, value, value, value, value))
    plan = _plan(conn, HOSTILE_TABLE, key, schema=HOSTILE_SCHEMA)
    assert plan.position_columns == (key, tie)
    at = len(plan.select_columns)
    batches = _read_all(conn, plan, 1)
    rows = [row for batch in batches for row in batch]
    assert [(row[0], row[1]) for row in rows] == [("1", "a"), ("1", "b"), ("2", "a")]  # by (id, "select")
    data = _data(rows, at)
    assert list(data[0]) == list(HOSTILE_COLUMNS)  # the JSON keys are the column names, untouched
    assert [row["Name With Spaces"] for row in data] == ["'); DROP TABLE x; --", "x", "%(limit)s %s"]
    with conn.cursor() as cur:
        cur.execute("SELECT v FROM x")
        assert cur.fetchall() == [(42,)]  # the bystander is intact


def test_a_column_list_and_snake_case_shape_the_json(conn, pg_dsn):
    execute(pg_dsn, 'CREATE TABLE people (id int PRIMARY KEY, "FirstName" text, secret text, blob bytea)')
    execute(pg_dsn, "INSERT INTO people VALUES (1, 'Ada', 'hunter2', '\\x00ff')")
    plan = _plan(conn, "people", "id", snake_case=True, exclude_columns=["secret"])
    (row,) = _read(conn, plan)
    assert json.loads(row[len(plan.select_columns)]) == {"id": 1, "first_name": "Ada", "blob": "AP8="}


def test_a_percent_sign_in_a_name_is_read_as_a_name(conn, pg_dsn):
    execute(pg_dsn, 'CREATE TABLE "growth 50%" ("id%(limit)s" int PRIMARY KEY, "share %" text)')
    execute(pg_dsn, "INSERT INTO \"growth 50%\" VALUES (1, 'half')")
    plan = _plan(conn, "growth 50%", "id%(limit)s")
    assert _data(_read(conn, plan), 1) == [{"id%(limit)s": 1, "share %": "half"}]
