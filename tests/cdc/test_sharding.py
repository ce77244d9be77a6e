"""Replicas that split the tables (a StatefulSet): disjoint tables, offsets and slots; no silent move."""

from __future__ import annotations

from psycopg2 import sql

from pgsource.config import parse_config
from pgsource.plan.sharding import shard_of
from tests.cdc.common import wait_until_capturing
from tests.support import bodies, execute, query, run_cli, start_service, stop_service, wait_for, write_config

TABLES = [f"t{i}" for i in range(1, 7)]


def _config(tmp_path, dsn, iggy, index: int, count: int, mode: str):
    directory = tmp_path / f"replica{index}"
    directory.mkdir(exist_ok=True)
    return write_config(directory, dsn, iggy.address, source={"mode": mode, "tables": TABLES},
                        state={"dir": str(directory / "state")}, shard={"index": index, "count": count})


def test_the_split_is_deterministic_disjoint_and_complete():
    def split(count: int) -> list[list[str]]:
        out = []
        for index in range(count):
            text = (f"source: {{connection_string: x, mode: polling, tables: [{', '.join(TABLES)}, {{name: pinned, shard: 0}}]}}\n"
                    f"shard: {{index: {index}, count: {count}}}")
            out.append([t.qualified for t in parse_config(text).source.tables])
        return out

    for count in (1, 2, 3):
        shards = split(count)
        assert split(count) == shards  # the same file gives the same split, every time
        flat = [name for shard in shards for name in shard]
        assert sorted(flat) == sorted([*TABLES, "pinned"]) and len(flat) == len(set(flat))
        assert "pinned" in shards[0]
    first = parse_config("source: {connection_string: x, mode: cdc, tables: [t1]}\nshard: {index: 1, count: 2}").source
    assert (first.replication_slot, first.publication_name) == ("iggy_slot_shard1", "iggy_publication_shard1")


def test_two_cdc_replicas_share_no_table_and_no_slot_and_a_new_count_is_refused(pg_dsn, iggy, tmp_path):
    for table in TABLES:
        execute(pg_dsn, sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, note text)").format(sql.Identifier(table)))
    configs = [_config(tmp_path, pg_dsn, iggy, index, 2, "cdc") for index in range(2)]
    services = [start_service(config) for config in configs]
    try:
        wait_until_capturing(pg_dsn, "replication", slots=2)
        for table in TABLES:
            execute(pg_dsn, sql.SQL("INSERT INTO {} (note) SELECT 'n' || g FROM generate_series(1, 5) g")
                    .format(sql.Identifier(table)))
        wait_for(lambda: all(len(bodies(iggy, table)) >= 5 for table in TABLES), 60, message="every table's changes")
    finally:
        for service in services:
            assert stop_service(service) == 0
    for table in TABLES:
        assert sorted(m["data"]["id"] for m in bodies(iggy, table)) == [1, 2, 3, 4, 5]  # once: one slot per table
    slots = sorted(row[0] for row in query(pg_dsn, "SELECT slot_name FROM pg_replication_slots"))
    assert slots == ["iggy_slot_shard0", "iggy_slot_shard1"]
    published = query(pg_dsn, "SELECT tablename, pubname FROM pg_publication_tables ORDER BY 1")
    assert [name for name, _ in published] == TABLES  # each table in exactly one publication
    for name, publication in published:
        assert publication == f"iggy_publication_shard{shard_of(parse_config(f'source: {{connection_string: x, mode: cdc, tables: [{name}]}}').source.tables[0], 2)}"
    # the split changes under replica 0: refused, not silently moved
    moved = _config(tmp_path, pg_dsn, iggy, 0, 3, "cdc")
    result = run_cli("check", "--config", str(moved))
    assert result.returncode == 3
    assert "belongs to shard 0 of 2, the configuration says 0 of 3" in result.stderr


def test_two_polling_replicas_deliver_every_row_once(pg_dsn, iggy, tmp_path):
    for table in TABLES:
        execute(pg_dsn, sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, note text)").format(sql.Identifier(table)))
        execute(pg_dsn, sql.SQL("INSERT INTO {} (note) SELECT 'n' || g FROM generate_series(1, 7) g")
                .format(sql.Identifier(table)))
    services = [start_service(_config(tmp_path, pg_dsn, iggy, index, 2, "polling")) for index in range(2)]
    try:
        wait_for(lambda: all(len(bodies(iggy, table)) >= 7 for table in TABLES), 60, message="every table's rows")
    finally:
        for service in services:
            assert stop_service(service) == 0
    for table in TABLES:
        assert sorted(m["data"]["id"] for m in bodies(iggy, table)) == list(range(1, 8))
