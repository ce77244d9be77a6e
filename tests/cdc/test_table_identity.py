"""Issue 18, CDC: a captured table is its OID, not its name.

5. renamed (also its schema renamed, or moved by SET SCHEMA) while streaming: still captured,
   under its configured name, topic and partition; a restart names the new name;
6. replaced under the same name, or dropped from the publication by hand: the service stops
   (exit 3, old and new OIDs), never joins silently; ``pgsource rejoin`` takes the new relation
   as a new table (a snapshot, then its changes);
and DROP TABLE and a REPLICA IDENTITY change while streaming: nothing lost silently, no loop.
"""

from __future__ import annotations

import subprocess

import pytest
from psycopg2 import sql

from tests.cdc.common import (
    TRANSPORTS,
    cdc_config,
    key_of,
    replay,
    stored,
    wait_slot_caught_up,
    wait_until_capturing,
)
from tests.support import execute, query, run_cli, start_service, stop_service, wait_for


def _oid(dsn: str, table: str) -> int:
    return int(query(dsn, "SELECT %s::regclass::oid", (table,))[0][0])


def _table(dsn: str, table: str) -> dict:
    return {row[0]: {"id": row[0], "v": row[1]} for row in query(dsn, sql.SQL("SELECT id, v FROM {}").format(sql.Identifier(table)))}


def _has_every_row(consumer: dict, table: dict) -> bool:
    return all(consumer.get(key) == row for key, row in table.items())


def _exited(service: subprocess.Popen, timeout: float = 30) -> int | None:
    """The service's exit code once it stopped by itself within ``timeout``; None if it still runs."""
    try:
        return service.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_table_renamed_while_streaming_stays_captured_under_its_configured_name(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE orders (id int PRIMARY KEY, v text); CREATE SCHEMA archive")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["orders"],
                        sections={"iggy": {"stream": "pg", "topic": "{table}", "partitions": 4, "partitioning": "table"}})
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO orders SELECT g, 'a' FROM generate_series(1, 100) g")
        execute(pg_dsn, "ALTER TABLE orders RENAME TO orders_v2")
        execute(pg_dsn, "INSERT INTO orders_v2 SELECT g, 'b' FROM generate_series(101, 200) g")
        execute(pg_dsn, "UPDATE orders_v2 SET v = 'c' WHERE id <= 10")
        execute(pg_dsn, "ALTER TABLE orders_v2 SET SCHEMA archive")
        execute(pg_dsn, "INSERT INTO archive.orders_v2 VALUES (201, 'd')")
        execute(pg_dsn, "ALTER SCHEMA archive RENAME TO archive2")
        execute(pg_dsn, "DELETE FROM archive2.orders_v2 WHERE id = 201")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    messages = stored(iggy, "orders")
    received = [(b["operation_type"], key_of(b)) for _, b, _ in messages]
    expected = ([("INSERT", i) for i in range(1, 201)] + [("UPDATE", i) for i in range(1, 11)]
                + [("INSERT", 201), ("DELETE", 201)])
    assert len(received) == len(expected), f"{len(expected) - len(received)} of {len(expected)} changes lost"
    assert sorted(received) == sorted(expected)
    assert {b["table_name"] for _, b, _ in messages} == {"orders"}  # the configured name: stable for consumers
    assert len({m.partition for _, _, m in messages}) == 1  # keyed to the configured table: no reshuffle
    relations = [m.headers.get("relation") for _, b, m in messages]
    assert relations[:100] == [None] * 100  # the header is there only while the name differs
    assert set(relations[100:210]) == {"orders_v2"}
    assert relations[210] == "archive.orders_v2"  # SET SCHEMA sends a new Relation message
    assert relations[211] in ("archive.orders_v2", "archive2.orders_v2")  # a schema rename alone may not
    assert list(iggy.topics("pg")) == ["orders"]
    log = config.with_suffix(".log").read_text()
    assert "table orders is now named orders_v2 (oid" in log, log
    result = run_cli("run", "--config", str(config))  # the configuration still names the old table
    assert result.returncode == 3
    assert "table orders, captured by slot iggy_slot as oid" in result.stderr
    assert "is now named archive2.orders_v2" in result.stderr, result.stderr


