"""Polling end to end: PostgreSQL → pgsource (supervisor, workers, publisher) → Iggy stand-in."""

from __future__ import annotations

import json

import pytest
from psycopg2 import sql

from tests.support import (
    bodies,
    committed_through,
    execute,
    kill_service,
    query,
    service_output,
    start_service,
    stop_service,
    stored_offset,
    wait_for,
    write_config,
)


def _ids(messages: list[dict], key: str = "id") -> list[int]:
    return [m["data"][key] for m in messages]


def test_every_row_of_several_tables_arrives_once_in_order(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id bigserial PRIMARY KEY, name text)")
    execute(pg_dsn, "CREATE TABLE orders (id serial PRIMARY KEY, amount numeric(12,2))")
    execute(pg_dsn, "INSERT INTO users (name) SELECT 'user ' || g FROM generate_series(1, 2500) g")
    execute(pg_dsn, "INSERT INTO orders (amount) SELECT g * 1.5 FROM generate_series(1, 1200) g")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["users", "orders"], "batch_size": 300}, workers=2)
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 2500 and len(bodies(iggy, "orders")) >= 1200, 60, message="all rows")
        execute(pg_dsn, "INSERT INTO users (name) VALUES ('late')")
        wait_for(lambda: len(bodies(iggy, "users")) >= 2501, 30, message="a row inserted while running")
    finally:
        assert stop_service(service) == 0
    users, orders = bodies(iggy, "users"), bodies(iggy, "orders")
    assert _ids(users) == list(range(1, 2502))
    assert _ids(orders) == list(range(1, 1201))
    assert users[0]["table_name"] == "users" and users[0]["operation_type"] == "SELECT"
    assert users[0]["old_data"] is None and users[-1]["data"]["name"] == "late"
    assert str(orders[1]["data"]["amount"]) == "3.00"
    assert len({m.id for m in iggy.messages("pg", "users")}) == 2501


def test_ties_at_batch_boundaries_are_neither_lost_nor_duplicated(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE events (id int PRIMARY KEY, updated_at timestamptz NOT NULL)")
    # 7 rows per timestamp and a batch size of 5: every batch boundary falls inside a tie
    execute(
        pg_dsn,
        "INSERT INTO events SELECT g, timestamptz '2024-01-01' + ((g - 1) / 7) * interval '1 second'"
        " FROM generate_series(1, 700) g",
    )
    config = write_config(
        tmp_path, pg_dsn, iggy.address,
        source={"tables": ["events"], "tracking_column": "updated_at", "batch_size": 5, "lag": "1s"},  # set by the test
    )
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "events")) >= 700, 60, message="700 rows")
        wait_for(lambda: committed_through(tmp_path, "polling/events", "700"), 30, message="the offset of the last row")
    finally:
        assert stop_service(service) == 0
    received = _ids(bodies(iggy, "events"))
    assert sorted(received) == list(range(1, 701))
    assert len(received) == 700


def test_kill_9_mid_stream_loses_nothing_and_resends_with_the_same_ids(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE big (id serial PRIMARY KEY, payload text)")
    execute(pg_dsn, "INSERT INTO big (payload) SELECT repeat('x', 100) FROM generate_series(1, 40000)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["big"], "batch_size": 200},
                          state={"dir": str(tmp_path / "state"), "commit_interval": 0})  # commit after every ack
    iggy.set_latency(0.01)  # slow acks, so the kill lands mid-stream
    service = start_service(config)
    wait_for(lambda: len(bodies(iggy, "big")) >= 3000, 60, message="a first part of the table")
    kill_service(service)
    first = iggy.messages("pg", "big")
    assert len(first) < 40000
    iggy.set_latency(0)
    service = start_service(config)
    try:
        wait_for(lambda: len({m.id for m in iggy.messages("pg", "big")}) >= 40000, 90, message="the rest after restart")
    finally:
        assert stop_service(service) == 0
    stored = iggy.messages("pg", "big")
    by_id: dict[int, set] = {}
    for message in stored:
        by_id.setdefault(message.id, set()).add(json.loads(message.payload)["data"]["id"])
    assert all(len(rows) == 1 for rows in by_id.values())  # one id ↔ one row, always
    assert sorted(row for rows in by_id.values() for row in rows) == list(range(1, 40001))
    duplicates = len(stored) - len(by_id)
    assert duplicates <= 8 * 200 + 200  # at most the unacknowledged batches (max_in_flight × batch_size)
    assert stored_offset(tmp_path, "polling/big").position == ("40000",)


def test_offsets_committed_at_an_interval_resend_only_acknowledged_rows_after_kill_9(pg_dsn, iggy, tmp_path):
    """With ``state.commit_interval`` the offset file lags Iggy by up to the interval: a crash
    re-sends acknowledged rows (same ids), never skips one; a graceful stop commits at once."""
    execute(pg_dsn, "CREATE TABLE big (id serial PRIMARY KEY, payload text)")
    execute(pg_dsn, "INSERT INTO big (payload) SELECT repeat('x', 100) FROM generate_series(1, 20000)")
    state = tmp_path / "state" / "polling%2Fbig.json"
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["big"], "batch_size": 200},
                          state={"dir": str(tmp_path / "state"), "commit_interval": "1h"})
    iggy.set_latency(0.01)
    service = start_service(config)
    wait_for(lambda: len(bodies(iggy, "big")) >= 3000 and state.exists(), 60, message="a first part and a commit")
    kill_service(service)
    committed = int(stored_offset(tmp_path, "polling/big").position[0])
    first = _ids(bodies(iggy, "big"))
    assert committed < max(first)  # the one commit (the first ack) lags what Iggy holds
    iggy.set_latency(0)
    service = start_service(config)
    try:
        wait_for(lambda: len(set(_ids(bodies(iggy, "big")))) >= 20000, 90, message="the rest after restart")
    finally:
        assert stop_service(service) == 0
    received = _ids(bodies(iggy, "big"))
    assert sorted(set(received)) == list(range(1, 20001))
    assert received[len(first):] == list(range(committed + 1, 20001))  # the restart resumes right after the commit
    assert stored_offset(tmp_path, "polling/big").position == ("20000",)  # graceful stop: committed despite the 1h


