"""Rows that commit late are not lost: transactions that took their tracking value before rows that
were already read, and commit after them (sequence ids, ``now()`` timestamps, xid8)."""

from __future__ import annotations

import json
import time

import psycopg2
import pytest
from psycopg2 import sql

from tests.faults.writers import Writers
from tests.support import (
    bodies,
    execute,
    kill_service,
    polled_after,
    query,
    start_service,
    stop_service,
    stored_offset,
    wait_for,
    write_config,
)


def _open(dsn: str):
    conn = psycopg2.connect(dsn)
    return conn, conn.cursor()


def _ids(iggy, topic: str) -> list[int]:
    return [m["data"]["id"] for m in bodies(iggy, topic)]


@pytest.mark.parametrize(
    ("tracking", "ddl"),
    [
        ("id", "CREATE TABLE t (id bigserial PRIMARY KEY, note text)"),
        ("updated_at", "CREATE TABLE t (id bigserial PRIMARY KEY, note text, updated_at timestamptz NOT NULL DEFAULT now())"),
    ],
)
def test_a_transaction_that_took_its_value_first_and_commits_last_is_sent(pg_dsn, iggy, tmp_path, tracking, ddl):
    """The review's case: A takes its value and stays open; B inserts 120 later rows and commits;
    pgsource reads past A's value; A commits: A's row arrives, and the offset never passed it."""
    execute(pg_dsn, ddl)
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["t"], "tracking_column": tracking, "batch_size": 25},
                          state={"dir": str(tmp_path / "state"), "commit_interval": 0})
    service = start_service(config)
    try:
        a_conn, a = _open(pg_dsn)
        a.execute("INSERT INTO t (note) VALUES ('A') RETURNING id")  # id 1 / now() of A's BEGIN
        a_id = a.fetchone()[0]
        execute(pg_dsn, "INSERT INTO t (note) SELECT 'B' FROM generate_series(1, 120)")
        wait_for(lambda: len(bodies(iggy, "t")) >= 120, 30, message="B's rows, read past A's value")
        # B's rows were acknowledged; two more polls ran to their end after that: the offset had
        # every chance to move past A's value, which is behind the frontier
        for _ in range(2):
            seen = query(pg_dsn, "SELECT clock_timestamp()")[0][0]
            wait_for(lambda seen=seen: polled_after(pg_dsn, seen), 30, message="a poll after B's rows arrived")
        committed = stored_offset(tmp_path, "polling/t")
        assert committed is None or committed.position[0] < str(a_id) or tracking == "updated_at"
        a_conn.commit()
        a_conn.close()
        wait_for(lambda: "A" in [m["data"]["note"] for m in bodies(iggy, "t")], 30, message="A's late row")
    finally:
        assert stop_service(service) == 0
    received = _ids(iggy, "t")
    assert sorted(set(received)) == list(range(1, 122))
    assert len(received) == 121  # sent once: the re-read sends only what its first read could not see


BACKLOG = 150_000  # rows a worker reads below the horizon (a bulk load): a few seconds here
BELOW_ID = "SELECT %s::bigint < %s::bigint"  # the committed offset below A's value, compared by PostgreSQL
BELOW_TIME = "SELECT %s::timestamptz < %s::timestamptz"


def _count(iggy) -> int:
    return iggy.message_count("pg", "t") if "pg" in iggy.streams() and "t" in iggy.topics("pg") else 0


