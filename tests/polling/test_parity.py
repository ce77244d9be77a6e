"""Parity with Iggy's Rust postgres_source connector: its keys and the cases of its integration tests
(core/integration/tests/connectors/postgres/postgres_source.rs), checked by the exact bytes the SDK reads back."""

from __future__ import annotations

import asyncio
import json

import apache_iggy as iggy_sdk
import pytest

from tests.support import execute, query, run_cli, start_service, stop_service, wait_for, write_config


def sdk_messages(address: str, stream: str, topic: str) -> list[tuple[int, bytes]]:
    """(id, payload) of every message of a topic, read back through the SDK (partition 0, from offset 0)."""

    async def read() -> list[tuple[int, bytes]]:
        client = iggy_sdk.IggyClient(iggy_sdk.TcpConfig(server_address=address))
        await client.connect()
        await client.login_user("iggy", "iggy")
        if await client.get_stream(stream) is None or await client.get_topic(stream, topic) is None:
            return []
        out: list[tuple[int, bytes]] = []
        while True:
            polled = await client.poll_messages(
                stream, topic, consumer=iggy_sdk.Consumer.Single("parity"),
                polling_strategy=iggy_sdk.PollingStrategy.Offset(len(out)), count=1000, auto_commit=False, partition_id=0,
            )
            if not polled:
                return out
            out += [(message.id(), message.payload()) for message in polled]

    return asyncio.run(read())


def _payloads(iggy, topic: str) -> list[bytes]:
    return [payload for _, payload in sdk_messages(iggy.address, "pg", topic)]


def _config(directory, *args, **kwargs):
    directory.mkdir(parents=True, exist_ok=True)
    return write_config(directory, *args, **kwargs)


def _stored(iggy, stream: str, topic: str) -> int:
    """Messages the stand-in holds in a topic, on every partition (0 before the topic exists)."""
    return len(iggy.messages(stream, topic)) if stream in iggy.streams() and topic in iggy.topics(stream) else 0


def _run_until(config, iggy, topic: str, count: int, timeout: float = 30) -> None:
    service = start_service(config)
    try:
        wait_for(lambda: len(_payloads(iggy, topic)) >= count, timeout, interval=0.2, message=f"{count} messages")
    finally:
        assert stop_service(service) == 0


def test_json_rows_arrive_as_the_rows_json(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text, score numeric(6,2), tags text[])")
    execute(pg_dsn, "INSERT INTO users (name, score, tags) VALUES ('ann', 1.50, '{a,b}'), ('bo', NULL, '{}')")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["users"], "include_metadata": False})
    _run_until(config, iggy, "users", 2)
    assert _payloads(iggy, "users") == [
        b'{"id":1,"name":"ann","score":1.50,"tags":["a","b"]}',
        b'{"id":2,"name":"bo","score":null,"tags":[]}',
    ]


def test_bytea_rows_arrive_as_raw_payloads(pg_dsn, iggy, tmp_path):
    rows = [bytes(range(256)), b"\x00", "héllo".encode()]
    execute(pg_dsn, "CREATE TABLE message_queue (id serial PRIMARY KEY, payload bytea NOT NULL)")
    for row in rows:
        execute(pg_dsn, "INSERT INTO message_queue (payload) VALUES (%s)", (row,))
    for payload_format in ("bytea", "raw"):  # raw: the Rust connector's alias
        config = _config(tmp_path / payload_format, pg_dsn, iggy.address,
                              source={"tables": ["message_queue"], "payload_column": "payload", "payload_format": payload_format},
                              iggy={"topic": f"q_{payload_format}"})
        _run_until(config, iggy, f"q_{payload_format}", 3)
        assert _payloads(iggy, f"q_{payload_format}") == rows


def test_jsonb_rows_arrive_as_compact_json_with_every_digit(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY, data jsonb NOT NULL, raw json)")
    execute(pg_dsn, """INSERT INTO events (data) VALUES
        ('{"user": "ann", "n": 12345678901234567890.123456789, "list": [1, 2.50, {"k": null}], "s": "a \\"b\\" c"}'),
        ('[true, false]')""")
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["events"], "payload_column": "data", "payload_format": "jsonb"})
    _run_until(config, iggy, "events", 2)
    assert _payloads(iggy, "events") == [
        b'{"n":12345678901234567890.123456789,"s":"a \\"b\\" c","list":[1,2.50,{"k":null}],"user":"ann"}',
        b"[true,false]",
    ]