@pytest.mark.parametrize(
    ("column_type", "values", "initial", "expected"),
    [
        ("int", [1, 2, 3, 4], 2, [3, 4]),
        ("timestamp", ["2024-01-01 00:00:00", "2024-01-01 00:00:01.5", "2024-01-02 00:00:00"], "2024-01-01T00:00:01", [2, 3]),
        ("timestamptz", ["2024-01-01 00:00:00+00", "2024-01-01 03:00:00+02", "2024-01-01 01:00:00.000001+00"], "2024-01-01T01:00:00Z", [3]),
        ("text", ["apple", "banana", "cherry"], "banana", [3]),
    ],
)
def test_initial_offset_is_honoured_per_type(pg_dsn, iggy, tmp_path, column_type, values, initial, expected):
    execute(pg_dsn, sql.SQL("CREATE TABLE t (id serial PRIMARY KEY, k {} NOT NULL)").format(sql.SQL(column_type)))
    for value in values:  # bound: an untyped literal, read as the column's type
        execute(pg_dsn, "INSERT INTO t (k) VALUES (%s)", (value,))
    config = write_config(
        tmp_path, pg_dsn, iggy.address,
        source={"tables": ["t"], "tracking_column": "k", "initial_offset": initial, "lag": "1s"},  # k is set by the test
    )
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "t")) >= len(expected), 30, message="rows after the initial offset")
        # the cursor is (k, id): the last row in k order is the last expected id
        wait_for(lambda: committed_through(tmp_path, "polling/t", str(expected[-1])), 30, message="the last row's offset")
    finally:
        assert stop_service(service) == 0
    assert sorted(_ids(bodies(iggy, "t"))) == expected


def _run_custom_query(pg_dsn, iggy, tmp_path, query: str, initial_offset: int, batch_size: int, topic: str, expected: int,
                      last: int) -> list[dict]:
    """Run the service on ``custom_query`` until ``expected`` messages arrived and the offset of ``last`` is committed."""
    config = write_config(
        tmp_path, pg_dsn, iggy.address,
        source={"custom_query": query, "initial_offset": initial_offset, "batch_size": batch_size},
        iggy={"topic": topic},
    )
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, topic)) >= expected, 30, message=f"{expected} rows")
        wait_for(lambda: committed_through(tmp_path, "polling/custom_query", str(last)), 30, message="the last row's offset")
    finally:
        assert stop_service(service) == 0
    return bodies(iggy, topic)


def test_custom_query_binds_last_offset_and_batch_size(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY, name text, active bool)")
    execute(pg_dsn, "INSERT INTO users SELECT g, 'u' || g, g % 2 = 0 FROM generate_series(1, 50) g")
    received = _run_custom_query(pg_dsn, iggy, tmp_path, "SELECT id, name FROM users WHERE active AND id > $1 ORDER BY id LIMIT $2",
                                 initial_offset=10, batch_size=7, topic="active_users", expected=20, last=50)
    assert _ids(received) == list(range(12, 51, 2))
    assert received[0]["data"] == {"id": 12, "name": "u12"}


