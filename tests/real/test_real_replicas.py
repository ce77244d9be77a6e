"""Several pgsource replicas (``shard: {index, count}``) against one real Iggy (a single server, or
the 3-node cluster with ``PGSOURCE_TEST_IGGY_CLUSTER=3``), one PostgreSQL: the stand-in scenario of
``tests/polling/test_replicas.py`` where it matters that the server is real."""

from __future__ import annotations

import pytest
from psycopg2 import sql

from tests.real.conftest import topics_for
from tests.real.reader import read_topic
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

pytestmark = pytest.mark.timeout(600)

NAMES = ["users", "invoices", "payments", "items", "refunds", "orders"]
OWNER = {name: index % 3 for index, name in enumerate(NAMES)}  # pinned: every replica gets two tables


def _rows(iggy, stream: str, name: str) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for message in read_topic(iggy, stream, name):
        out.setdefault(message.body()["data"]["id"], set()).add(message.id)
    return out


def _insert(dsn: str, rows: int) -> None:
    for name in NAMES:
        execute(dsn, sql.SQL("INSERT INTO {} (note) SELECT 'n' || g FROM generate_series(1, %s) g")
                .format(sql.Identifier(name)), (rows,))


def _replica(iggy, dsn, stream, tmp_path, index: int, count: int, iggy_keys: dict, owner=OWNER, **source):
    directory = tmp_path / f"replica{index}-of-{count}"
    directory.mkdir(exist_ok=True)
    tables = [{"name": name, "shard": shard} for name, shard in owner.items()]
    return write_config(directory, dsn, iggy.address, source={"tables": tables, **source},
                        iggy=iggy.iggy_section(stream, **iggy_keys),
                        state={"dir": str(directory / "state")}, shard={"index": index, "count": count})


@pytest.mark.parametrize("mode", ["polling", "cdc"])
def test_replicas_split_the_tables_and_a_killed_one_pauses_only_its_own(mode, real_iggy, real_pg_dsn, real_stream, tmp_path):
    for name in NAMES:
        execute(real_pg_dsn, sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, note text)").format(sql.Identifier(name)))
    keys = topics_for(real_iggy, real_stream, NAMES)
    source = {"mode": mode, "cdc_transport": "replication"} if mode == "cdc" else {"late_commits": "auto"}
    configs = [_replica(real_iggy, real_pg_dsn, real_stream, tmp_path, i, 3, keys, **source) for i in range(3)]
    services = [start_service(config) for config in configs]
    try:
        if mode == "cdc":
            wait_for(lambda: query(real_pg_dsn, "SELECT count(*) FROM pg_replication_slots WHERE active")[0][0] == 3,
                     120, 0.2, message="three slots held")
        _insert(real_pg_dsn, 30)
        wait_for(lambda: all(len(_rows(real_iggy, real_stream, n)) == 30 for n in NAMES), 120, 0.5, message="every table")
        kill_service(services[1])
        _insert(real_pg_dsn, 20)
        wait_for(lambda: all(len(_rows(real_iggy, real_stream, n)) == 50 for n in NAMES if OWNER[n] != 1), 120, 0.5,
                 message="the live replicas' tables")
        assert [len(_rows(real_iggy, real_stream, n)) for n in NAMES if OWNER[n] == 1] == [30, 30]  # paused
        services[1] = start_service(configs[1])
        wait_for(lambda: all(len(_rows(real_iggy, real_stream, n)) == 50 for n in NAMES), 120, 0.5,
                 message="the restarted replica's tables")
    finally:
        for service in services:
            if service.poll() is None:
                assert stop_service(service) == 0
    for name in NAMES:
        rows = _rows(real_iggy, real_stream, name)
        assert sorted(rows) == list(range(1, 51)), name  # nothing lost
        assert all(len(ids) == 1 for ids in rows.values()), name  # re-sends keep their ids
    if mode == "cdc":
        slots = [s for (s,) in query(real_pg_dsn, "SELECT slot_name FROM pg_replication_slots ORDER BY 1")]
        assert slots == ["iggy_slot_shard0", "iggy_slot_shard1", "iggy_slot_shard2"]
        published = dict(query(real_pg_dsn, "SELECT tablename, pubname FROM pg_publication_tables"))
        assert published == {n: f"iggy_publication_shard{s}" for n, s in OWNER.items()}
    moved = _replica(real_iggy, real_pg_dsn, real_stream, tmp_path, 0, 2, keys,
                     owner={n: s % 2 for n, s in OWNER.items()}, **source)
    (moved.parent / "state").symlink_to(configs[0].parent / "state")  # the same volume, a new count
    result = run_cli("check", "--config", str(moved))
    assert result.returncode == 3 and "belongs to shard 0 of 3, the configuration says 0 of 2" in result.stderr
    if mode == "cdc":
        for config in configs:
            assert run_cli("drop-slot", "--config", str(config), "--yes").returncode == 0
