"""Transaction boundaries (issue 20, part 3): xid and txn_index in every change's headers; with
``transaction_markers: messages`` a BEGIN and a COMMIT (with the messages per table) per transaction
in a topic of their own; with ``off`` neither header."""

from __future__ import annotations

import json

import pytest

from pgsource.encode.ids import cdc_message_id
from pgsource.encode.markers import BEGIN_POSITION, COMMIT_POSITION
from tests.cdc.common import (
    TRANSPORTS,
    cdc_config,
    lsn_number,
    stored,
    wait_slot_caught_up,
    wait_until_capturing,
)
from tests.support import execute, start_service, stop_service


def _tables(dsn: str) -> None:
    execute(dsn, "CREATE TABLE orders (id serial PRIMARY KEY, amount int); CREATE TABLE items (id serial PRIMARY KEY,"
                 " sku text); CREATE TABLE elsewhere (id int)")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_begin_and_commit_frame_each_transaction_with_its_counts(pg_dsn, iggy, tmp_path, transport):
    _tables(pg_dsn)
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["orders", "items"], batch_size=3,
                        transaction_markers="messages")
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO orders (amount) SELECT g FROM generate_series(1, 7) g;"  # 3 batches
                        " INSERT INTO items (sku) VALUES ('a'); UPDATE orders SET amount = 0 WHERE id = 1")
        execute(pg_dsn, "INSERT INTO elsewhere VALUES (1)")  # no message of ours: no markers
        execute(pg_dsn, "DELETE FROM items")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    markers = [(body, message) for _, body, message in stored(iggy, "transactions")]
    assert [body["type"] for body, _ in markers] == ["BEGIN", "COMMIT", "BEGIN", "COMMIT"]
    first, second = markers[1][0], markers[3][0]
    assert (first["messages"], first["tables"]) == (9, {"orders": 8, "items": 1})
    assert (second["messages"], second["tables"]) == (1, {"items": 1})
    assert markers[0][0] == {key: value for key, value in first.items() if key not in ("messages", "tables")} | {"type": "BEGIN"}
    changes = [message for _, _, message in stored(iggy, "orders") + stored(iggy, "items")]
    by_xid: dict[str, list] = {}
    for message in changes:
        by_xid.setdefault(message.headers["xid"], []).append(message)
    assert sorted(len(group) for group in by_xid.values()) == [1, 9]
    for (begin, begin_message), (commit, commit_message) in (markers[0:2], markers[2:4]):
        group = by_xid[str(commit["xid"])]
        assert {m.headers["lsn"] for m in group} == {commit["commit_lsn"]} and begin["xid"] == commit["xid"]
        assert sorted(int(m.headers["txn_index"]) for m in group) == list(range(len(group)))
        assert begin_message.id == cdc_message_id(lsn_number(commit["commit_lsn"]), "iggy_slot", BEGIN_POSITION)
        assert commit_message.id == cdc_message_id(lsn_number(commit["commit_lsn"]), "iggy_slot", COMMIT_POSITION)


def test_off_leaves_the_transaction_out_of_the_headers(pg_dsn, iggy, tmp_path):
    _tables(pg_dsn)
    config = cdc_config(tmp_path, pg_dsn, iggy, "sql", tables=["orders"], transaction_markers="off")
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, "sql")
        execute(pg_dsn, "INSERT INTO orders (amount) VALUES (1), (2)")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    headers = [message.headers for _, _, message in stored(iggy, "orders")]
    assert len(headers) == 2 and all(set(h) == {"table", "operation", "lsn"} for h in headers)
    assert "transactions" not in iggy.topics("pg")
    assert [json.loads(m.payload)["data"]["amount"] for _, _, m in stored(iggy, "orders")] == [1, 2]