def test_custom_query_rows_are_ordered_by_the_tracking_column_whatever_order_it_returns(pg_dsn, iggy, tmp_path):
    """The next offset is the last row's value: a query that returns its batch in another order
    (here descending) must neither re-send nor skip rows."""
    execute(pg_dsn, "CREATE TABLE ev (id int PRIMARY KEY, v text)")
    execute(pg_dsn, "INSERT INTO ev SELECT g, 'v' || g FROM generate_series(1, 40) g")
    query = "SELECT * FROM (SELECT id, v FROM ev WHERE id > $1 ORDER BY id LIMIT $2) s ORDER BY id DESC"
    received = _run_custom_query(pg_dsn, iggy, tmp_path, query, initial_offset=0, batch_size=6, topic="ev", expected=40, last=40)
    assert _ids(received) == list(range(1, 41))


def test_snake_case_without_metadata_and_non_public_schema(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, 'CREATE SCHEMA sales; CREATE TABLE sales."Order Items" ("itemID" int PRIMARY KEY, "unitPrice" numeric, "HTTPStatus" int)')
    execute(pg_dsn, 'INSERT INTO sales."Order Items" VALUES (1, 9.99, 200), (2, 0.5, 404)')
    config = write_config(
        tmp_path, pg_dsn, iggy.address,
        source={"tables": [{"schema": "sales", "name": "Order Items", "tracking_column": "itemID"}],
                "snake_case_columns": True, "include_metadata": False, "lag": "1s"},  # ids set by the test
        iggy={"topic": "{schema}-items"},
    )
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "sales-items")) >= 2, 30, message="two items")
    finally:
        assert stop_service(service) == 0
    received = bodies(iggy, "sales-items")
    assert [str(m["unit_price"]) for m in received] == ["9.99", "0.5"]
    assert received[0] == {"item_id": 1, "unit_price": received[0]["unit_price"], "http_status": 200}


def test_table_name_of_a_non_public_schema_is_qualified(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE SCHEMA sales; CREATE TABLE sales.orders (id serial PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO sales.orders DEFAULT VALUES")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["sales.orders"]}, iggy={"topic": "orders"})
    service = start_service(config)
    try:
        wait_for(lambda: bodies(iggy, "orders"), 30, message="one order")
    finally:
        assert stop_service(service) == 0
    assert bodies(iggy, "orders")[0]["table_name"] == "sales.orders"


@pytest.mark.parametrize("mode", ["delete_after_read", "processed_column"])
def test_delete_and_mark_happen_only_after_iggy_acknowledged(pg_dsn, iggy, tmp_path, mode):
    execute(pg_dsn, "CREATE TABLE outbox (id serial PRIMARY KEY, body text, processed bool NOT NULL DEFAULT false)")
    execute(pg_dsn, "INSERT INTO outbox (body) SELECT 'e' || g FROM generate_series(1, 30) g")
    extra = {"delete_after_read": True} if mode == "delete_after_read" else {"processed_column": "processed"}
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["outbox"], "batch_size": 10, **extra})
    iggy.refuse_connections(True)
    service = start_service(config)
    try:
        # the worker read a batch and the publisher's first send of it was refused
        wait_for(lambda: "(attempt 1)" in service_output(), 30, message="a refused send")
        assert query(pg_dsn, "SELECT count(*) FROM outbox WHERE NOT processed")[0][0] == 30
        iggy.refuse_connections(False)
        wait_for(lambda: len(bodies(iggy, "outbox")) >= 30, 60, message="the outbox after Iggy came back")
        if mode == "delete_after_read":
            wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM outbox")[0][0] == 0, 10, message="deletes")
        else:
            wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM outbox WHERE processed")[0][0] == 30, 10, message="marks")
    finally:
        assert stop_service(service) == 0
    assert sorted(_ids(bodies(iggy, "outbox"))) == list(range(1, 31))


def test_iggy_going_away_mid_run_loses_nothing(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE ticks (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
    execute(pg_dsn, "INSERT INTO ticks (at) SELECT now() FROM generate_series(1, 100)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["ticks"], "batch_size": 50})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "ticks")) >= 100, 30, message="first rows")
        iggy.refuse_connections(True)
        iggy.drop_connections()
        execute(pg_dsn, "INSERT INTO ticks (at) SELECT now() FROM generate_series(1, 100)")
        # the outage lasts until the publisher ran into it with a batch of the rows written meanwhile
        wait_for(lambda: "(attempt 1)" in service_output(), 30, message="a send refused during the outage")
        iggy.refuse_connections(False)
        wait_for(lambda: len({m.id for m in iggy.messages("pg", "ticks")}) >= 200, 60, message="rows written during the outage")
    finally:
        assert stop_service(service) == 0
    assert sorted(set(_ids(bodies(iggy, "ticks")))) == list(range(1, 201))


def test_partitions_follow_the_primary_key(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL, updated_at bigint NOT NULL)")
    execute(pg_dsn, "INSERT INTO items SELECT g, 1, g FROM generate_series(1, 200) g")
    config = write_config(
        tmp_path, pg_dsn, iggy.address,
        source={"tables": ["items"], "tracking_column": "updated_at", "batch_size": 64, "lag": "1s"},  # set by the test
        iggy={"partitions": 4},
    )
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "items")) >= 200, 30, message="200 items")
        execute(pg_dsn, "UPDATE items SET version = 2, updated_at = 1000 + id WHERE id <= 50")
        wait_for(lambda: len(bodies(iggy, "items")) >= 250, 30, message="50 updated items")
    finally:
        assert stop_service(service) == 0
    placed: dict[int, set[int]] = {}
    for message in iggy.messages("pg", "items"):
        placed.setdefault(json.loads(message.payload)["data"]["id"], set()).add(message.partition)
    assert len(placed) == 200
    assert all(len(partitions) == 1 for partitions in placed.values())
    assert len({p for ps in placed.values() for p in ps}) == 4


