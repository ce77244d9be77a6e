"""CDC end to end: logical replication → pgsource → Iggy stand-in, for both transports."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.cdc.common import wait_slot_caught_up, wait_until_capturing
from tests.support import (
    bodies,
    execute,
    kill_service,
    query,
    run_cli,
    start_service,
    stop_service,
    wait_for,
    write_config,
)

TRANSPORTS = ["sql", "replication"]


def cdc_config(tmp_path, dsn, iggy, transport, **source):
    return write_config(tmp_path, dsn, iggy.address, source={"mode": "cdc", "cdc_transport": transport, **source})


def ops(messages):
    return [(m["operation_type"], (m["data"] or m["old_data"] or {}).get("id")) for m in messages]


def _wait_until_capturing(dsn: str, transport: str) -> None:
    """The slot exists (what commits after it is captured); the streaming transport also holds it.

    Not a fixed sleep: under load the service takes more than a second to create its slot,
    and changes committed before that are, rightly, never seen."""
    streaming = transport == "replication"  # only it holds the slot: active; the sql transport, any slot
    wait_for(lambda: query(dsn, "SELECT count(*) FROM pg_replication_slots WHERE active OR %s", (not streaming,))[0][0] == 1, 60,
             message="the replication slot")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_insert_update_delete_once_each_in_commit_order(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY, name text)")
    execute(pg_dsn, "CREATE TABLE other (id int PRIMARY KEY)")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["users"])
    service = start_service(config)
    try:
        _wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO users VALUES (1, 'a'), (2, 'b')")
        execute(pg_dsn, "BEGIN; INSERT INTO users VALUES (99, 'rolled back'); ROLLBACK")
        execute(pg_dsn, "INSERT INTO other VALUES (1)")
        execute(pg_dsn, "UPDATE users SET name = 'A' WHERE id = 1")
        execute(pg_dsn, "DELETE FROM users WHERE id = 2")
        execute(pg_dsn, "TRUNCATE users")
        wait_for(lambda: len(bodies(iggy, "users")) >= 4, 30, message="4 changes")
        wait_slot_caught_up(pg_dsn)  # past the TRUNCATE: it was read, and not sent
    finally:
        assert stop_service(service) == 0
    received = bodies(iggy, "users")
    assert ops(received) == [("INSERT", 1), ("INSERT", 2), ("UPDATE", 1), ("DELETE", 2)]  # TRUNCATE not listed
    assert received[2]["data"] == {"id": 1, "name": "A"} and received[2]["old_data"] is None
    assert received[3]["data"] is None and received[3]["old_data"] == {"id": 2}  # the old key
    assert "other" not in iggy.topics("pg")
    stored = iggy.messages("pg", "users")
    headers = stored[0].headers
    assert headers["table"] == "users" and headers["operation"] == "INSERT" and "/" in headers["lsn"] and int(headers["xid"]) > 0
    assert stored[0].id >> 64 == stored[1].id >> 64  # same transaction, same commit LSN
    committed = [row[0] for row in query(pg_dsn, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD')")]
    assert received[0]["timestamp"].startswith(committed[0]) and received[0]["timestamp"].endswith("Z")
    assert received[0]["timestamp"] == received[1]["timestamp"] < received[2]["timestamp"]  # one commit, one time


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_full_identity_truncate_and_operation_filter(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v text); ALTER TABLE t REPLICA IDENTITY FULL")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"], capture_operations=["UPDATE", "TRUNCATE"])
    service = start_service(config)
    try:
        _wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO t VALUES (1, 'x')")
        execute(pg_dsn, "UPDATE t SET v = 'y'")
        execute(pg_dsn, "TRUNCATE t")
        wait_for(lambda: len(bodies(iggy, "t")) >= 2, 30, message="update and truncate")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    received = bodies(iggy, "t")
    assert [m["operation_type"] for m in received] == ["UPDATE", "TRUNCATE"]
    assert received[0]["old_data"] == {"id": 1, "v": "x"} and received[0]["data"] == {"id": 1, "v": "y"}
    assert received[1]["data"] is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unchanged_toast_is_marked_not_null(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE docs (id int PRIMARY KEY, body text, n int)")
    execute(pg_dsn, "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["docs"])
    service = start_service(config)
    try:
        _wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO docs VALUES (1, repeat('x', 10000), 1)")
        execute(pg_dsn, "UPDATE docs SET n = 2")
        wait_for(lambda: len(bodies(iggy, "docs")) >= 2, 30, message="insert and update")
    finally:
        assert stop_service(service) == 0
    insert, update = bodies(iggy, "docs")
    assert insert["data"]["body"] == "x" * 10000
    assert update["data"] == {"id": 1, "body": "__pgsource_unchanged_toast__", "n": 2}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_kill_9_while_transactions_run_loses_nothing(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE ev (id int PRIMARY KEY, v int)")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["ev"], batch_size=50)
    iggy.set_latency(0.02)
    service = start_service(config)
    _wait_until_capturing(pg_dsn, transport)
    for start in range(0, 1500, 100):
        execute(pg_dsn, "INSERT INTO ev SELECT g, g FROM generate_series(%s, %s) g", (start + 1, start + 100))
    execute(pg_dsn, "INSERT INTO ev SELECT g, g FROM generate_series(1501, 3000) g")  # one transaction of 30 batches
    wait_for(lambda: len(bodies(iggy, "ev")) >= 300, 30, message="a part of the stream")
    kill_service(service)
    for start in range(3000, 4000, 100):  # written while pgsource is down
        execute(pg_dsn, "INSERT INTO ev SELECT g, g FROM generate_series(%s, %s) g", (start + 1, start + 100))
    iggy.set_latency(0)
    service = start_service(config)
    try:
        wait_for(lambda: len({m.id for m in iggy.messages("pg", "ev")}) >= 4000, 60, message="every change after restart")
    finally:
        assert stop_service(service) == 0
    by_id: dict[int, set] = {}
    for message in iggy.messages("pg", "ev"):
        by_id.setdefault(message.id, set()).add(json.loads(message.payload)["data"]["id"])
    assert all(len(rows) == 1 for rows in by_id.values())
    assert sorted(r for rows in by_id.values() for r in rows) == list(range(1, 4001))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cdc_values_equal_polling_values(pg_dsn, iggy, tmp_path, transport):
    execute(
        pg_dsn,
        "CREATE TABLE v (id int PRIMARY KEY, n numeric, f float8, ts timestamp, tz timestamptz, d date, iv interval,"
        " b bytea, a text[], j jsonb, u uuid, ok bool)",
    )
    row = ("12345678901234567890.123456789", "NaN", "2024-01-15 10:30:00.120", "2024-01-15 10:30:00.5+02", "2024-02-29",
           "1 day 02:00:00.5", b"\x00\xff", ["a b", None, 'q"'], '{"k": [1, 2.50]}', "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", False)
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["v"])
    service = start_service(config)
    try:
        _wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO v VALUES (1, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
        wait_for(lambda: bodies(iggy, "v"), 30, message="the insert")
    finally:
        assert stop_service(service) == 0
    cdc_data = bodies(iggy, "v")[0]["data"]
    polled = query(pg_dsn, "SELECT row_to_json(s)::text FROM (SELECT id, n, f, ts, tz, d, iv,"
                   " translate(encode(b, 'base64'), E'\\n', '') AS b, a, j, u, ok FROM v) s")[0][0]
    assert cdc_data == json.loads(polled, parse_float=Decimal)
    assert cdc_data["n"] == Decimal("12345678901234567890.123456789") and cdc_data["f"] == "NaN"


NESTED_BYTEA_SCHEMA = """
CREATE TYPE blob_pair AS (label text, raw bytea);
CREATE DOMAIN small_blob AS bytea;
CREATE TYPE nest AS (inner_pair blob_pair, pairs blob_pair[], blobs small_blob[], n int);
CREATE TABLE nb (id int PRIMARY KEY, p blob_pair, q nest, ps blob_pair[], e bytea[], d small_blob,
                 dd small_blob[], plain int[], t text)