def test_text_payloads_arrive_as_their_utf8(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE logs (id serial PRIMARY KEY, message text NOT NULL)")
    execute(pg_dsn, "INSERT INTO logs (message) VALUES ('first line'), ('zweite Zeile ü ✓')")
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["logs"], "payload_column": "message", "payload_format": "text"})
    _run_until(config, iggy, "logs", 2)
    assert _payloads(iggy, "logs") == [b"first line", "zweite Zeile ü ✓".encode()]


@pytest.mark.parametrize("mode", ["delete_after_read", "processed_column"])
def test_delete_and_mark_with_a_payload_column(pg_dsn, iggy, tmp_path, mode):
    execute(pg_dsn, "CREATE TABLE outbox (id serial PRIMARY KEY, body bytea NOT NULL, is_processed bool NOT NULL DEFAULT false)")
    execute(pg_dsn, "INSERT INTO outbox (body) SELECT convert_to('event ' || g, 'UTF8') FROM generate_series(1, 25) g")
    extra = {"delete_after_read": True} if mode == "delete_after_read" else {"processed_column": "is_processed"}
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["outbox"], "payload_column": "body", "batch_size": 10, **extra})
    service = start_service(config)
    try:
        wait_for(lambda: len(_payloads(iggy, "outbox")) >= 25, 30, message="25 messages")
        if mode == "delete_after_read":
            wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM outbox")[0][0] == 0, 30, message="rows deleted")
        else:
            wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM outbox WHERE is_processed")[0][0] == 25, 30, message="marks")
    finally:
        assert stop_service(service) == 0
    assert _payloads(iggy, "outbox") == [f"event {g}".encode() for g in range(1, 26)]


def test_state_persists_across_a_restart(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE logs (id serial PRIMARY KEY, message text NOT NULL)")
    execute(pg_dsn, "INSERT INTO logs (message) SELECT 'before ' || g FROM generate_series(1, 20) g")
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["logs"], "payload_column": "message", "payload_format": "text"})
    _run_until(config, iggy, "logs", 20)
    execute(pg_dsn, "INSERT INTO logs (message) SELECT 'after ' || g FROM generate_series(1, 20) g")
    _run_until(config, iggy, "logs", 40)
    received = _payloads(iggy, "logs")
    assert received == [f"before {g}".encode() for g in range(1, 21)] + [f"after {g}".encode() for g in range(1, 21)]


def test_message_ids_and_key_partitions_stay_as_for_enveloped_messages(pg_dsn, iggy, tmp_path):
    """A payload column changes the body only: ids (from the cursor) and partitions (from the key) are the same."""
    execute(pg_dsn, "CREATE TABLE q (id serial PRIMARY KEY, body text NOT NULL)")
    execute(pg_dsn, "INSERT INTO q (body) SELECT 'm' || g FROM generate_series(1, 40) g")
    for name, extra in (("enveloped", {}), ("raw", {"payload_column": "body", "payload_format": "text"})):
        config = _config(tmp_path / name, pg_dsn, iggy.address, source={"tables": ["q"], **extra},
                              iggy={"stream": name, "partitions": 4})
        service = start_service(config)
        try:
            wait_for(lambda n=name: _stored(iggy, n, "q") >= 40, 30, message=f"{name} messages")
        finally:
            assert stop_service(service) == 0
    placed = {name: sorted((m.id, m.partition) for m in iggy.messages(name, "q")) for name in ("enveloped", "raw")}
    assert placed["enveloped"] == placed["raw"]
    assert len({partition for _, partition in placed["raw"]}) == 4


