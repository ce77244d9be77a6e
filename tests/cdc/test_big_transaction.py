"""A transaction of 1,000,000 rows: delivered whole, with bounded memory, confirmed only at the end."""

from __future__ import annotations

import json
import threading

import psutil
import pytest

from tests.support import execute, kill_service, query, start_service, stop_service, wait_for, write_config

ROWS = 1_000_000


def _tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


@pytest.mark.parametrize("transport", ["sql", "replication"])
def test_one_million_row_transaction_with_bounded_memory(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE big (id int PRIMARY KEY, v int)")
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"mode": "cdc", "tables": ["big"], "batch_size": 5000, "cdc_transport": transport})
    service = start_service(config)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], _tree_rss(service.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM pg_replication_slots")[0][0] == 1, 30, message="the slot")
        before = query(pg_dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots")[0][0]
        sampler.start()
        execute(pg_dsn, "INSERT INTO big SELECT g, g FROM generate_series(1, %s) g", (ROWS,))
        wait_for(lambda: iggy.message_count("pg", "big") >= ROWS, 240, interval=0.5, message="a million changes")
        end = query(pg_dsn, "SELECT pg_current_wal_flush_lsn()::text")[0][0]
        wait_for(lambda: query(pg_dsn, "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots", (end,))[0][0],
                 30, message="the slot confirmed past the transaction")
    finally:
        done.set()
        assert stop_service(service) == 0
    stored = iggy.messages("pg", "big")
    assert len({m.id for m in stored}) == ROWS
    assert before != end
    assert peak[0] < 400 * 1024 * 1024, f"pgsource processes peaked at {peak[0] / 2**20:.0f} MiB"


@pytest.mark.parametrize("transport", ["sql", "replication"])
def test_kill_9_in_the_middle_of_a_big_transaction_resends_all_of_it(pg_dsn, iggy, tmp_path, transport):
    rows = 200_000
    execute(pg_dsn, "CREATE TABLE big (id int PRIMARY KEY, v int)")
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"mode": "cdc", "tables": ["big"], "batch_size": 1000, "cdc_transport": transport})
    service = start_service(config)
    wait_for(lambda: query(pg_dsn, "SELECT count(*) FROM pg_replication_slots")[0][0] == 1, 30, message="the slot")
    execute(pg_dsn, "INSERT INTO big SELECT g, g FROM generate_series(1, %s) g", (rows,))
    wait_for(lambda: iggy.message_count("pg", "big") >= rows // 4, 120, interval=0.01, message="a quarter of it")
    kill_service(service)
    assert iggy.message_count("pg", "big") < rows
    service = start_service(config)
    try:
        wait_for(lambda: len({m.id for m in iggy.messages("pg", "big")}) >= rows, 120, interval=1, message="all of it")
    finally:
        assert stop_service(service) == 0
    assert sorted({json.loads(m.payload)["data"]["id"] for m in iggy.messages("pg", "big")}) == list(range(1, rows + 1))
