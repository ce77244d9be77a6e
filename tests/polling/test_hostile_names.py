"""Names and values an attacker (or an unlucky DBA) would pick, through every SQL polling runs.

Schema, table and column names with quotes, spaces, dots, Unicode, SQL keywords and
injection attempts, read in keyset batches, in chunks, with delete_after_read and with
processed_column, through custom_query's wrapping and the initial snapshot's reader;
hostile values in the rows, in custom_query's bound offset and in initial_offset. After
each run the rows arrived with the right keys and values, and nothing else in the
database was touched: the sentinel table ``x`` and the decoy ``users`` keep every row.
"""

from __future__ import annotations

import json

import pytest
from psycopg2 import sql

from pgsource.pg import connect as pg
from pgsource.rows.encoder import EncodeSettings
from pgsource.rows.keyset import KeysetReader, ReadSettings
from tests.support import (
    bodies,
    execute,
    query,
    start_service,
    stop_service,
    stored_offset,
    wait_for,
    write_config,
)

SCHEMA = 'sch"ema. ü Ünï;code'
CHUNKED = 'users"; DROP TABLE x; --'  # in SCHEMA
DELETED = "Robert'); DROP TABLE x;--"  # public
MARKED = "select"  # public: an SQL keyword
ID = 'id"; DROP TABLE x; --'
NAME = "na.me é 'quoted' \"too\" 50% %(limit)s"
DONE = 'done"; UPDATE x SET v = 0; --'
HOSTILE_VALUES = ["'); DROP TABLE x; --", "%(limit)s %s", "{} {0} $1 $2", 'back\\slash "q"', "ü😀\t\n"]


def _text(dsn: str, statement: sql.Composable) -> str:
    """A composed statement as the SQL text a user would write (custom_query is text in the config)."""
    conn = pg.connect(dsn)
    try:
        return statement.as_string(conn)
    finally:
        conn.close()


def _create(dsn: str, schema: str, table: str, rows: int) -> None:
    """A table with hostile column names and hostile values (ids 1..rows)."""
    execute(dsn, sql.SQL("CREATE TABLE {} ({} bigserial PRIMARY KEY, {} text COLLATE \"C\","
                         " {} boolean NOT NULL DEFAULT false)").format(
        sql.Identifier(schema, table), sql.Identifier(ID), sql.Identifier(NAME), sql.Identifier(DONE)))
    for index in range(rows):
        execute(dsn, sql.SQL("INSERT INTO {} ({}) VALUES (%s)").format(
            sql.Identifier(schema, table), sql.Identifier(NAME)), (f"{HOSTILE_VALUES[index % 5]} #{index + 1:03d}",))


def _fingerprint(dsn: str) -> dict:
    """Every relation of the database and the content of the bystanders: what no run may change."""
    relations = query(dsn, "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n"
                           " ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
                           " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2")
    return {"relations": relations,
            "x": query(dsn, "SELECT md5(string_agg(x::text, ',' ORDER BY id)), count(*) FROM x"),
            "users": query(dsn, "SELECT md5(string_agg(users::text, ',' ORDER BY id)), count(*) FROM users")}


