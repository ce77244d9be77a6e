"""Issue 9, item 10: a slot pgsource used that is missing, or that lives on another database
history, stops the service (exit 3) instead of being recreated at the current LSN.

``source.on_missing_slot: snapshot`` is the explicit way forward: a new slot and a snapshot
of the tables. Creating the slot on the very first start stays as it is (every other test).
"""

from __future__ import annotations

import json

from tests.cdc.common import cdc_config, key_of, stored, wait_until_capturing
from tests.support import execute, query, run_cli, start_service, stop_service, wait_for


def _first_run(dsn: str, iggy, tmp_path, transport: str = "replication"):
    execute(dsn, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    config = cdc_config(tmp_path, dsn, iggy, transport, tables=["t"])
    service = start_service(config)
    try:
        wait_until_capturing(dsn, transport)
        execute(dsn, "INSERT INTO t VALUES (1, 'a')")
        wait_for(lambda: stored(iggy, "t"), 30, message="the first change")
    finally:
        assert stop_service(service) == 0
    return config


def test_a_missing_slot_that_was_used_stops_the_service_until_the_gap_is_accepted(pg_dsn, iggy, tmp_path):
    config = _first_run(pg_dsn, iggy, tmp_path)
    execute(pg_dsn, "SELECT pg_drop_replication_slot('iggy_slot')")  # by mistake, or a failover without it
    execute(pg_dsn, "INSERT INTO t VALUES (2, 'made in the gap')")
    checked = run_cli("check", "--config", str(config))
    assert checked.returncode == 3
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    for output in (checked.stderr, result.stderr):
        assert "replication slot iggy_slot is missing, but pgsource used it" in output
        assert "source.on_missing_slot: snapshot" in output
    assert query(pg_dsn, "SELECT count(*) FROM pg_replication_slots")[0][0] == 0  # not recreated silently
    accepted = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=["t"], on_missing_slot="snapshot")
    service = start_service(accepted)
    try:
        wait_for(lambda: [b["operation_type"] for _, b, _ in stored(iggy, "t")][1:] == ["SELECT", "SELECT"], 60,
                 message="the snapshot of the table")
        execute(pg_dsn, "INSERT INTO t VALUES (3, 'after')")
        wait_for(lambda: len(stored(iggy, "t")) == 4, 30, message="the stream after it")
    finally:
        assert stop_service(service) == 0
    received = [(b["operation_type"], key_of(b)) for _, b, _ in stored(iggy, "t")]
    assert received == [("INSERT", 1), ("SELECT", 1), ("SELECT", 2), ("INSERT", 3)]
    service = start_service(config)  # the new slot is the known one now: fail is fine again
    try:
        wait_until_capturing(pg_dsn, "replication")
    finally:
        assert stop_service(service) == 0


def test_a_slot_on_another_database_system_stops_the_service(pg_dsn, iggy, tmp_path):
    from pgsource_testkit.postgres import LocalPostgres

    _first_run(pg_dsn, iggy, tmp_path, transport="sql")
    with LocalPostgres() as other:  # another cluster, same names: a restore, or a new server
        dsn = other.dsn()
        execute(dsn, "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION iggy_publication FOR TABLE t")
        execute(dsn, "SELECT pg_create_logical_replication_slot('iggy_slot', 'pgoutput')")
        execute(dsn, "INSERT INTO t VALUES (9, 'other')")
        result = run_cli("run", "--config", str(cdc_config(tmp_path, dsn, iggy, "sql", tables=["t"])))
    assert result.returncode == 3
    assert "replication slot iggy_slot was used on another database history" in result.stderr
    assert "system identifier" in result.stderr
    assert [key_of(b) for _, b, _ in stored(iggy, "t")] == [1]


def test_a_changed_timeline_under_a_known_slot_stops_the_service(pg_dsn, iggy, tmp_path):
    """A promoted standby continues on a new timeline; the record says which one the slot was used on
    (edited here: the test cluster has no standby to promote)."""
    config = _first_run(pg_dsn, iggy, tmp_path, transport="sql")
    path = tmp_path / "state" / "cdc%2Figgy_slot.json"
    body = json.loads(path.read_text())
    assert body["record"]["timeline"] == 1 and body["record"]["system_identifier"]
    body["record"]["timeline"] = 2
    path.write_text(json.dumps(body))
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    assert "timeline 2 → 1" in result.stderr
