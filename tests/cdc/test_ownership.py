"""Issue 9, item 5: which slot captures a table comes from the configuration and the database.

Never from table sizes: a restart with the same configuration gets the same table → slot
map; adding a table or changing the worker count keeps every table on the slot that has
been capturing it (no gap), and a new table joins with a snapshot of just that table.
"""

from __future__ import annotations

import json
import re
import threading

import psycopg2
import pytest

from tests.cdc.common import TRANSPORTS, cdc_config, key_of, stored, wait_until_capturing
from tests.support import execute, query, run_cli, start_service, stop_service, wait_for, write_config


def _slots(dsn: str) -> list[str]:
    return sorted(row[0] for row in query(dsn, "SELECT slot_name FROM pg_replication_slots"))


def _ops(iggy, topic: str) -> list[tuple[str, int]]:
    """(operation, id) of each distinct message (by id), in order."""
    seen, out = set(), []
    for message_id, body, _ in stored(iggy, topic):
        if message_id not in seen:
            seen.add(message_id)
            out.append((body["operation_type"], key_of(body)))
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_adding_a_table_keeps_the_slot_and_the_new_table_joins_with_its_rows(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text)")
    execute(pg_dsn, "INSERT INTO a VALUES (1, 'x'); INSERT INTO b SELECT g, 'x' FROM generate_series(1, 3) g")
    service = start_service(cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["a"], snapshot="initial"))
    try:
        wait_for(lambda: _ops(iggy, "a") == [("SELECT", 1)], 30, message="a's snapshot")
        execute(pg_dsn, "INSERT INTO a VALUES (2, 'x')")
        wait_for(lambda: len(_ops(iggy, "a")) == 2, 30, message="a's insert")
    finally:
        assert stop_service(service) == 0
    # while pgsource is down: changes to the captured table and to the one about to join
    execute(pg_dsn, "INSERT INTO a VALUES (3, 'x'); UPDATE b SET v = 'y' WHERE id = 1; INSERT INTO b VALUES (4, 'x')")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["a", "b"], snapshot="initial")
    service = start_service(config)
    try:
        wait_for(lambda: len(_ops(iggy, "a")) == 3 and len(_ops(iggy, "b")) == 4, 60, message="a's change and b's rows")
        execute(pg_dsn, "INSERT INTO b VALUES (5, 'x'); UPDATE b SET v = 'z' WHERE id = 2")
        wait_for(lambda: len(_ops(iggy, "b")) == 6, 30, message="b's changes")
    finally:
        assert stop_service(service) == 0
    assert _slots(pg_dsn) == ["iggy_slot"]  # no new per-worker slot: the configured one goes on
    assert _ops(iggy, "a") == [("SELECT", 1), ("INSERT", 2), ("INSERT", 3)]  # nothing skipped while down
    assert _ops(iggy, "b")[:4] == [("SELECT", 1), ("SELECT", 2), ("SELECT", 3), ("SELECT", 4)]
    assert _ops(iggy, "b")[4:] == [("INSERT", 5), ("UPDATE", 2)]  # changes before the join are in its rows only
    assert [body["data"]["v"] for _, body, _ in stored(iggy, "b")][:1] == ["y"]
    published = query(pg_dsn, "SELECT tablename FROM pg_publication_tables WHERE pubname = 'iggy_publication' ORDER BY 1")
    assert published == [("a",), ("b",)]


def test_a_table_joins_under_concurrent_writers_without_a_gap_or_a_repeat(pg_dsn, iggy, tmp_path):
    """Writers keep inserting into the joining table, and one transaction that wrote it before the
    join commits only after the join began: every row arrives exactly once, as a snapshot row or as
    an INSERT, never both, never neither."""
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, v text)")
    execute(pg_dsn, "INSERT INTO b SELECT g, 'x' FROM generate_series(1, 200) g")
    service = start_service(cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["a"], snapshot="initial"))
    try:
        wait_until_capturing(pg_dsn, "replication")
    finally:
        assert stop_service(service) == 0
    open_writer = psycopg2.connect(pg_dsn)
    open_writer.cursor().execute("INSERT INTO b VALUES (-1, 'written before the join, committed during it')")
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        conn = psycopg2.connect(pg_dsn)
        conn.autocommit = True
        next_id = 1000
        while not stop.is_set():
            conn.cursor().execute("INSERT INTO b VALUES (%s, 'w')", (next_id,))
            written.append(next_id)
            next_id += 1
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["a", "b"], snapshot="initial")
    service = start_service(config)
    try:
        wait_for(lambda: re.search(r"b joins iggy_publication once \d+ transaction\(s\) writing it end",
                                   config.with_suffix(".log").read_text()), 60, message="the join waiting for the open transaction")
        open_writer.commit()
        wait_for(lambda: any(b["operation_type"] == "INSERT" for _, b, _ in stored(iggy, "b")), 60, message="b streaming")
        stop.set()
        writer.join()
        expected = {-1, *range(1, 201), *written}
        wait_for(lambda: {key_of(b) for _, b, _ in stored(iggy, "b")} >= expected, 60, message="every row of b")
    finally:
        stop.set()
        open_writer.close()
        assert stop_service(service) == 0
    counts: dict[int, list[str]] = {}
    for _, body, _ in stored(iggy, "b"):
        counts.setdefault(key_of(body), []).append(body["operation_type"])
    assert set(counts) == expected
    assert all(len(ops) == 1 for ops in counts.values()), {k: v for k, v in counts.items() if len(v) != 1}
    assert counts[-1] == ["SELECT"]