@pytest.fixture
def hostile_db(pg_dsn):
    execute(pg_dsn, "CREATE TABLE x (id int PRIMARY KEY, v int); INSERT INTO x SELECT g, g FROM generate_series(1, 5) g")
    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY, v text); INSERT INTO users VALUES (1, 'decoy')")
    execute(pg_dsn, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
    _create(pg_dsn, SCHEMA, CHUNKED, 40)
    _create(pg_dsn, "public", DELETED, 12)
    _create(pg_dsn, "public", MARKED, 12)
    return pg_dsn


def _names(messages) -> list[str]:
    return sorted(m["data"][NAME] for m in messages)


def _expected(rows: int) -> list[str]:
    return sorted(f"{HOSTILE_VALUES[i % 5]} #{i + 1:03d}" for i in range(rows))


def test_batches_and_chunks_of_hostile_names(hostile_db, iggy, tmp_path):
    before = _fingerprint(hostile_db)
    config = write_config(tmp_path, hostile_db, iggy.address, source={
        "tables": [{"schema": SCHEMA, "name": CHUNKED, "chunks": 2, "tracking_column": ID},
                   {"name": MARKED, "tracking_column": ID}],
        "batch_size": 7}, iggy={"topic": "{schema}.{table}"})
    service = start_service(config)
    try:
        topic = f"{SCHEMA}.{CHUNKED}"
        wait_for(lambda: len(bodies(iggy, topic)) >= 40 and len(bodies(iggy, f"public.{MARKED}")) >= 12, 60,
                 message="every row of both tables")
        execute(hostile_db, sql.SQL("INSERT INTO {} ({}) VALUES ('late; DROP TABLE x')").format(
            sql.Identifier(SCHEMA, CHUNKED), sql.Identifier(NAME)))  # the last chunk goes on reading
        wait_for(lambda: len(bodies(iggy, topic)) >= 41, 30, message="a row written after the bulk load")
    finally:
        assert stop_service(service) == 0
    messages = bodies(iggy, topic)
    assert _names(messages) == sorted([*_expected(40), "late; DROP TABLE x"])
    assert {m["table_name"] for m in messages} == {f"{SCHEMA}.{CHUNKED}"}
    assert list(messages[0]["data"]) == [ID, NAME, DONE]
    assert _names(bodies(iggy, f"public.{MARKED}")) == _expected(12)
    assert _fingerprint(hostile_db) == before
    assert len(list((tmp_path / "state").glob("polling%2F*.json"))) == 4  # two chunks, their cuts, the other table (not polling-shapes/)


@pytest.mark.parametrize("mode", ["delete_after_read", "processed_column"])
def test_delete_and_mark_of_hostile_names(hostile_db, iggy, tmp_path, mode):
    before = _fingerprint(hostile_db)
    table = DELETED if mode == "delete_after_read" else MARKED
    extra = {"delete_after_read": True} if mode == "delete_after_read" else {"processed_column": DONE}
    config = write_config(tmp_path, hostile_db, iggy.address, source={
        "tables": [{"name": table}], "tracking_column": ID, "batch_size": 5, **extra})
    target = sql.Identifier(table)
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, table)) >= 12, 60, message="every row")
        if mode == "delete_after_read":
            wait_for(lambda: query(hostile_db, sql.SQL("SELECT count(*) FROM {}").format(target))[0][0] == 0, 30, message="the deletes")
        else:
            marked = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(target, sql.Identifier(DONE))
            wait_for(lambda: query(hostile_db, marked)[0][0] == 12, 30,
                     message="the marks")
    finally:
        assert stop_service(service) == 0
    assert _names(bodies(iggy, table)) == _expected(12)
    after = _fingerprint(hostile_db)
    assert after == before  # same relations; x and users untouched
    other = MARKED if table == DELETED else DELETED
    assert query(hostile_db, sql.SQL("SELECT count(*) FROM {} WHERE NOT {}").format(
        sql.Identifier(other), sql.Identifier(DONE)))[0][0] == 12


