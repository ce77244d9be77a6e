"""``pgsource drop-slot`` says what it dropped and what was not there (issue 23, bug 6: run twice, the
second run said "publication ...: dropped" although nothing was left to drop)."""

from __future__ import annotations

from tests.support import execute, query, run_cli, write_config


def test_drop_slot_twice_says_absent_the_second_time(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION iggy_publication FOR TABLE t")
    execute(pg_dsn, "SELECT pg_create_logical_replication_slot('iggy_slot', 'pgoutput')")
    config = write_config(tmp_path, pg_dsn, "127.0.0.1:1", source={"mode": "cdc", "tables": ["t"]})
    first = run_cli("drop-slot", "--config", str(config))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["slot iggy_slot: dropped", "publication iggy_publication: dropped"]
    assert query(pg_dsn, "SELECT count(*) FROM pg_replication_slots")[0][0] == 0
    assert query(pg_dsn, "SELECT count(*) FROM pg_publication")[0][0] == 0
    second = run_cli("drop-slot", "--config", str(config))
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["slot iggy_slot: absent", "publication iggy_publication: absent"]