def test_growing_tables_do_not_move_between_slots(pg_dsn, iggy, tmp_path):
    """The old assignment balanced by size: after autovacuum changed the sizes, a restart put a table
    on another worker's slot and failed (or, following the hint, published it twice)."""
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY, pad text); CREATE TABLE b (id int PRIMARY KEY, pad text)")
    execute(pg_dsn, "INSERT INTO b SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g")
    execute(pg_dsn, "VACUUM ANALYZE b")
    config = cdc_config(tmp_path, pg_dsn, iggy, "sql", tables=["a", "b"], sections={"workers": 2})
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, "sql", slots=2)
        execute(pg_dsn, "INSERT INTO a VALUES (1, 'x'); INSERT INTO b VALUES (0, 'x')")
        wait_for(lambda: stored(iggy, "a") and stored(iggy, "b"), 30, message="one change per table")
    finally:
        assert stop_service(service) == 0
    first = _slots(pg_dsn)
    execute(pg_dsn, "INSERT INTO a SELECT g, repeat('x', 200) FROM generate_series(2, 10000) g")
    execute(pg_dsn, "VACUUM ANALYZE a")  # what autovacuum does: the sizes change
    execute(pg_dsn, "INSERT INTO b VALUES (-1, 'y')")  # while down
    service = start_service(config)
    try:
        wait_for(lambda: iggy.message_count("pg", "a") == 10000 and iggy.message_count("pg", "b") == 2, 60,
                 message="the changes made while down")
    finally:
        assert stop_service(service) == 0
    assert _slots(pg_dsn) == first == ["iggy_slot_worker_0", "iggy_slot_worker_1"]
    publications = query(pg_dsn, "SELECT pubname, tablename FROM pg_publication_tables ORDER BY 1, 2")
    assert publications == [("iggy_publication_worker_0", "a"), ("iggy_publication_worker_1", "b")]
    assert len({m for m, _, _ in stored(iggy, "a")}) == 10000
    assert _ops(iggy, "b") == [("INSERT", 0), ("INSERT", -1)]


def test_changing_the_worker_count_keeps_every_table_on_its_slot(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    service = start_service(cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["a"]))
    try:
        wait_until_capturing(pg_dsn, "replication")
        execute(pg_dsn, "INSERT INTO a VALUES (1)")
        wait_for(lambda: stored(iggy, "a"), 30, message="a's insert")
    finally:
        assert stop_service(service) == 0
    execute(pg_dsn, "INSERT INTO a VALUES (2)")  # while down
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["a", "b"], sections={"workers": 2})
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, "replication", slots=2)
        execute(pg_dsn, "INSERT INTO a VALUES (3); INSERT INTO b VALUES (1)")
        wait_for(lambda: len(stored(iggy, "a")) == 3 and stored(iggy, "b"), 30, message="the changes")
    finally:
        assert stop_service(service) == 0
    assert _ops(iggy, "a") == [("INSERT", 1), ("INSERT", 2), ("INSERT", 3)]
    assert _slots(pg_dsn) == ["iggy_slot", "iggy_slot_worker_0"]  # a stays where it was, b got a new worker's slot
    assert query(pg_dsn, "SELECT pubname, tablename FROM pg_publication_tables ORDER BY 1, 2") == [
        ("iggy_publication", "a"), ("iggy_publication_worker_0", "b")]
    result = run_cli("drop-slot", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert _slots(pg_dsn) == [] and query(pg_dsn, "SELECT count(*) FROM pg_publication")[0][0] == 0


def test_a_table_in_two_publications_is_refused(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    execute(pg_dsn, "CREATE PUBLICATION iggy_publication_wa FOR TABLE a; CREATE PUBLICATION iggy_publication_wb FOR TABLE a, b")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"mode": "cdc", "tables": ["a", "b"]},
                          workers={"wa": ["a"], "wb": ["b"]})
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    assert "table a is in publications iggy_publication_wa and iggy_publication_wb" in result.stderr
    assert _slots(pg_dsn) == []


def test_a_mapping_that_contradicts_the_database_is_refused(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    execute(pg_dsn, "CREATE PUBLICATION iggy_publication_wb FOR TABLE a, b")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"mode": "cdc", "tables": ["a", "b"]},
                          workers={"wa": ["a"], "wb": ["b"]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3
    assert "workers.wa: table a is captured by slot iggy_slot_wb" in result.stderr


def test_chunks_in_cdc_mode_is_a_configuration_error(pg_dsn, iggy, tmp_path):
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"mode": "cdc", "tables": [{"name": "a", "chunks": 4}]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "chunks is a polling option" in result.stderr and "remove chunks for a" in result.stderr


def test_a_state_file_of_the_first_format_keeps_streaming(pg_dsn, iggy, tmp_path):
    """A slot record written by the first version (no table list): its changes are all delivered."""
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY); CREATE PUBLICATION iggy_publication FOR TABLE a")
    execute(pg_dsn, "SELECT pg_create_logical_replication_slot('iggy_slot', 'pgoutput')")
    execute(pg_dsn, "INSERT INTO a VALUES (1)")  # after the slot, before this start
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "cdc%2Figgy_slot.json").write_text(json.dumps(
        {"key": "cdc/iggy_slot", "cursor": ["0/0"], "rows": 0, "done": False, "extra": {"snapshot": "done"}}))
    service = start_service(cdc_config(tmp_path, pg_dsn, iggy, "sql", tables=["a"]))
    try:
        wait_for(lambda: stored(iggy, "a"), 30, message="the change made before the start")
        execute(pg_dsn, "INSERT INTO a VALUES (2)")
        wait_for(lambda: len(stored(iggy, "a")) == 2, 30, message="a change after it")
    finally:
        assert stop_service(service) == 0
    assert _ops(iggy, "a") == [("INSERT", 1), ("INSERT", 2)]