def test_a_null_or_empty_payload_stops_naming_table_and_row(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE q (id serial PRIMARY KEY, body bytea)")
    execute(pg_dsn, "INSERT INTO q (body) VALUES ('\\x01'), (NULL)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["q"], "payload_column": "body", "batch_size": 1})
    service = start_service(config)
    assert service.wait(60) == 4
    log = config.with_suffix(".log").read_text()
    assert "table q: row 2 (message id 0x" in log and "has a NULL payload_column 'body'" in log
    assert _payloads(iggy, "q") == [b"\x01"]  # the row before it was delivered
    execute(pg_dsn, "CREATE TABLE e (id serial PRIMARY KEY, body text)")
    execute(pg_dsn, "INSERT INTO e (body) VALUES ('')")
    config = _config(tmp_path / "e", pg_dsn, iggy.address,
                          source={"tables": ["e"], "payload_column": "body", "payload_format": "text"})
    service = start_service(config)
    assert service.wait(60) == 4
    assert "table e: row 1 (message id 0x" in config.with_suffix(".log").read_text()


def test_a_payload_column_of_the_wrong_type_is_refused_by_check_and_run(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE q (id serial PRIMARY KEY, body text NOT NULL)")
    config = write_config(tmp_path, pg_dsn, "127.0.0.1:1", source={"tables": ["q"], "payload_column": "body"})
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(config))
        assert result.returncode == 3, result.stderr
        assert "table q: payload_column 'body' is text; payload_format bytea reads bytea" in result.stderr


def test_primary_key_column_names_the_key_of_delete_after_read(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE q (seq bigserial PRIMARY KEY, ref uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),"
                    " grp int NOT NULL, body text)")
    execute(pg_dsn, "INSERT INTO q (grp, body) SELECT g % 3, 'b' || g FROM generate_series(1, 12) g")
    bad = _config(tmp_path / "bad", pg_dsn, iggy.address,
                       source={"tables": ["q"], "tracking_column": "seq", "delete_after_read": True, "primary_key_column": "grp"})
    result = run_cli("check", "--config", str(bad))
    assert result.returncode == 3 and "primary_key_column 'grp' must be NOT NULL and unique on its own" in result.stderr
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["q"], "tracking_column": "seq", "delete_after_read": True, "primary_key_column": "ref"})
    service = start_service(config)
    try:
        wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM q")[0][0] == 0, 30, message="every row deleted by ref")
    finally:
        assert stop_service(service) == 0
    assert sorted(json.loads(p)["data"]["body"] for p in _payloads(iggy, "q")) == sorted(f"b{g}" for g in range(1, 13))


def test_custom_query_takes_the_rust_connectors_placeholders(pg_dsn, iggy, tmp_path):
    """$table (quoted identifier), '$offset'/$offset, $limit and $now are bound or quoted, never spliced."""
    execute(pg_dsn, 'CREATE TABLE "Jobs" (id serial PRIMARY KEY, run_at timestamptz NOT NULL, name text)')
    execute(pg_dsn, """INSERT INTO "Jobs" (run_at, name) SELECT now() - interval '1 hour', 'due ' || g FROM generate_series(1, 7) g""")
    execute(pg_dsn, """INSERT INTO "Jobs" (run_at, name) VALUES (now() + interval '1 day', 'not yet')""")
    custom = ("SELECT id, name FROM $table WHERE id > '$offset' AND (run_at IS NULL OR run_at <= $now)"
              " ORDER BY id LIMIT $limit")
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["Jobs"], "custom_query": custom, "initial_offset": 0, "batch_size": 3,
                                  "include_metadata": False})
    _run_until(config, iggy, "Jobs", 7)
    assert [json.loads(p)["name"] for p in _payloads(iggy, "Jobs")] == [f"due {g}" for g in range(1, 8)]


def test_columns_exclude_columns_and_row_filter_shape_polling(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE people (id serial PRIMARY KEY, name text, email text, ssn text, active bool NOT NULL)")
    execute(pg_dsn, "INSERT INTO people (name, email, ssn, active) SELECT 'p' || g, g || '@x.org', 'secret', g % 2 = 0"
                    " FROM generate_series(1, 10) g")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={
        "tables": [{"name": "people", "exclude_columns": ["ssn"], "row_filter": "active AND email LIKE '%@x.org'"}],
        "include_metadata": False,
    })
    _run_until(config, iggy, "people", 5)
    received = [json.loads(p) for p in _payloads(iggy, "people")]
    assert received == [{"id": g, "name": f"p{g}", "email": f"{g}@x.org", "active": True} for g in range(2, 11, 2)]
    config = _config(tmp_path / "only", pg_dsn, iggy.address, source={
        "tables": [{"name": "people", "columns": ["id", "name"]}], "include_metadata": False}, iggy={"topic": "names"})
    _run_until(config, iggy, "names", 10)
    assert json.loads(_payloads(iggy, "names")[0]) == {"id": 1, "name": "p1"}


def test_verbose_logging_logs_every_batch(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO t SELECT FROM generate_series(1, 9)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"], "batch_size": 4, "verbose_logging": True})
    _run_until(config, iggy, "t", 9)
    log = config.with_suffix(".log").read_text()
    assert "t: 4 row(s) after the start, up to ('4',)" in log and "t: 1 row(s) after ('8',), up to ('9',)" in log