@pytest.mark.parametrize(
    ("tracking", "ddl"),
    [
        ("id", "CREATE TABLE t (id bigserial PRIMARY KEY, note text)"),
        ("updated_at", "CREATE TABLE t (id bigserial PRIMARY KEY, note text, updated_at timestamptz NOT NULL DEFAULT now())"),
    ],
)
def test_a_value_taken_while_a_backlog_is_read_is_not_passed(pg_dsn, iggy, tmp_path, tracking, ddl):
    """A backlog read below the horizon observes it once a second, not every 50 ms (issue 22: a
    staler horizon only seals less). A writes its row while the backlog is being read and stays open;
    B commits 100 later rows: the frontier reads B's rows on the staler horizon, their range is held,
    observations resume, A's row arrives when A commits, and the offset never passed it."""
    execute(pg_dsn, ddl)
    execute(pg_dsn, "INSERT INTO t (note) SELECT 'old' FROM generate_series(1, %s)", (BACKLOG,))
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["t"], "tracking_column": tracking, "batch_size": 100},
                          state={"dir": str(tmp_path / "state"), "commit_interval": 0})
    service = start_service(config)
    try:
        wait_for(lambda: _count(iggy) > 0, 60, interval=0.01, message="the backlog's first rows")
        a_conn, a = _open(pg_dsn)
        a.execute(sql.SQL("INSERT INTO t (note) VALUES ('A') RETURNING {}::text").format(sql.Identifier(tracking)))
        a_value = a.fetchone()[0]  # A's id / now(), taken while the backlog is read
        execute(pg_dsn, "INSERT INTO t (note) SELECT 'B' FROM generate_series(1, 100)")
        assert _count(iggy) < BACKLOG, "the backlog was read before A and B wrote: this test needs a longer backlog"
        wait_for(lambda: _count(iggy) >= BACKLOG + 100, 120, message="the backlog and B's rows, read past A's value")
        for _ in range(2):  # two polls ran to their end after B's rows arrived: the offset had every chance
            seen = query(pg_dsn, "SELECT clock_timestamp()")[0][0]
            wait_for(lambda seen=seen: polled_after(pg_dsn, seen), 30, message="a poll after B's rows arrived")
        committed = stored_offset(tmp_path, "polling/t")
        below = BELOW_ID if tracking == "id" else BELOW_TIME
        assert committed is not None and query(pg_dsn, below, (committed.position[0], a_value))[0][0], (committed, a_value)
        a_conn.commit()
        a_conn.close()
        wait_for(lambda: _count(iggy) >= BACKLOG + 101, 30, message="A's late row")
    finally:
        assert stop_service(service) == 0
    received = _ids(iggy, "t")
    assert sorted(set(received)) == list(range(1, BACKLOG + 102))
    assert len(received) == BACKLOG + 101  # sent once


@pytest.mark.parametrize(
    ("tracking", "column"),
    [
        ("id", ""),
        ("at", ", at timestamptz NOT NULL DEFAULT now()"),
        ("at", ", at timestamptz NOT NULL DEFAULT clock_timestamp()"),
        ("xid", ", xid xid8 NOT NULL DEFAULT pg_current_xact_id()"),
    ],
    ids=["sequence", "now", "clock_timestamp", "xid8"],
)
def test_writers_committing_out_of_order_lose_nothing(pg_dsn, iggy, tmp_path, tracking, column):
    execute(pg_dsn, sql.SQL("CREATE TABLE t (id bigserial PRIMARY KEY, writer int NOT NULL{})").format(
        sql.SQL(column)))  # column: a constant column definition of the parametrize list
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["t"], "tracking_column": tracking, "batch_size": 5, "poll_interval": "50ms"})
    service = start_service(config)
    try:
        writers = Writers(pg_dsn, writers=6, transactions=12, seed=7).start()
        writers.join()  # the prepared transactions too, committed later from other sessions
        assert not query(pg_dsn, "SELECT gid FROM pg_prepared_xacts")
        expected = writers.committed
        try:
            wait_for(lambda: expected <= set(_ids(iggy, "t")), 60, message=f"all {len(expected)} committed rows")
        except AssertionError:
            missing = sorted(expected - set(_ids(iggy, "t")))
            raise AssertionError(f"missing {missing}: {query(pg_dsn, 'SELECT id, writer, xmin::text FROM t WHERE id = ANY(%s)', (missing,))}") from None
    finally:
        assert stop_service(service) == 0
    received = _ids(iggy, "t")
    assert set(received) == expected  # nothing lost, nothing invented (rolled back rows never appear)
    by_id: dict[int, set[int]] = {}
    for message in iggy.messages("pg", "t"):
        by_id.setdefault(message.id, set()).add(message.payload)
    assert len(by_id) == len(expected)  # a re-sent row keeps its id


OPEN_FOR = 25.0  # seconds the holder stays open


