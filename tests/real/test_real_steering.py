"""Issue 20 against a real Iggy server: transaction markers (part 3)."""

from __future__ import annotations

import uuid

import pytest

from tests.cdc.common import wait_slot_caught_up
from tests.real.conftest import topics_for
from tests.real.reader import read_topic
from tests.support import execute, query, start_service, stop_service, wait_for, write_config

pytestmark = pytest.mark.timeout(900)


def _cdc_config(tmp_path, dsn, real_iggy, stream, topics, **source):
    suffix = uuid.uuid4().hex[:8]
    slot = f"slot_{suffix}"
    config = write_config(
        tmp_path, dsn, real_iggy.address,
        source={"mode": "cdc", "replication_slot": slot, "publication_name": f"pub_{suffix}", **source},
        iggy=real_iggy.iggy_section(stream, **topics_for(real_iggy, stream, topics)),
    )
    return config, slot


def test_begin_and_commit_markers_count_what_a_real_server_stored(real_iggy, real_pg_dsn, real_stream, tmp_path):
    execute(real_pg_dsn, "CREATE TABLE orders (id serial PRIMARY KEY, amount int); CREATE TABLE items (id serial"
                         " PRIMARY KEY, sku text)")
    config, slot = _cdc_config(tmp_path, real_pg_dsn, real_iggy, real_stream, ["orders", "items", "transactions"],
                               tables=["orders", "items"], transaction_markers="messages", batch_size=4)
    service = start_service(config)
    try:
        wait_for(lambda: query(real_pg_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)),
                 60, 0.2, message=f"replication slot {slot}")
        execute(real_pg_dsn, "INSERT INTO orders (amount) SELECT g FROM generate_series(1, 10) g;"
                             " INSERT INTO items (sku) VALUES ('a'), ('b')")
        execute(real_pg_dsn, "UPDATE orders SET amount = 0 WHERE id < 4")
        wait_slot_caught_up(real_pg_dsn, slot)
    finally:
        assert stop_service(service) == 0
    markers = [m.body() for m in read_topic(real_iggy, real_stream, "transactions")]
    assert [m["type"] for m in markers] == ["BEGIN", "COMMIT", "BEGIN", "COMMIT"]
    assert markers[1]["tables"] == {"orders": 10, "items": 2} and markers[3]["tables"] == {"orders": 3}
    changes = read_topic(real_iggy, real_stream, "orders") + read_topic(real_iggy, real_stream, "items")
    for commit in (markers[1], markers[3]):
        group = [m for m in changes if m.headers["xid"] == str(commit["xid"])]
        assert len(group) == commit["messages"]
        assert sorted(int(m.headers["txn_index"]) for m in group) == list(range(commit["messages"]))
