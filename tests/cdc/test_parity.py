"""CDC side of the Rust connector's keys: payload_column passthrough, and the per-table column lists
and row filters, which give CDC the same messages polling gives for the same rows."""

from __future__ import annotations

import json

import pytest

from pgsource.rows import copyjson
from tests.cdc.common import TRANSPORTS, cdc_config, wait_until_capturing
from tests.support import bodies, execute, run_cli, start_service, stop_service, wait_for, write_config


def _raw(iggy, topic: str, stream: str = "pg") -> list:
    if stream not in iggy.streams() or topic not in iggy.topics(stream):
        return []
    return iggy.messages(stream, topic)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_insert_update_and_delete_with_a_payload_column(pg_dsn, iggy, tmp_path, transport):
    """INSERT and UPDATE send the new row's value as the message, byte for byte; a DELETE sends nothing
    (documented: an outbox row removed is not a message to repeat); headers name table and operation."""
    execute(pg_dsn, "CREATE TABLE outbox (id serial PRIMARY KEY, body jsonb NOT NULL);"
                    " ALTER TABLE outbox REPLICA IDENTITY FULL")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["outbox"],
                        payload_column="body", payload_format="json_direct", sections={"iggy": {"partitions": 3}})
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, """INSERT INTO outbox (body) VALUES ('{"type": "created", "amount": 10.50}'), ('{"type": "x"}')""")
        execute(pg_dsn, """UPDATE outbox SET body = '{"type": "changed", "n": [1, 2]}' WHERE id = 1""")
        execute(pg_dsn, "DELETE FROM outbox WHERE id = 2")
        execute(pg_dsn, """INSERT INTO outbox (body) VALUES ('{"type": "last"}')""")
        wait_for(lambda: len(_raw(iggy, "outbox")) >= 4, 30, message="4 messages")
    finally:
        assert stop_service(service) == 0
    messages = sorted(_raw(iggy, "outbox"), key=lambda m: m.id)  # ids follow commit order
    assert [m.payload for m in messages] == [
        b'{"type":"created","amount":10.50}', b'{"type":"x"}', b'{"n":[1,2],"type":"changed"}', b'{"type":"last"}',
    ]
    assert [m.headers["operation"] for m in messages] == ["INSERT", "INSERT", "UPDATE", "INSERT"]
    assert {m.headers["table"] for m in messages} == {"outbox"}
    by_row = {}
    for message, row in zip(messages, [1, 2, 1, 3]):
        by_row.setdefault(row, set()).add(message.partition)
    assert all(len(partitions) == 1 for partitions in by_row.values())  # partitioned by key as enveloped messages


def test_a_payload_column_needs_full_identity_when_updates_are_captured(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE outbox (id serial PRIMARY KEY, body bytea NOT NULL)")
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["outbox"], payload_column="body")
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(config))
        assert result.returncode == 3, result.stderr
        assert "payload_column 'body' in cdc mode needs REPLICA IDENTITY FULL when UPDATE is captured" in result.stderr
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["outbox"], payload_column="body",
                        capture_operations=["INSERT", "DELETE"])
    assert run_cli("check", "--config", str(config)).returncode == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_column_lists_and_row_filters_give_cdc_the_messages_polling_gives(pg_dsn, iggy, tmp_path, transport):
    # The filter's columns are in the replica identity: PostgreSQL 15 refuses the table's UPDATE and DELETE otherwise
    execute(pg_dsn, "CREATE TABLE people (id serial PRIMARY KEY, name text, email text NOT NULL, ssn text, active bool NOT NULL);"
                    " CREATE UNIQUE INDEX people_identity ON people (id, active, email);"
                    " ALTER TABLE people REPLICA IDENTITY USING INDEX people_identity")
    tables = [{"name": "people", "exclude_columns": ["ssn"], "row_filter": "active AND email LIKE '%@x.org'"}]
    (tmp_path / "cdc").mkdir()
    (tmp_path / "poll").mkdir()
    cdc = start_service(cdc_config(tmp_path / "cdc", pg_dsn, iggy, transport, tables=tables,
                                   capture_operations=["INSERT"], include_metadata=False))
    try:
        wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO people (name, email, ssn, active) SELECT 'p' || g, g || '@x.org', 'secret', g % 2 = 0"
                        " FROM generate_series(1, 10) g")
        execute(pg_dsn, "INSERT INTO people (name, email, ssn, active) VALUES ('q', 'q@y.org', 'secret', true)")
        wait_for(lambda: len(bodies(iggy, "people")) >= 5, 30, message="5 changes")
    finally:
        assert stop_service(cdc) == 0
    polling_config = write_config(tmp_path / "poll", pg_dsn, iggy.address,
                                  source={"tables": tables, "include_metadata": False}, iggy={"stream": "polled"})
    polling = start_service(polling_config)
    try:
        wait_for(lambda: len(bodies(iggy, "people", stream="polled")) >= 5, 30, message="5 polled rows")
    finally:
        assert stop_service(polling) == 0
    if copyjson.NATIVE:  # the column list and the filter go through polling's COPY read, not around it
        assert "people from the start, read by COPY" in polling_config.with_suffix(".log").read_text()
    changes = [m.payload for m in _raw(iggy, "people")]
    polled = [m.payload for m in _raw(iggy, "people", stream="polled")]
    assert changes == polled
    assert [json.loads(p) for p in changes] == [
        {"id": g, "name": f"p{g}", "email": f"{g}@x.org", "active": True} for g in range(2, 11, 2)
    ]


def test_a_column_list_without_the_key_is_refused_in_cdc(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE people (id serial PRIMARY KEY, name text)")
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=[{"name": "people", "columns": ["name"]}])
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3
    assert "Column list used by the publication does not cover the replica identity" in result.stderr
