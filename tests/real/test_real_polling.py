"""Polling end to end against the real apache/iggy:0.9.0 and postgres:15 containers."""

from __future__ import annotations

import time

import pytest

from tests.docker.reader import bodies, message_count, read_topic
from tests.support import execute, kill_service, start_service, stop_service, wait_for, write_config

# image pulls and `compose up` happen in the first test's setup: allow for them
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def _ids(messages: list[dict]) -> list[int]:
    return [m["data"]["id"] for m in messages]


def test_several_tables_arrive_exactly_once_in_order(real, real_pg_dsn, real_stream, tmp_path):
    execute(real_pg_dsn, "CREATE TABLE users (id bigserial PRIMARY KEY, name text)")
    execute(real_pg_dsn, "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2))")
    execute(real_pg_dsn, "INSERT INTO users (name) SELECT 'user ' || g FROM generate_series(1, 2500) g")
    execute(real_pg_dsn, "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 1200) g")
    config = write_config(
        tmp_path, real_pg_dsn, real.iggy_address,
        source={"tables": ["users", "orders"], "batch_size": 300},
        iggy={"stream": real_stream, "partitions": 1}, workers=2,
    )
    address = real.iggy_address
    service = start_service(config)
    try:
        wait_for(lambda: message_count(address, real_stream, "users") >= 2500
                 and message_count(address, real_stream, "orders") >= 1200, 120, 0.5, message="all rows")
        execute(real_pg_dsn, "INSERT INTO users (name) VALUES ('late')")
        wait_for(lambda: message_count(address, real_stream, "users") >= 2501, 60, 0.5, message="a row inserted while running")
        time.sleep(1)  # anything extra would show up now
    finally:
        assert stop_service(service) == 0
    users = read_topic(address, real_stream, "users")
    orders = bodies(address, real_stream, "orders")
    assert _ids([m.body() for m in users]) == list(range(1, 2502))  # once each, in offset order
    assert _ids(orders) == list(range(1, 1201))
    assert len({m.id for m in users}) == 2501  # distinct deterministic ids
    first, last = users[0].body(), users[-1].body()
    assert first["table_name"] == "users" and first["operation_type"] == "SELECT" and first["old_data"] is None
    assert last["data"]["name"] == "late"
    assert str(orders[1]["data"]["amount"]) == "3.00"  # NUMERIC with its digits, not a float


def test_kill_9_mid_stream_loses_nothing_and_resends_with_the_same_ids(real, real_pg_dsn, real_stream, tmp_path):
    total, batch = 100_000, 200
    execute(real_pg_dsn, "CREATE TABLE big (id int PRIMARY KEY, payload text)")
    execute(real_pg_dsn, f"INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, {total}) g")
    config = write_config(
        tmp_path, real_pg_dsn, real.iggy_address,
        source={"tables": ["big"], "batch_size": batch}, iggy={"stream": real_stream, "partitions": 2},
    )
    address = real.iggy_address
    service = start_service(config)
    try:
        wait_for(lambda: message_count(address, real_stream, "big") >= 2000, 120, 0.02, message="a first part of the table")
    finally:
        kill_service(service)
    before = message_count(address, real_stream, "big")
    assert before < total, "the service finished before the kill; the test proves nothing (raise `total`)"

    service = start_service(config)
    try:
        wait_for(lambda: message_count(address, real_stream, "big") >= total, 180, 0.5, message="as many messages as rows")
        wait_for(lambda: len({m.id for m in read_topic(address, real_stream, "big")}) >= total, 120, 2,
                 message="every row after the restart")
        time.sleep(1)  # anything extra would show up now
    finally:
        assert stop_service(service) == 0

    stored = read_topic(address, real_stream, "big")
    rows_of_id: dict[int, set[int]] = {}
    ids_of_row: dict[int, set[int]] = {}
    for message in stored:
        row = message.body()["data"]["id"]
        rows_of_id.setdefault(message.id, set()).add(row)
        ids_of_row.setdefault(row, set()).add(message.id)
    assert sorted(ids_of_row) == list(range(1, total + 1))  # nothing lost
    assert all(len(rows) == 1 for rows in rows_of_id.values())  # one id ↔ one row ...
    assert all(len(ids) == 1 for ids in ids_of_row.values())  # ... and a re-sent row keeps its id
    duplicates = len(stored) - len(ids_of_row)
    assert duplicates <= 8 * batch + batch  # at most the unacknowledged batches (max_in_flight × batch_size)
