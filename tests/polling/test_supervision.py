"""The supervisor: a silent worker is replaced, a crash-looping one stops the service clearly."""

from __future__ import annotations

import os
import signal
import time
from urllib.parse import urlparse

import psutil
from psycopg2 import sql

from tests.support import (
    batch_channel_fill,
    bodies,
    execute,
    start_service,
    stop_service,
    wait_for,
    write_config,
)


def _child_connected_to(service_pid: int, port: int) -> int | None:
    """The child of the service with a TCP connection to ``port``."""
    for child in psutil.Process(service_pid).children():
        try:
            if any(c.raddr and c.raddr.port == port for c in child.net_connections(kind="tcp")):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def _worker_pid(service_pid: int, pg_port: int) -> int | None:
    """The child that holds a connection to PostgreSQL (the poll worker, not the publisher)."""
    return _child_connected_to(service_pid, pg_port)


def _publisher_pid(service_pid: int, iggy_port: int) -> int | None:
    """The child connected to Iggy (the publisher)."""
    return _child_connected_to(service_pid, iggy_port)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_hung_worker_is_killed_and_replaced(pg_dsn, iggy, tmp_path):
    port = urlparse(pg_dsn).port
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"]},
                          supervisor={"heartbeat_timeout": "2s", "restart_backoff": "100ms"})
    service = start_service(config)
    try:
        hung = wait_for(lambda: _worker_pid(service.pid, port), 30, message="the worker")
        os.kill(hung, signal.SIGSTOP)
        execute(pg_dsn, "INSERT INTO t DEFAULT VALUES")
        wait_for(lambda: _gone(hung), 30, message="the hung worker to be killed")
        wait_for(lambda: bodies(iggy, "t"), 30, message="the row, read by the replacement")
    finally:
        assert stop_service(service) == 0
    assert "has been silent" in config.with_suffix(".log").read_text()


def test_a_crash_looping_worker_stops_the_service_with_exit_code_6(pg_dsn, iggy, tmp_path):
    port = urlparse(pg_dsn).port
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"]},
                          supervisor={"max_restarts": 2, "restart_window": "60s", "restart_backoff": "100ms"})
    service = start_service(config)
    killed = set()
    deadline = time.monotonic() + 60
    while service.poll() is None and time.monotonic() < deadline:
        pid = _worker_pid(service.pid, port)
        if pid and pid not in killed:
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.05)  # the pace of this kill loop (it ends on the service's exit), not a wait
    assert service.wait(30) == 6
    assert len(killed) == 3
    assert "died 3 times within 60s" in config.with_suffix(".log").read_text()


def test_a_postgresql_outage_is_waited_out_not_a_crash_loop(iggy, tmp_path):
    from pgsource_testkit.postgres import LocalPostgres

    cluster = LocalPostgres().start()
    try:
        dsn = cluster.dsn()
        execute(dsn, "CREATE TABLE t (id serial PRIMARY KEY)")
        execute(dsn, "INSERT INTO t DEFAULT VALUES")
        config = write_config(tmp_path, dsn, iggy.address, source={"tables": ["t"]},
                              supervisor={"max_restarts": 1, "restart_backoff": "100ms"})
        service = start_service(config)
        try:
            wait_for(lambda: bodies(iggy, "t"), 30, message="the first row")
            cluster.stop_server()  # PostgreSQL goes away for longer than a crash loop would allow
            # the worker exits "PostgreSQL unavailable" again and again: more times than max_restarts
            # allows crashes, and the service still runs
            wait_for(lambda: config.with_suffix(".log").read_text().count("PostgreSQL unavailable") >= 4, 60,
                     message="repeated exits during the outage")
            assert service.poll() is None
            cluster.start_server()
            execute(dsn, "INSERT INTO t DEFAULT VALUES")
            wait_for(lambda: len(bodies(iggy, "t")) >= 2, 60, message="the row written after the outage")
        finally:
            assert stop_service(service) == 0
    finally:
        cluster.stop()
    assert [m["data"]["id"] for m in bodies(iggy, "t")] == [1, 2]
    assert "PostgreSQL unavailable" in config.with_suffix(".log").read_text()


def test_workers_killed_mid_send_do_not_wedge_the_others(pg_dsn, iggy, tmp_path):
    """SIGKILL a worker while batches queue up behind a slow Iggy: its half-written batch and the
    queue lock it may hold die with the pipeline's channels (fresh ones replace them), so the
    other worker keeps delivering and every row of both tables arrives."""
    port = urlparse(pg_dsn).port
    for table in ("a", "b"):
        execute(pg_dsn, sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, payload text)").format(sql.Identifier(table)))
        execute(pg_dsn, sql.SQL("INSERT INTO {} (payload) SELECT repeat('x', 300) FROM generate_series(1, 30000)")
                .format(sql.Identifier(table)))
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["a", "b"], "batch_size": 500},
                          workers=2, supervisor={"restart_backoff": "100ms", "stop_timeout": "10s"})
    iggy.set_latency(0.02)  # acks lag, the batch queue fills, writers block inside their puts
    service = start_service(config)
    try:
        for round_ in range(3):
            wait_for(lambda r=round_: len(bodies(iggy, "a")) + len(bodies(iggy, "b")) > 4000 * (r + 1), 60,
                     message=f"progress before kill {round_ + 1}")
            victim = wait_for(lambda: _worker_pid(service.pid, port), 30, message="a worker")
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda v=victim: _gone(v), 30, message="the killed worker to be gone")
        iggy.set_latency(0)
        for table in ("a", "b"):
            wait_for(lambda t=table: len({m["data"]["id"] for m in bodies(iggy, t)}) == 30000, 120,
                     message=f"every row of {table}")
    finally:
        assert stop_service(service) == 0
    for table in ("a", "b"):
        assert sorted({m["data"]["id"] for m in bodies(iggy, table)}) == list(range(1, 30001))