def test_a_row_too_big_for_an_iggy_message_stops_the_service_naming_table_and_row(pg_dsn, iggy, tmp_path):
    """Iggy refuses payloads over 64,000,000 bytes; re-sending could never succeed, so the service
    stops with exit code 4 and says which table and row, instead of retrying forever. The rows
    before it were delivered and committed."""
    execute(pg_dsn, "CREATE TABLE docs (id serial PRIMARY KEY, body text)")
    execute(pg_dsn, "INSERT INTO docs (body) SELECT 'small' FROM generate_series(1, 3)")
    execute(pg_dsn, "INSERT INTO docs (body) VALUES (repeat('x', 64000000))")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["docs"], "batch_size": 3},
                          state={"dir": str(tmp_path / "state"), "commit_interval": 0})
    service = start_service(config)
    assert service.wait(120) == 4
    log = config.with_suffix(".log").read_text()
    assert "table docs, row id=4: its message is 64,000," in log and "Iggy takes at most 64,000,000" in log
    assert _ids(bodies(iggy, "docs")) == [1, 2, 3]
    assert stored_offset(tmp_path, "polling/docs").position == ("3",)


@pytest.mark.parametrize("tracking", ["id", "updated_at"])
@pytest.mark.parametrize("mode", ["delete_after_read", "processed_column"])
def test_a_row_updated_while_its_batch_is_in_flight_is_published_in_its_new_version(pg_dsn, iggy, tmp_path, mode, tracking):
    """delete/mark act only on the version that was sent: the newer version survives, is published
    under a new message id, and only then deleted or marked."""
    execute(pg_dsn, "CREATE TABLE outbox (id bigserial PRIMARY KEY, body text, processed bool NOT NULL DEFAULT false,"
                    " updated_at timestamptz NOT NULL DEFAULT now())")
    execute(pg_dsn, "INSERT INTO outbox (body) VALUES ('warm-up')")
    extra = {"delete_after_read": True} if mode == "delete_after_read" else {"processed_column": "processed"}
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["outbox"], "tracking_column": tracking, "batch_size": 10,
                                  "poll_interval": "3s", **extra})  # the next poll comes after the ack
    service = start_service(config)
    try:
        wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM outbox WHERE NOT processed")[0][0] == 0, 30, message="warm-up")
        iggy.set_latency(2.0)  # a batch is stored at once; its acknowledgement comes 2 s later
        execute(pg_dsn, "INSERT INTO outbox (body) SELECT 'v1' FROM generate_series(1, 10)")
        wait_for(lambda: len(bodies(iggy, "outbox")) >= 11, 30, message="the batch, not yet acknowledged")
        execute(pg_dsn, "UPDATE outbox SET body = 'v2', updated_at = now() WHERE id = 3")
        assert query(pg_dsn, "SELECT count(*) FROM outbox WHERE NOT processed")[0][0] == 10  # nothing acted on yet
        iggy.set_latency(0)
        if mode == "delete_after_read":
            wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM outbox")[0][0] == 0, 30, message="every version deleted")
        else:
            wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM outbox WHERE processed")[0][0] == 11, 30, message="marks")
    finally:
        assert stop_service(service) == 0
    versions = [(m.id, json.loads(m.payload)["data"]["body"]) for m in iggy.messages("pg", "outbox")
                if json.loads(m.payload)["data"]["id"] == 3]
    assert {body for _, body in versions} == {"v1", "v2"}
    assert len({message_id for message_id, _ in versions}) == 2  # consumers drop repeated ids: v2 needs its own
    if mode == "processed_column":
        assert query(pg_dsn, "SELECT body, processed FROM outbox WHERE id = 3") == [("v2", True)]
    assert sorted({json.loads(m.payload)["data"]["id"] for m in iggy.messages("pg", "outbox")}) == list(range(1, 12))