def test_custom_query_and_initial_offset_bind_hostile_values(hostile_db, iggy, tmp_path):
    """The offset is a bound parameter, never text in the SQL: a value that would close the quote
    and drop a table is compared as a string, and the tracking column's name is an identifier."""
    before = _fingerprint(hostile_db)
    offset = "'); DROP TABLE x; -- #001"
    name = sql.Identifier(NAME)
    custom = _text(hostile_db, sql.SQL("SELECT {}, {} FROM {} WHERE {} > $1 ORDER BY {} LIMIT $2").format(
        name, sql.Identifier(ID), sql.Identifier(MARKED), name, name))
    config = write_config(tmp_path, hostile_db, iggy.address, source={
        "custom_query": custom, "tracking_column": NAME, "initial_offset": offset, "batch_size": 4})
    after = sorted(value for value in _expected(12) if value > offset)  # C collation: code point order
    assert 3 < len(after) < 12
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "custom_query")) >= len(after), 60, message="the rows after the hostile offset")
    finally:
        assert stop_service(service) == 0
    assert sorted(m["data"][NAME] for m in bodies(iggy, "custom_query")) == after
    assert _fingerprint(hostile_db) == before

    # initial_offset on a table read by its own (text) tracking column: the same, bound
    tmp = tmp_path / "table"
    tmp.mkdir()
    config = write_config(tmp, hostile_db, iggy.address, source={
        "tables": [{"name": DELETED, "tracking_column": NAME}], "initial_offset": offset, "late_commits": "off"},
        iggy={"stream": "pg2"})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, DELETED, stream="pg2")) >= len(after), 60, message="the table after the offset")
    finally:
        assert stop_service(service) == 0
    assert _names(bodies(iggy, DELETED, stream="pg2")) == after
    assert _fingerprint(hostile_db) == before


def test_snapshot_reader_of_hostile_names(hostile_db):
    """The CDC initial snapshot reads a table with KeysetReader.for_snapshot: same quoting."""
    from pgsource.config.model import Config

    config = Config.model_validate({"source": {"connection_string": "x", "mode": "cdc",
                                               "tables": [{"schema": SCHEMA, "name": CHUNKED}]}})
    conn = pg.connect(hostile_db)
    try:
        table = config.source.tables[0]
        reader = KeysetReader.for_snapshot(conn, table, config.iggy.topic_for(table), ReadSettings.of(config.source),
                                           EncodeSettings(1, include_metadata=False))
        offset, names = None, []
        while rows := reader.fetch_batch(offset, 1000):
            encoded = reader.encoder.encode_batch(rows, len(names))
            names += [json.loads(p)[NAME] for p in encoded.messages.payloads]
            offset = reader.offset_after(rows, len(names) - len(rows))
    finally:
        conn.close()
    assert sorted(names) == _expected(40)


def test_schema_dot_table_and_a_dotted_name_stay_apart(pg_dsn, iggy, tmp_path):
    """``a.b`` (schema a) and ``{name: a.b}`` (public."a.b"): two tables, two workers, two topics, two offsets."""
    execute(pg_dsn, 'CREATE SCHEMA a; CREATE TABLE a.b (id serial PRIMARY KEY, v text);'
                    ' CREATE TABLE public."a.b" (id serial PRIMARY KEY, v text);'
                    " INSERT INTO a.b (v) SELECT 'schema a' FROM generate_series(1, 3);"
                    ' INSERT INTO public."a.b" (v) SELECT \'dotted\' FROM generate_series(1, 5)')
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["a.b", {"name": "a.b"}]},
                          iggy={"topic": "{schema}.{table}"}, workers={"w1": ["a.b"], "w2": ['"a.b"']})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "a.b")) >= 3 and len(bodies(iggy, "public.a.b")) >= 5, 60, message="both")
        wait_for(lambda: stored_offset(tmp_path, "polling/a.b") is not None
                 and stored_offset(tmp_path, 'polling/"a.b"') is not None
                 and stored_offset(tmp_path, 'polling/"a.b"').position == ("5",), 30, message="both offsets")
    finally:
        assert stop_service(service) == 0
    assert {m["data"]["v"] for m in bodies(iggy, "a.b")} == {"schema a"}
    assert {m["data"]["v"] for m in bodies(iggy, "public.a.b")} == {"dotted"}
    assert stored_offset(tmp_path, "polling/a.b").position == ("3",)
    assert stored_offset(tmp_path, 'polling/"a.b"').position == ("5",)
    log = (tmp_path / "pgsource.log").read_text()
    assert "w1: polling/a.b" in log and 'w2: polling/"a.b"' in log