"""
NESTED_BYTEA_ROWS = """
INSERT INTO nb VALUES
 (1, ('a', '\\x00ff'), (('b', '\\x01'), ARRAY[('c', '\\x02')::blob_pair, NULL, ('d', NULL)::blob_pair],
     ARRAY['\\x03'::small_blob, NULL], 5),
     ARRAY[('x', '\\x0304')::blob_pair], '{}', '\\x04', ARRAY['\\x05'::small_blob, NULL], '{1,2}', 'plain'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, (NULL, NULL), (NULL, '{}', '{}', NULL), '{}', ARRAY[NULL]::bytea[], '', '{}', '{}', '')
"""


def test_bytea_nested_in_composites_and_arrays_is_base64_in_polling_as_in_cdc(pg_dsn, iggy, tmp_path):
    """Polling builds row JSON in PostgreSQL, CDC decodes pgoutput text: for bytea inside
    composites, arrays of composites and domains, at any depth, both send the same base64."""
    execute(pg_dsn, NESTED_BYTEA_SCHEMA)
    (tmp_path / "cdc").mkdir()
    (tmp_path / "poll").mkdir()
    cdc = start_service(cdc_config(tmp_path / "cdc", pg_dsn, iggy, "replication", tables=["nb"]))
    try:
        _wait_until_capturing(pg_dsn, "replication")
        execute(pg_dsn, NESTED_BYTEA_ROWS)
        wait_for(lambda: len(bodies(iggy, "nb")) >= 3, 30, message="3 changes")
    finally:
        assert stop_service(cdc) == 0
    polling = start_service(write_config(tmp_path / "poll", pg_dsn, iggy.address,
                                         source={"tables": ["nb"], "lag": "1s"},  # ids set by the test
                                         iggy={"stream": "polled"}))
    try:
        wait_for(lambda: len(bodies(iggy, "nb", stream="polled")) >= 3, 30, message="3 polled rows")
    finally:
        assert stop_service(polling) == 0
    changed = [m["data"] for m in bodies(iggy, "nb")]
    polled = [m["data"] for m in bodies(iggy, "nb", stream="polled")]
    assert polled == changed
    first = polled[0]
    assert first["p"] == {"label": "a", "raw": "AP8="}
    assert first["q"]["inner_pair"] == {"label": "b", "raw": "AQ=="}
    assert first["q"]["pairs"] == [{"label": "c", "raw": "Ag=="}, None, {"label": "d", "raw": None}]
    assert first["q"]["blobs"] == ["Aw==", None] and first["e"] == [] and first["d"] == "BA=="
    assert first["ps"] == [{"label": "x", "raw": "AwQ="}] and first["dd"] == ["BQ==", None] and first["plain"] == [1, 2]
    assert polled[1] == {"id": 2, **{k: None for k in ("p", "q", "ps", "e", "d", "dd", "plain", "t")}}
    assert polled[2]["p"] == {"label": None, "raw": None} and polled[2]["q"] == {"inner_pair": None, "pairs": [], "blobs": [], "n": None}
    assert polled[2]["e"] == [None] and polled[2]["d"] == ""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_idle_tables_do_not_hold_wal(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE captured (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY, pad text)")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["captured"])
    service = start_service(config)
    try:
        wait_for(lambda: query(pg_dsn, "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'iggy_slot'"), 30)
        before = query(pg_dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'iggy_slot'")[0][0]
        execute(pg_dsn, "INSERT INTO busy (pad) SELECT repeat('x', 500) FROM generate_series(1, 5000)")
        current = query(pg_dsn, "SELECT pg_current_wal_flush_lsn()::text")[0][0]
        wait_for(
            lambda: query(pg_dsn, "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                          " WHERE slot_name = 'iggy_slot'", (current,))[0][0],
            30, message="the confirmed LSN to pass the writes to an uncaptured table",
        )
    finally:
        assert stop_service(service) == 0
    assert before != current
    assert bodies(iggy, "captured") == []


def test_slot_of_another_plugin_stops_startup(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    execute(pg_dsn, "SELECT pg_create_logical_replication_slot('iggy_slot', 'test_decoding')")
    config = cdc_config(tmp_path, pg_dsn, iggy, "sql", tables=["t"])
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    assert "replication slot iggy_slot uses plugin test_decoding, not pgoutput" in result.stderr
    assert query(pg_dsn, "SELECT plugin FROM pg_replication_slots WHERE slot_name = 'iggy_slot'") == [("test_decoding",)]


def test_slot_in_use_elsewhere_stops_startup(pg_dsn, iggy, tmp_path):
    import psycopg2
    import psycopg2.extras

    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION iggy_publication FOR TABLE t")
    execute(pg_dsn, "SELECT pg_create_logical_replication_slot('iggy_slot', 'pgoutput')")
    holder = psycopg2.connect(pg_dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        holder.cursor().start_replication(slot_name="iggy_slot", decode=False,
                                          options={"proto_version": "1", "publication_names": "iggy_publication"})
        wait_for(lambda: query(pg_dsn, "SELECT active FROM pg_replication_slots")[0][0], 10, message="the slot held")
        config = cdc_config(tmp_path, pg_dsn, iggy, "sql", tables=["t"])
        result = run_cli("run", "--config", str(config))
    finally:
        holder.close()
    assert result.returncode == 3
    assert "replication slot iggy_slot is in use by another process" in result.stderr


def test_lost_slot_is_reported_not_recreated(tmp_path, iggy):
    from pgsource_testkit.postgres import LocalPostgres

    with LocalPostgres(settings={"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB", "min_wal_size": "32MB"}) as cluster:
        dsn = cluster.dsn()
        execute(dsn, "CREATE TABLE t (id int PRIMARY KEY, pad text)")
        execute(dsn, "SELECT pg_create_logical_replication_slot('iggy_slot', 'pgoutput')")
        for _ in range(4):  # more WAL than the slot may keep, then checkpoints remove it
            execute(dsn, "INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g ON CONFLICT (id) DO UPDATE SET pad = excluded.pad || 'y'")
            execute(dsn, "SELECT pg_switch_wal(); CHECKPOINT")
        assert query(dsn, "SELECT wal_status FROM pg_replication_slots")[0][0] == "lost"
        config = cdc_config(tmp_path, dsn, iggy, "sql", tables=["t"])
        result = run_cli("run", "--config", str(config))
        assert query(dsn, "SELECT slot_name, wal_status FROM pg_replication_slots") == [("iggy_slot", "lost")]
    assert result.returncode == 3
    assert "replication slot iggy_slot is invalidated (wal_status=lost)" in result.stderr


def test_a_publication_the_user_made_without_a_table_gets_it(pg_dsn, iggy, tmp_path):
    """It used to stop start-up ("lacks table(s) b"), whose hint led to a table in two publications;
    now b joins the publication (the slot is created after it, so nothing is missed)."""
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    execute(pg_dsn, "CREATE PUBLICATION iggy_publication FOR TABLE a")
    config = cdc_config(tmp_path, pg_dsn, iggy, "sql", tables=["a", "b"])
    service = start_service(config)
    try:
        _wait_until_capturing(pg_dsn, "sql")
        execute(pg_dsn, "INSERT INTO b VALUES (1)")
        wait_for(lambda: bodies(iggy, "b"), 30, message="b's change")
    finally:
        assert stop_service(service) == 0
    assert query(pg_dsn, "SELECT tablename FROM pg_publication_tables ORDER BY 1") == [("a",), ("b",)]


def test_wal_level_other_than_logical_is_explained(tmp_path, iggy):
    from pgsource_testkit.postgres import LocalPostgres

    with LocalPostgres(settings={"wal_level": "replica"}) as cluster:
        execute(cluster.dsn(), "CREATE TABLE t (id int PRIMARY KEY)")
        config = cdc_config(tmp_path, cluster.dsn(), iggy, "sql", tables=["t"])
        result = run_cli("check", "--config", str(config))
    assert result.returncode == 3
    assert "wal_level is 'replica'; CDC needs 'logical'" in result.stderr


def test_pg_replicate_backend_without_its_package_fails_clearly(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    config = cdc_config(tmp_path, pg_dsn, iggy, "sql", tables=["t"], cdc_backend="pg_replicate")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    assert "cdc_backend: 'pg_replicate'" in result.stderr and "Use cdc_backend: builtin" in result.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_initial_snapshot_then_stream_without_gap_or_overlap(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE s (id int PRIMARY KEY, v text)")
    execute(pg_dsn, "INSERT INTO s SELECT g, 'old' FROM generate_series(1, 500) g")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["s"], snapshot="initial", batch_size=100)
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "s")) >= 500, 30, message="the snapshot")
        execute(pg_dsn, "INSERT INTO s VALUES (501, 'new')")
        execute(pg_dsn, "UPDATE s SET v = 'changed' WHERE id = 1")
        wait_for(lambda: len(bodies(iggy, "s")) >= 502, 30, message="changes after the snapshot")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    received = bodies(iggy, "s")
    assert [m["operation_type"] for m in received[:500]] == ["SELECT"] * 500
    assert sorted(m["data"]["id"] for m in received[:500]) == list(range(1, 501))
    assert ops(received[500:]) == [("INSERT", 501), ("UPDATE", 1)]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_several_workers_use_one_slot_each_and_drop_slot_removes_them(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"mode": "cdc", "tables": ["a", "b"], "cdc_transport": transport},
                          workers={"wa": ["a"], "wb": ["b"]})
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport, slots=2)
        execute(pg_dsn, "INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)")
        wait_for(lambda: bodies(iggy, "a") and bodies(iggy, "b"), 30, message="one change per table")
    finally:
        assert stop_service(service) == 0
    slots = sorted(r[0] for r in query(pg_dsn, "SELECT slot_name FROM pg_replication_slots"))
    assert slots == ["iggy_slot_wa", "iggy_slot_wb"]
    result = run_cli("drop-slot", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert query(pg_dsn, "SELECT count(*) FROM pg_replication_slots")[0][0] == 0
    assert query(pg_dsn, "SELECT count(*) FROM pg_publication")[0][0] == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_column_of_a_type_created_after_start(pg_dsn, iggy, tmp_path, transport):
    """The SQL transport cannot query the catalog during its COPY: it peeks again, skipping what it fed."""
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    service = start_service(cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"]))
    try:
        _wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO t VALUES (1, 'before')")
        execute(pg_dsn, "BEGIN; INSERT INTO t SELECT g, 'x' FROM generate_series(2, 3000) g;"
                        " CREATE TYPE mood AS ENUM ('ok', 'happy'); ALTER TABLE t ADD COLUMN m mood;"
                        " INSERT INTO t VALUES (3001, 'after', 'happy'); COMMIT")
        wait_for(lambda: len(bodies(iggy, "t")) >= 3002, 30, message="3001 changes and the schema change")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    received = bodies(iggy, "t")
    change = received.pop(-2)  # announced before the first change of the new shape (issue 20)
    assert change["operation_type"] == "SCHEMA_CHANGE" and change["data"]["columns"][-1] == {"name": "m", "type": "mood"}
    assert [m["data"]["id"] for m in received] == list(range(1, 3002))  # each once, in order
    assert received[-1]["data"] == {"id": 3001, "v": "after", "m": "happy"}
    assert received[-2]["data"] == {"id": 3000, "v": "x"}