def test_a_worker_killed_halfway_through_writing_a_batch_never_makes_the_publisher_send_half_of_it(
        pg_dsn, iggy, tmp_path):
    """kill -9 while the worker's block (2 MB, twice the channel's pipe) is half written: the pipe is
    full, so the block in it is incomplete. The publisher never sends that half (it returns a block
    only once all of it was read); the supervisor restarts the pipeline on fresh channels, and every
    row arrives whole, none torn, none lost."""
    port = urlparse(pg_dsn).port
    payload = "x" * 2000
    execute(pg_dsn, sql.SQL("CREATE TABLE big (id serial PRIMARY KEY, payload text)"))
    execute(pg_dsn, sql.SQL("INSERT INTO big (payload) SELECT %s FROM generate_series(1, 8000)"), (payload,))
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["big"], "batch_size": 1000},
                          supervisor={"restart_backoff": "100ms", "stop_timeout": "10s"})
    iggy.set_latency(1.0)  # every send takes a second: the channel fills behind the first batches
    service = start_service(config)
    try:
        publisher = wait_for(lambda: _publisher_pid(service.pid, iggy.port), 30, message="the publisher")
        worker = wait_for(lambda: _worker_pid(service.pid, port), 30, message="the worker")
        fill = wait_for(lambda: (f := batch_channel_fill(publisher)) and f[0] > f[1] - 4096 and f, 60,
                        message="the batch channel's pipe to be full")
        assert fill[0] < 2_000_000  # a full pipe holds less than one block: the block in it is half written
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: _gone(worker), 30, message="the killed worker to be gone")
        wait_for(lambda: "restarting the publisher and every worker on fresh queues" in config.with_suffix(".log").read_text(),
                 30, message="the pipeline restart")
        iggy.set_latency(0)
        wait_for(lambda: len({m["data"]["id"] for m in bodies(iggy, "big")}) == 8000, 120, message="every row")
    finally:
        assert stop_service(service) == 0
    messages = bodies(iggy, "big")
    assert sorted({m["data"]["id"] for m in messages}) == list(range(1, 8001))
    assert all(m["data"]["payload"] == payload for m in messages)  # none torn


def test_a_statement_longer_than_the_heartbeat_timeout_is_not_killed(pg_dsn, iggy, tmp_path):
    """A batch read that takes 4 s with a 2 s heartbeat timeout: the worker cannot beat meanwhile, but
    its backend is active, so it is left to finish (once killed, it would run the same read forever)."""
    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
    execute(pg_dsn, "INSERT INTO t (note) SELECT 'n' || g FROM generate_series(1, 6) g")
    config = write_config(
        tmp_path, pg_dsn, iggy.address,
        source={"custom_query": "SELECT id, note FROM t, pg_sleep(4) WHERE id > $1 ORDER BY id LIMIT $2",
                "initial_offset": 0, "batch_size": 3},
        iggy={"topic": "slow"}, supervisor={"heartbeat_timeout": "2s", "restart_backoff": "100ms", "stop_timeout": "10s"},
    )
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "slow")) >= 6, 60, message="both slow batches")
    finally:
        assert stop_service(service, timeout=60) == 0
    assert sorted(m["data"]["id"] for m in bodies(iggy, "slow")) == [1, 2, 3, 4, 5, 6]
    log = config.with_suffix(".log").read_text()
    assert "; killing it" not in log
    assert "is running reading a batch of custom_query" in log and "a long statement, not a hang" in log


def test_a_statement_that_keeps_failing_stops_the_service_naming_it(pg_dsn, iggy, tmp_path):
    """A read that loses its connection every time (here it ends its own backend) would restart
    forever as an outage; after max_retries + 1 deaths in that statement, with nothing committed in
    between, the service stops with exit code 8 and says which statement."""
    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
    execute(pg_dsn, "INSERT INTO t (note) VALUES ('x')")
    config = write_config(
        tmp_path, pg_dsn, iggy.address,
        source={"custom_query": "SELECT id, note FROM t WHERE id > $1 AND pg_terminate_backend(pg_backend_pid())"
                                " ORDER BY id LIMIT $2", "initial_offset": 0, "max_retries": 2},
        iggy={"topic": "doomed"},
    )
    service = start_service(config)
    assert service.wait(90) == 8
    log = config.with_suffix(".log").read_text()
    assert "worker-0 died 3 times in a row while reading a batch of custom_query" in log
    assert not bodies(iggy, "doomed")
