"""Polling end to end against a real Iggy server: exact values, and kill -9 with a restart."""

from __future__ import annotations

import pytest

from tests.real.conftest import topics_for
from tests.real.reader import message_count, read_topic
from tests.support import (
    committed_through,
    execute,
    kill_service,
    start_service,
    stop_service,
    wait_for,
    write_config,
)

# The tables' ids are set by the test, one writer at a time: no transaction commits late, and
# the late-commit guard (which refuses client-set ids) is not what this suite checks: late_commits: off.

pytestmark = pytest.mark.timeout(900)  # a compose run pulls images in the first test's setup


def _ids(messages) -> list[int]:
    return [m.body()["data"]["id"] for m in messages]


def test_several_tables_arrive_exactly_once_in_order_with_exact_values(real_iggy, real_pg_dsn, real_stream, tmp_path):
    execute(real_pg_dsn, "CREATE TABLE users (id bigserial PRIMARY KEY, name text, joined timestamptz, score numeric(12,4))")
    execute(real_pg_dsn, "CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2), tags text[], doc jsonb, raw bytea)")
    execute(real_pg_dsn, "INSERT INTO users (name, joined, score) SELECT 'user ' || g, timestamptz '2024-01-15 10:30:00.5+02'"
                         " + g * interval '1 second', g / 3.0 FROM generate_series(1, 2500) g")
    execute(real_pg_dsn, "INSERT INTO orders SELECT g, g * 1.5, ARRAY['a', NULL, 'c'], jsonb_build_object('n', g),"
                         " '\\x00ff'::bytea FROM generate_series(1, 1200) g")
    config = write_config(
        tmp_path, real_pg_dsn, real_iggy.address,
        source={"tables": ["users", "orders"], "batch_size": 300, "late_commits": "off"},
        iggy=real_iggy.iggy_section(real_stream, **topics_for(real_iggy, real_stream, ["users", "orders"])),
        workers=2,
    )
    service = start_service(config)
    try:
        wait_for(lambda: message_count(real_iggy, real_stream, "users") >= 2500
                 and message_count(real_iggy, real_stream, "orders") >= 1200, 120, 0.5, message="all rows")
        execute(real_pg_dsn, "INSERT INTO users (name) VALUES ('late')")
        wait_for(lambda: message_count(real_iggy, real_stream, "users") >= 2501, 60, 0.5, message="a row inserted while running")
        wait_for(lambda: committed_through(tmp_path, "polling/users", "2501")
                 and committed_through(tmp_path, "polling/orders", "1200"), 60, message="the offsets of the last rows")
    finally:
        assert stop_service(service) == 0
    users = read_topic(real_iggy, real_stream, "users")
    orders = read_topic(real_iggy, real_stream, "orders")
    assert _ids(users) == list(range(1, 2502))  # once each, in offset order
    assert _ids(orders) == list(range(1, 1201))
    assert len({m.id for m in users}) == 2501  # distinct deterministic ids
    first, last = users[0].body(), users[-1].body()
    assert first["table_name"] == "users" and first["operation_type"] == "SELECT" and first["old_data"] is None
    assert first["data"] == {"id": 1, "name": "user 1", "joined": "2024-01-15T08:30:01.5+00:00",
                             "score": first["data"]["score"]}
    assert str(first["data"]["score"]) == "0.3333"  # NUMERIC with its digits, not a float
    assert last["data"]["name"] == "late" and last["data"]["joined"] is None
    second = orders[1].body()["data"]
    assert second == {"id": 2, "amount": second["amount"], "tags": ["a", None, "c"], "doc": {"n": 2}, "raw": "AP8="}
    assert str(second["amount"]) == "3.00"


def test_kill_9_mid_stream_loses_nothing_and_resends_with_the_same_ids(real_iggy, real_pg_dsn, real_stream, tmp_path):
    total, batch = 100_000, 200
    execute(real_pg_dsn, "CREATE TABLE big (id int PRIMARY KEY, payload text)")
    execute(real_pg_dsn, "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, %s) g", (total,))
    config = write_config(
        tmp_path, real_pg_dsn, real_iggy.address,
        source={"tables": ["big"], "batch_size": batch, "late_commits": "off"},
        iggy=real_iggy.iggy_section(real_stream, **topics_for(real_iggy, real_stream, ["big"], partitions=2)),
        # the offset after every acknowledged batch, so the bound below is the in-flight batches alone
        # (with the default 100 ms, a crash also re-sends what was acknowledged in the last interval)
        state={"dir": str(tmp_path / "state"), "commit_interval": 0},
    )
    service = start_service(config)
    try:
        wait_for(lambda: message_count(real_iggy, real_stream, "big") >= 2000, 120, 0.02, message="a first part of the table")
    finally:
        kill_service(service)
    before = message_count(real_iggy, real_stream, "big")
    assert before < total, "the service finished before the kill; the test proves nothing (raise `total`)"

    service = start_service(config)
    try:
        wait_for(lambda: message_count(real_iggy, real_stream, "big") >= total, 180, 0.5, message="as many messages as rows")
        wait_for(lambda: len({m.id for m in read_topic(real_iggy, real_stream, "big")}) >= total, 120, 2,
                 message="every row after the restart")
        wait_for(lambda: committed_through(tmp_path, "polling/big", str(total)), 60, message="the offset of the last row")
    finally:
        assert stop_service(service) == 0

    stored = read_topic(real_iggy, real_stream, "big")
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