def test_a_long_open_transaction_delays_no_other_row_and_says_what_holds_the_offset(pg_dsn, iggy, tmp_path):
    """Delivery never waits for the horizon: rows committed while a transaction stays open for 25 s
    (well past the 10 s after which the holder is logged) arrive within poll_interval + 1 s each; a
    metric and a log line name the holder and its age. Nothing in the code depends on how long."""
    from pgsource_testkit.postgres import free_port
    from tests.polling.test_metrics import _scrape

    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), note text)")
    port = free_port()
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["t"], "tracking_column": "at", "poll_interval": "200ms"},
                          metrics={"port": port, "host": "127.0.0.1"})
    service = start_service(config)
    try:
        execute(pg_dsn, "INSERT INTO t (note) VALUES ('warm-up')")
        wait_for(lambda: bodies(iggy, "t"), 30, message="the service connected and delivering")
        holder, cur = _open(pg_dsn)
        cur.execute("SET application_name = 'slow-batch-job'")
        cur.execute("INSERT INTO t (note) VALUES ('held') RETURNING id")
        cur.execute("SELECT pg_backend_pid()")
        holder_pid = cur.fetchone()[0]
        opened = time.monotonic()
        delays = []
        writer, wcur = _open(pg_dsn)
        writer.autocommit = True
        while time.monotonic() - opened < OPEN_FOR:
            wcur.execute("INSERT INTO t (note) VALUES ('meanwhile') RETURNING id")
            row_id, committed = wcur.fetchone()[0], time.time()
            wait_for(lambda row_id=row_id: row_id in _ids(iggy, "t"), 10, interval=0.02, message=f"row {row_id}")
            stored = next(m for m in iggy.messages("pg", "t") if b'"id":%d,' % row_id in m.payload)
            delays.append(stored.timestamp / 1e6 - committed)
            time.sleep(0.8)  # the writer's pace (a row every 0.8 s), not a wait
        samples = _scrape(port)
        age = samples[("pgsource_source_horizon_age_seconds", (("table", "t"), ("worker", "worker-0")))]
        holder.commit()
        holder.close()
        wait_for(lambda: "held" in [m["data"]["note"] for m in bodies(iggy, "t")], 30, message="the held row")
    finally:
        assert stop_service(service) == 0
    assert len(delays) > 15 and max(delays) <= 0.2 + 1.0, delays
    assert age >= OPEN_FOR - 5
    log = config.with_suffix(".log").read_text()
    assert "the committed offset is held at" in log and f"pid {holder_pid} (slow-batch-job)" in log


@pytest.mark.parametrize("tracking", ["id", "xid"])
def test_kill_9_while_a_transaction_is_open_keeps_the_offset_behind_it(pg_dsn, iggy, tmp_path, tracking):
    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, note text, xid xid8 NOT NULL DEFAULT pg_current_xact_id())")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"], "batch_size": 10, "tracking_column": tracking},
                          state={"dir": str(tmp_path / "state"), "commit_interval": 0})
    service = start_service(config)
    a_conn, a = _open(pg_dsn)
    a.execute("INSERT INTO t (note) VALUES ('A') RETURNING id")
    a_id = a.fetchone()[0]
    execute(pg_dsn, "INSERT INTO t (note) SELECT 'B' FROM generate_series(1, 100)")
    wait_for(lambda: len(bodies(iggy, "t")) >= 100, 30, message="B's rows")
    kill_service(service)
    committed = stored_offset(tmp_path, "polling/t")
    if tracking == "id":
        assert committed is None or int(committed.position[0]) < a_id  # never past the open transaction's id
    first = {m.id: json.loads(m.payload)["data"] for m in iggy.messages("pg", "t")}
    a_conn.commit()
    a_conn.close()
    service = start_service(config)
    try:
        wait_for(lambda: "A" in [m["data"]["note"] for m in bodies(iggy, "t")], 30, message="A's row after the restart")
    finally:
        assert stop_service(service) == 0
    assert sorted(set(_ids(iggy, "t"))) == list(range(1, 102))
    for message in iggy.messages("pg", "t"):  # re-sent rows keep their ids
        data = json.loads(message.payload)["data"]
        assert first.get(message.id, data) == data


def test_values_set_by_the_client_are_refused_unless_a_lag_covers_them(pg_dsn, iggy, tmp_path):
    from tests.support import run_cli

    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, note text)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3
    assert "table t: tracking_column 'id': integer column 'id' takes no default from a sequence" in result.stderr
    assert "set source.lag" in result.stderr
    execute(pg_dsn, "CREATE SEQUENCE cached CACHE 20; CREATE TABLE c (id bigint PRIMARY KEY DEFAULT nextval('cached'))")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["c"]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3 and "sequence cached has CACHE 20" in result.stderr

    # with a lag, a client-set value that commits late (within the lag) still arrives
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"], "lag": "3s", "batch_size": 5})
    service = start_service(config)
    try:
        a_conn, a = _open(pg_dsn)
        a.execute("INSERT INTO t VALUES (1, 'A')")
        execute(pg_dsn, "INSERT INTO t SELECT g, 'B' FROM generate_series(2, 30) g")
        wait_for(lambda: len(bodies(iggy, "t")) >= 29, 30, message="B's rows")
        a_conn.commit()
        a_conn.close()
        wait_for(lambda: 1 in _ids(iggy, "t"), 30, message="A's late row, within the lag")
    finally:
        assert stop_service(service) == 0
    assert sorted(_ids(iggy, "t")) == list(range(1, 31))