def test_a_table_replaced_under_the_same_name_stops_the_service_until_it_is_rejoined(pg_dsn, iggy, tmp_path):
    """Item 6: the online-migration swap. The new `orders` is in no publication: the service stops
    (exit 3) naming both OIDs, and so does every start, until `pgsource rejoin` takes it as a new
    table: its rows as a snapshot, then its changes; consumers have every row as it is (a row
    deleted before the rejoin has no DELETE to send: docs/cdc.md)."""
    execute(pg_dsn, "CREATE TABLE orders (id int PRIMARY KEY, v text)")
    execute(pg_dsn, "INSERT INTO orders SELECT g, 'a' FROM generate_series(1, 150) g")
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["orders"], snapshot="initial")
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, "replication")
        wait_for(lambda: len(stored(iggy, "orders")) >= 150, 30, message="the initial snapshot")
        old = _oid(pg_dsn, "orders")
        execute(pg_dsn, "CREATE TABLE orders_new (LIKE orders INCLUDING ALL); INSERT INTO orders_new SELECT * FROM orders;"
                        " BEGIN; ALTER TABLE orders RENAME TO orders_old; ALTER TABLE orders_new RENAME TO orders; COMMIT")
        new = _oid(pg_dsn, "orders")
        execute(pg_dsn, "INSERT INTO orders SELECT g, 'b' FROM generate_series(151, 250) g")
        execute(pg_dsn, "UPDATE orders SET v = 'c' WHERE id <= 10; DELETE FROM orders WHERE id BETWEEN 11 AND 20")
        code = _exited(service, 30)
        consumer = replay(stored(iggy, "orders"))
        assert code is not None, (f"still running after the swap; consumers have {len(consumer)} rows,"
                                  f" the table {len(_table(pg_dsn, 'orders'))}")
    finally:
        if service.poll() is None:
            stop_service(service)
    assert code == 3
    line = f"table orders is no longer the relation slot iggy_slot captured (oid {old}, now {new})"
    assert line in config.with_suffix(".log").read_text()
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(config))
        assert result.returncode == 3 and line in result.stderr, result.stderr
        assert "pgsource rejoin --config FILE --table orders" in result.stderr
    result = run_cli("rejoin", "--config", str(config), "--table", "orders")
    assert result.returncode == 0, result.stderr
    service = start_service(config)
    try:
        wait_for(lambda: _has_every_row(replay(stored(iggy, "orders")), _table(pg_dsn, "orders")), 30,
                 message="every row of the new table, as it is")
        execute(pg_dsn, "UPDATE orders SET v = 'd' WHERE id = 250")
        wait_for(lambda: replay(stored(iggy, "orders")).get(250, {}).get("v") == "d", 30, message="a change after the rejoin")
    finally:
        assert stop_service(service) == 0


def test_a_table_dropped_from_the_publication_by_hand_stops_the_service(pg_dsn, iggy, tmp_path):
    """Item 6: ALTER PUBLICATION ... DROP TABLE while running stops it (exit 3), and so does a start
    (the stopped case); rejoin sends the rows written meanwhile."""
    execute(pg_dsn, "CREATE TABLE orders (id int PRIMARY KEY, v text)")
    config = cdc_config(tmp_path, pg_dsn, iggy, "sql", tables=["orders"])
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, "sql")
        execute(pg_dsn, "INSERT INTO orders VALUES (1, 'a')")
        wait_for(lambda: stored(iggy, "orders"), 30, message="the first change")
        execute(pg_dsn, "ALTER PUBLICATION iggy_publication DROP TABLE orders")
        execute(pg_dsn, "INSERT INTO orders SELECT g, 'b' FROM generate_series(2, 11) g")
        code = _exited(service, 30)
        assert code is not None, f"still running; consumers have {len(stored(iggy, 'orders'))} of 11 rows"
    finally:
        if service.poll() is None:
            stop_service(service)
    assert code == 3
    line = "table orders is no longer in publication iggy_publication, which slot iggy_slot streams"
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3 and line in result.stderr, result.stderr
    assert run_cli("rejoin", "--config", str(config), "--table", "orders").returncode == 0
    service = start_service(config)
    try:
        wait_for(lambda: replay(stored(iggy, "orders")) == _table(pg_dsn, "orders"), 30, message="the rows written meanwhile")
    finally:
        assert stop_service(service) == 0


def test_drop_table_and_replica_identity_changes_while_streaming(pg_dsn, iggy, tmp_path):
    """A REPLICA IDENTITY change is followed (old rows become whole with FULL; with NOTHING PostgreSQL
    refuses the application's UPDATE itself); a dropped table's changes up to the DROP are
    delivered, the service goes on, and a restart names the table to remove (exit 3, no loop)."""
    execute(pg_dsn, "CREATE TABLE keep (id int PRIMARY KEY, v text); CREATE TABLE gone (id int PRIMARY KEY, v text)")
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["keep", "gone"])
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, "replication")
        execute(pg_dsn, "INSERT INTO keep VALUES (1, 'a'); INSERT INTO gone SELECT g, 'x' FROM generate_series(1, 10) g")
        execute(pg_dsn, "ALTER TABLE keep REPLICA IDENTITY FULL; UPDATE keep SET v = 'b'")
        execute(pg_dsn, "ALTER TABLE keep REPLICA IDENTITY NOTHING")
        with pytest.raises(Exception, match="does not have a replica identity"):
            execute(pg_dsn, "UPDATE keep SET v = 'c'")
        execute(pg_dsn, "ALTER TABLE keep REPLICA IDENTITY DEFAULT")
        execute(pg_dsn, "UPDATE gone SET v = 'y' WHERE id = 1")
        execute(pg_dsn, "DROP TABLE gone")
        execute(pg_dsn, "INSERT INTO keep VALUES (2, 'd')")
        wait_slot_caught_up(pg_dsn)
        wait_for(lambda: "table gone (oid" in config.with_suffix(".log").read_text(), 30, message="the DROP seen")
        assert service.poll() is None
    finally:
        assert stop_service(service) == 0
    keep = [(b["operation_type"], b["data"], b["old_data"]) for _, b, _ in stored(iggy, "keep")]
    assert keep == [("INSERT", {"id": 1, "v": "a"}, None), ("UPDATE", {"id": 1, "v": "b"}, {"id": 1, "v": "a"}),
                    ("INSERT", {"id": 2, "v": "d"}, None)]
    assert [(b["operation_type"], key_of(b)) for _, b, _ in stored(iggy, "gone")] == (
        [("INSERT", i) for i in range(1, 11)] + [("UPDATE", 1)])
    log = config.with_suffix(".log").read_text()
    assert "was dropped; its changes up to the DROP are delivered, the stream goes on" in log, log
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    assert "table gone does not exist" in result.stderr and "remove it from source.tables" in result.stderr, result.stderr
