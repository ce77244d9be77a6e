"""Several pgsource replicas side by side (``shard: {index, count}``), one PostgreSQL, one Iggy.

What an operator of the sharded layout relies on (README "Sharding"): every table is owned by
exactly one replica; in CDC each replica has a slot and a publication of its own; a replica
killed (kill -9) pauses its own tables only and loses nothing, its restart resumes them with
the ids the rows had; a changed shard count is refused, and the documented migration (stop all,
drop the old slots, remove the old ``state.dir``s, start with the new count) re-sends every row
under its old id. The same scenario runs against a real Iggy in ``tests/real/test_real_replicas.py``.
"""

from __future__ import annotations

import shutil

import pytest
from psycopg2 import sql

from pgsource.state import FileStateStore
from tests.cdc.common import confirmed_lsn, stored, wait_until_capturing
from tests.support import (
    execute,
    kill_service,
    query,
    run_cli,
    start_service,
    stop_service,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.timeout(120)

# With count 3, xxh32("public.<name>") % 3 gives: users, invoices -> 0; payments, items, refunds -> 1;
# orders -> 2; stock is pinned to 2 (``tables[].shard``). tests/cdc/test_sharding.py checks the hash.
HASHED = ["users", "invoices", "payments", "items", "refunds", "orders"]
OWNERS_OF_3 = {"users": 0, "invoices": 0, "payments": 1, "items": 1, "refunds": 1, "orders": 2, "stock": 2}
TABLES = [*HASHED, {"name": "stock", "shard": 2}]
NAMES = list(OWNERS_OF_3)


def _replica(tmp_path, dsn, iggy, index: int, count: int, tables=TABLES, **source):
    directory = tmp_path / f"replica{index}-of-{count}"
    directory.mkdir(exist_ok=True)
    return write_config(directory, dsn, iggy.address, source={"tables": tables, **source},
                        state={"dir": str(directory / "state")}, shard={"index": index, "count": count})


def _create(dsn: str, rows: int) -> None:
    for name in NAMES:
        execute(dsn, sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, note text)").format(sql.Identifier(name)))
    _insert(dsn, rows)


def _insert(dsn: str, rows: int) -> None:
    for name in NAMES:
        execute(dsn, sql.SQL("INSERT INTO {} (note) SELECT 'n' || g FROM generate_series(1, %s) g")
                .format(sql.Identifier(name)), (rows,))


def _rows(iggy, name: str) -> dict[int, set[int]]:
    """Row id -> the message ids it arrived under."""
    out: dict[int, set[int]] = {}
    for message_id, body, _ in stored(iggy, name):
        out.setdefault(body["data"]["id"], set()).add(message_id)
    return out


def _owned(config) -> set[str]:
    """The tables whose offsets a replica's state.dir holds."""
    directory = config.parent / "state"
    return {key.split("/", 1)[1] for key in FileStateStore(str(directory)).keys() if key.startswith("polling/")}


def test_three_polling_replicas_own_disjoint_tables_and_a_killed_one_pauses_only_its_own(pg_dsn, iggy, tmp_path):
    _create(pg_dsn, 40)
    configs = [_replica(tmp_path, pg_dsn, iggy, index, 3) for index in range(3)]
    services = [start_service(config) for config in configs]
    try:
        wait_for(lambda: all(len(_rows(iggy, name)) == 40 for name in NAMES), 60, 0.2, message="every table's rows")
        wait_for(lambda: sum(len(_owned(config)) for config in configs) >= len(NAMES), 30, message="every table's offset")
        owned = [_owned(config) for config in configs]
        # every table is owned by exactly one replica: the one the split names
        assert owned == [{n for n, s in OWNERS_OF_3.items() if s == index} for index in range(3)]
        for index, config in enumerate(configs):
            tables = ", ".join(n for n in NAMES if OWNERS_OF_3[n] == index)
            assert f"shard {index} of 3: {tables}" in config.with_suffix(".log").read_text()

        kill_service(services[1])  # kill -9 of the whole replica: supervisor, workers, publisher
        _insert(pg_dsn, 25)
        others = [n for n in NAMES if OWNERS_OF_3[n] != 1]
        wait_for(lambda: all(len(_rows(iggy, n)) == 65 for n in others), 60, 0.2, message="the live replicas' tables")
        # the dead replica's tables are paused (nothing of the new rows), the others went on
        assert {n: len(_rows(iggy, n)) for n in NAMES if OWNERS_OF_3[n] == 1} == {"payments": 40, "items": 40, "refunds": 40}
        assert all(s.poll() is None for i, s in enumerate(services) if i != 1)

        services[1] = start_service(configs[1])
        wait_for(lambda: all(len(_rows(iggy, name)) == 65 for name in NAMES), 60, 0.2, message="the restarted replica's tables")
    finally:
        for service in services:
            if service.poll() is None:
                assert stop_service(service) == 0
    for name in NAMES:
        rows = _rows(iggy, name)
        assert sorted(rows) == list(range(1, 66)), name  # nothing lost
        assert all(len(ids) == 1 for ids in rows.values()), name  # a re-sent row keeps its id

    # the split changes under replica 0: refused at start, exit 3, one line naming both splits
    moved = _replica(tmp_path, pg_dsn, iggy, 0, 2, tables=HASHED + [{"name": "stock", "shard": 1}])
    shutil.copytree(configs[0].parent / "state", moved.parent / "state")  # the same volume, a new count
    refused = start_service(moved)
    assert refused.wait(60) == 3
    line = [ln for ln in moved.with_suffix(".log").read_text().splitlines() if "belongs to shard" in ln]
    assert line and "belongs to shard 0 of 3, the configuration says 0 of 2" in line[0]

    # the documented migration: every replica stopped (done), old state.dirs removed, new count started
    ids_before = {name: _rows(iggy, name) for name in NAMES}
    for index in range(2):
        shutil.rmtree(tmp_path / f"replica{index}-of-2" / "state", ignore_errors=True)
    migrated = [start_service(_replica(tmp_path, pg_dsn, iggy, index, 2,
                                       tables=HASHED + [{"name": "stock", "shard": 1}])) for index in range(2)]
    try:
        wait_for(lambda: all(len(stored(iggy, n)) >= 130 for n in NAMES), 60, 0.2, message="the rows read again")
    finally:
        for service in migrated:
            assert stop_service(service) == 0
    for name in NAMES:  # read again from the start: the same rows under the same ids
        assert _rows(iggy, name) == ids_before[name], name


def _cdc_replica(tmp_path, dsn, iggy, index: int, count: int, **source):
    return _replica(tmp_path, dsn, iggy, index, count, mode="cdc", cdc_transport="replication", **source)


def test_two_cdc_replicas_each_hold_their_slot_and_a_killed_one_resumes_from_it(pg_dsn, iggy, tmp_path):
    for name in NAMES:
        execute(pg_dsn, sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, note text)").format(sql.Identifier(name)))
    owner = {n: i % 2 for i, n in enumerate(NAMES)}  # pinned: both replicas get tables whatever the hash
    tables = [{"name": n, "shard": s} for n, s in owner.items()]
    configs = [_cdc_replica(tmp_path, pg_dsn, iggy, index, 2, tables=tables) for index in range(2)]
    services = [start_service(config) for config in configs]
    try:
        wait_until_capturing(pg_dsn, "replication", slots=2)
        _insert(pg_dsn, 10)
        wait_for(lambda: all(len(_rows(iggy, n)) == 10 for n in NAMES), 60, 0.2, message="every table's changes")

        kill_service(services[0])
        held = confirmed_lsn(pg_dsn, "iggy_slot_shard0")
        _insert(pg_dsn, 5)
        wait_for(lambda: all(len(_rows(iggy, n)) == 15 for n in NAMES if owner[n] == 1), 60, 0.2,
                 message="the live replica's changes")
        assert {n: len(_rows(iggy, n)) for n in NAMES if owner[n] == 0} == {n: 10 for n in NAMES if owner[n] == 0}
        assert confirmed_lsn(pg_dsn, "iggy_slot_shard0") == held  # the dead replica's slot keeps its changes

        services[0] = start_service(configs[0])
        wait_for(lambda: all(len(_rows(iggy, n)) == 15 for n in NAMES), 60, 0.2, message="the restarted replica's changes")
        assert confirmed_lsn(pg_dsn, "iggy_slot_shard0") > held  # positions only move forward
    finally:
        for service in services:
            if service.poll() is None:
                assert stop_service(service) == 0
    for name in NAMES:
        rows = _rows(iggy, name)
        assert sorted(rows) == list(range(1, 16)), name
        assert all(len(ids) == 1 for ids in rows.values()), name
    slots = query(pg_dsn, "SELECT slot_name FROM pg_replication_slots ORDER BY 1")
    assert [s for (s,) in slots] == ["iggy_slot_shard0", "iggy_slot_shard1"]
    published = dict(query(pg_dsn, "SELECT tablename, pubname FROM pg_publication_tables"))
    assert published == {n: f"iggy_publication_shard{s}" for n, s in owner.items()}

    # a new count: refused (the replica's state.dir records the old split)
    split = {n: i % 3 for i, n in enumerate(NAMES)}
    moved = _cdc_replica(tmp_path, pg_dsn, iggy, 0, 3, tables=[{"name": n, "shard": s} for n, s in split.items()],
                         snapshot="initial")
    shutil.copytree(configs[0].parent / "state", moved.parent / "state")
    result = run_cli("check", "--config", str(moved))
    assert result.returncode == 3 and "belongs to shard 0 of 2, the configuration says 0 of 3" in result.stderr
    # the migration: drop-slot once per old shard (each with its index), remove the state.dirs, start anew
    for config in configs:
        assert run_cli("drop-slot", "--config", str(config), "--yes").returncode == 0
    assert query(pg_dsn, "SELECT count(*) FROM pg_replication_slots")[0][0] == 0
    shutil.rmtree(moved.parent / "state")
    migrated = [start_service(_cdc_replica(tmp_path, pg_dsn, iggy, index, 3, snapshot="initial",
                                           tables=[{"name": n, "shard": s} for n, s in split.items()]))
                for index in range(3)]
    try:
        wait_for(lambda: all(sum(b["operation_type"] == "SELECT" for _, b, _ in stored(iggy, n)) == 15 for n in NAMES),
                 60, 0.2, message="the new shards' initial snapshots")
    finally:
        for service in migrated:
            assert stop_service(service) == 0
    slots = query(pg_dsn, "SELECT slot_name FROM pg_replication_slots ORDER BY 1")
    assert [s for (s,) in slots] == ["iggy_slot_shard0", "iggy_slot_shard1", "iggy_slot_shard2"]
