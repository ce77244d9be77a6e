"""Issue 9, item 2: the slot is never confirmed past a change Iggy has not acknowledged.

Whatever arrives meanwhile (keepalives, WAL of other tables, idle time), and with
interleaved transactions whose next BEGIN starts below the previous commit's end. The
proof is the user's: read ``pg_replication_slots`` while Iggy is unreachable, kill -9,
bring Iggy back, restart: the change arrives.
"""

from __future__ import annotations

import time

import psycopg2
import pytest

from tests.cdc.common import TRANSPORTS, cdc_config, confirmed_lsn, lsn_number, stored, wait_until_capturing
from tests.support import execute, kill_service, query, start_service, stop_service, wait_for

# Seconds of keepalives and idle time watched while Iggy is unreachable. Streaming: longer than
# psycopg2's default status_interval (10 s), after which psycopg2 sends whatever flush position
# it holds by itself; the SQL transport has no such clock.
OBSERVE = {"replication": 11.0, "sql": 4.0}


def _watch_slot(dsn: str, seconds: float) -> list[int]:
    """confirmed_flush_lsn sampled for ``seconds`` while other tables write (the walsender decodes that
    WAL, skips it and sends keepalives with its position), then idle. An observation window, not a wait."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if time.monotonic() < deadline - seconds / 2:
            execute(dsn, "INSERT INTO noise (pad) SELECT 'x' FROM generate_series(1, 50)")
        samples.append(confirmed_lsn(dsn))
        time.sleep(0.05)  # the sampling pace of the observation window, not a wait
    return samples


def _commit_lsn(iggy, row_id: int) -> int:
    """The commit LSN of the transaction that wrote ``row_id``, from its message's ``lsn`` header."""
    return next(lsn_number(m.headers["lsn"]) for _, body, m in stored(iggy, "t") if body["data"]["id"] == row_id)


def _unreachable(iggy) -> None:
    iggy.refuse_connections()
    iggy.drop_connections()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_slot_stays_below_a_change_while_iggy_is_unreachable(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE noise (id serial PRIMARY KEY, pad text)")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"])
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO t VALUES (0)")  # one change through first: the publisher is connected
        wait_for(lambda: stored(iggy, "t"), 30, message="the first change")
        _unreachable(iggy)
        execute(pg_dsn, "INSERT INTO t VALUES (1)")  # one isolated insert that Iggy never acknowledges
        samples = _watch_slot(pg_dsn, OBSERVE[transport])
    finally:
        kill_service(service)  # a crash (OOM, kill -9) in that window
    iggy.refuse_connections(False)
    service = start_service(config)
    try:
        wait_for(lambda: any(body["data"]["id"] == 1 for _, body, _ in stored(iggy, "t")), 60,
                 message="the unacknowledged change after the restart")
    finally:
        assert stop_service(service) == 0
    commit = _commit_lsn(iggy, 1)
    assert max(samples) <= commit, f"the slot was confirmed to {max(samples)}, past the change committed at {commit}"
    assert sorted({body["data"]["id"] for _, body, _ in stored(iggy, "t")}) == [0, 1]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_interleaved_transactions_are_confirmed_only_as_far_as_iggy_acknowledged(pg_dsn, iggy, tmp_path, transport):
    """B begins and writes first, A commits (acknowledged, confirmed), B commits while Iggy is
    unreachable: B's first change lies below A's commit end, the case where psycopg2 would move
    its own flush position to a keepalive's WAL end."""
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE noise (id serial PRIMARY KEY, pad text)")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"])
    service = start_service(config)
    b = psycopg2.connect(pg_dsn)
    try:
        wait_until_capturing(pg_dsn, transport)
        with b.cursor() as cur:
            cur.execute("INSERT INTO t VALUES (2)")  # B writes first and stays open
            cur.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
            b_written = int(cur.fetchone()[0])
        execute(pg_dsn, "INSERT INTO t VALUES (1)")  # A commits
        wait_for(lambda: any(body["data"]["id"] == 1 for _, body, _ in stored(iggy, "t")), 30, message="A in Iggy")
        a_commit = _commit_lsn(iggy, 1)
        wait_for(lambda: confirmed_lsn(pg_dsn) > a_commit, 30, message="A confirmed to the slot")
        _unreachable(iggy)
        b.commit()  # B commits after A, while nothing can be acknowledged
        samples = _watch_slot(pg_dsn, OBSERVE[transport])
    finally:
        b.close()
        kill_service(service)
    iggy.refuse_connections(False)
    service = start_service(config)
    try:
        wait_for(lambda: any(body["data"]["id"] == 2 for _, body, _ in stored(iggy, "t")), 60, message="B after the restart")
    finally:
        assert stop_service(service) == 0
    assert b_written < a_commit  # B's first change precedes A's commit: the interleaving really happened
    b_commit = _commit_lsn(iggy, 2)
    assert max(samples) <= b_commit, f"the slot was confirmed to {max(samples)}, past B committed at {b_commit}"
    assert query(pg_dsn, "SELECT count(*) FROM t")[0][0] == 2
