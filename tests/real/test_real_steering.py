"""Issue 20 against a real Iggy server: transaction markers (part 3) and a backfill under writes (part 1)."""

from __future__ import annotations

import random
import threading
import uuid

import pytest

from tests.cdc.common import wait_slot_caught_up
from tests.real.conftest import topics_for
from tests.real.reader import read_topic
from tests.support import execute, query, run_cli, start_service, stop_service, wait_for, write_config

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


def _done(tmp_path, slot: str) -> bool:
    from pgsource.state import BackfillPhase, BackfillRecord, FileStateStore, backfills_key

    record = FileStateStore(str(tmp_path / "state")).load(backfills_key(slot), BackfillRecord)
    return bool(record and record.backfills and record.backfills[-1].phase is BackfillPhase.DONE)


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


def test_a_backfill_under_writes_builds_the_table_on_a_real_server(real_iggy, real_pg_dsn, real_stream, tmp_path):
    execute(real_pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);"
                         " INSERT INTO t SELECT g, 0 FROM generate_series(1, 5000) g")
    config, slot = _cdc_config(tmp_path, real_pg_dsn, real_iggy, real_stream, ["t"], tables=["t"],
                               backfill_chunk_size=200, batch_size=100)
    service = start_service(config)
    stop = threading.Event()

    def write() -> None:
        import psycopg2

        conn = psycopg2.connect(real_pg_dsn)
        conn.autocommit = True
        chance = random.Random(7)
        with conn.cursor() as cur:
            while not stop.is_set():
                key = chance.randrange(1, 5200)
                if chance.random() < 0.7:
                    cur.execute("INSERT INTO t VALUES (%s, 0) ON CONFLICT (id) DO UPDATE SET v = t.v + 1", (key,))
                else:
                    cur.execute("DELETE FROM t WHERE id = %s", (key,))
        conn.close()

    writer = threading.Thread(target=write, daemon=True)
    try:
        wait_for(lambda: query(real_pg_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)),
                 60, 0.2, message=f"replication slot {slot}")
        writer.start()
        result = run_cli("snapshot", "--config", str(config), "--table", "t")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: _done(tmp_path, slot), 180, 0.2, message="the backfill done")
        stop.set()
        writer.join(10)
        wait_slot_caught_up(real_pg_dsn, slot)
    finally:
        stop.set()
        assert stop_service(service) == 0
    rows: dict = {}
    seen: set[int] = set()
    for message in read_topic(real_iggy, real_stream, "t"):
        if message.id in seen:
            continue
        seen.add(message.id)
        body = message.body()
        if body["operation_type"] == "DELETE":
            rows.pop(body["old_data"]["id"], None)
        else:
            rows[body["data"]["id"]] = {"id": body["data"]["id"], "v": body["data"]["v"]}
    assert rows == {key: {"id": key, "v": v} for key, v in query(real_pg_dsn, "SELECT id, v FROM t")}
