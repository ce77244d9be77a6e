"""A table split into key-range chunks read by several workers: no row lost or repeated at an edge."""

from __future__ import annotations

from tests.support import (
    bodies,
    execute,
    run_cli,
    start_service,
    stop_service,
    stored_offset,
    wait_for,
    write_config,
)

BIG = 10**12


def _cuts(low: int, high: int, chunks: int) -> list[int]:
    span = high - low + 1
    return [low + span * index // chunks for index in range(1, chunks)]


def test_chunks_split_sparse_keys_without_loss_or_duplicates(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE sparse (id bigint PRIMARY KEY, note text)")
    low, high = 5, BIG + 9
    keys = {*range(5, 60), *range(1000, 1040), *range(BIG, BIG + 10)}
    for cut in _cuts(low, high, 3):
        keys |= {cut - 1, cut, cut + 1}  # rows right at every chunk edge
    execute(pg_dsn, "INSERT INTO sparse SELECT k, 'row ' || k FROM unnest(%s::bigint[]) AS k", (sorted(keys),))
    config = write_config(
        tmp_path, pg_dsn, iggy.address,
        # explicit sparse keys set by the test, no concurrent writer: no horizon, none needed
        source={"tables": [{"name": "sparse", "chunks": 3}], "batch_size": 7, "late_commits": "off"}, workers=2,
    )
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "sparse")) >= len(keys), 60, message="every row")
        # after the bulk load the last chunk goes on reading new keys incrementally
        execute(pg_dsn, "INSERT INTO sparse VALUES (%s, 'late')", (BIG + 100,))
        wait_for(lambda: len(bodies(iggy, "sparse")) >= len(keys) + 1, 30, message="a row inserted while running")
    finally:
        assert stop_service(service) == 0
    received = [m["data"]["id"] for m in bodies(iggy, "sparse")]
    assert sorted(received) == sorted(keys | {BIG + 100})
    stored = [stored_offset(tmp_path, f"polling/sparse#{chunk}of3").chunk for chunk in range(3)]
    cuts = _cuts(low, high, 3)
    assert stored == [(None, cuts[0]), (cuts[0], cuts[1]), (cuts[1], None)]


def test_a_restart_reuses_the_stored_cuts(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE grows (id serial PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO grows SELECT FROM generate_series(1, 100)")
    config = write_config(
        tmp_path, pg_dsn, iggy.address, source={"tables": [{"name": "grows", "chunks": 2}], "batch_size": 10}, workers=2,
    )
    service = start_service(config)
    try:
        # every row committed, not only in Iggy: a stop before a range is sealed against late commits
        # leaves its offset behind, and the restart would send those rows again (at least once)
        wait_for(lambda: sum(o.rows for o in _chunk_offsets(tmp_path, "grows", 2) if o) == 100, 60,
                 message="100 rows committed")
    finally:
        assert stop_service(service) == 0
    # the table grows while pgsource is down: new cuts would move the edge into read rows
    execute(pg_dsn, "INSERT INTO grows SELECT FROM generate_series(101, 400)")
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "grows")) >= 400, 60, message="400 rows")
    finally:
        assert stop_service(service) == 0
    received = [m["data"]["id"] for m in bodies(iggy, "grows")]
    assert sorted(received) == list(range(1, 401))


def test_chunks_of_a_table_without_an_integer_key_are_refused(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE named (code text PRIMARY KEY)")
    config = write_config(
        tmp_path, pg_dsn, "127.0.0.1:1", source={"tables": [{"name": "named", "chunks": 2}], "tracking_column": "code", "late_commits": "off"},
    )
    result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode != 0
    assert "table named: chunks need a unique NOT NULL integer tracking_column" in result.stderr


def _chunk_offsets(tmp_path, table: str, chunks: int) -> list:
    return [stored_offset(tmp_path, f"polling/{table}#{chunk}of{chunks}") for chunk in range(chunks)]
