"""The service (``pgsource run``, a subprocess) against an Iggy that fails the way the real
server does: wide batches over the 64 MiB request limit, ``count = 0`` replies, a frozen
server, refusals no retry can fix, a wedged publisher. Every row arrives once, or the
service stops with exit code 5 and one clear line."""

from __future__ import annotations

import os
import signal

import psutil

from tests.support import (
    bodies,
    committed_through,
    execute,
    start_service,
    stop_service,
    wait_for,
    write_config,
)


def _ids(iggy, topic: str = "t") -> list[int]:
    return [b["data"]["id"] for b in bodies(iggy, topic)]


def _publisher_pid(service_pid: int) -> int | None:
    """The child that holds the Iggy SDK (the publisher)."""
    for child in psutil.Process(service_pid).children():
        try:
            if any("apache_iggy" in m.path for m in child.memory_maps()):
                return child.pid
        except psutil.Error:
            continue
    return None


def _log(config) -> str:
    return config.with_suffix(".log").read_text()


def test_a_batch_of_wide_rows_over_64_mib_is_split_not_resent_for_ever(pg_dsn, iggy, tmp_path):
    """100 rows of ~1 MB in one batch (~100 MB): the server closes the connection on a request
    over 64 MiB, so a batch capped by rows only was re-sent for ever and nothing arrived."""
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY, blob text)")
    execute(pg_dsn, "INSERT INTO t (blob) SELECT repeat(md5(g::text), 32768) FROM generate_series(1, 100) g")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"], "batch_size": 100},
                          iggy={"send_timeout": "20s"})
    service = start_service(config)
    try:
        wait_for(lambda: iggy.message_count("pg", "t") >= 100, 180, 0.5, message="100 wide rows")
        # acknowledged through the last row: a batch is re-sent only before its ack, so none will be now
        wait_for(lambda: committed_through(tmp_path, "polling/t", "100"), 30, message="the offset of row 100")
    finally:
        assert stop_service(service) == 0
    assert _ids(iggy) == list(range(1, 101))
    assert len(bodies(iggy, "t")[0]["data"]["blob"]) == 32 * 32768


def test_count_0_replies_are_acknowledgements_not_failures(pg_dsn, iggy, tmp_path):
    """The server answers ``count = 0`` for a committed batch without offsets to report; treated
    as a failure, every batch was re-sent for ever (duplicates, and the offset never moved)."""
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO t SELECT FROM generate_series(1, 50)")
    iggy.confirm_without_offsets()
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"], "batch_size": 20})
    service = start_service(config)
    try:
        wait_for(lambda: iggy.message_count("pg", "t") >= 50, 60, message="50 rows")
        execute(pg_dsn, "INSERT INTO t DEFAULT VALUES")
        wait_for(lambda: iggy.message_count("pg", "t") >= 51, 60, message="a row after the first batches")
        wait_for(lambda: committed_through(tmp_path, "polling/t", "51"), 30, message="the offset of row 51")
    finally:
        assert stop_service(service) == 0
    assert _ids(iggy) == list(range(1, 52))  # once each: acknowledged at the first count = 0 reply


def test_a_frozen_iggy_ends_in_timeouts_and_retries_without_piling_up_connections(pg_dsn, iggy, tmp_path):
    """Frozen (connects succeed, nothing answers): every SDK call times out, the publisher shuts
    the connection it gave up on (the SDK keeps it and its request for ever otherwise), retries,
    and delivers everything once Iggy answers again."""
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO t DEFAULT VALUES")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"]},
                          iggy={"send_timeout": "1s"}, supervisor={"heartbeat_timeout": "30s"})
    service = start_service(config)
    try:
        wait_for(lambda: _ids(iggy) == [1], 60, message="the first row")
        publisher = psutil.Process(wait_for(lambda: _publisher_pid(service.pid), 30, message="the publisher"))
        iggy.freeze()
        accepted = iggy.connections_accepted()
        execute(pg_dsn, "INSERT INTO t SELECT FROM generate_series(2, 30)")
        wait_for(lambda: iggy.connections_accepted() >= accepted + 4, 90, 0.2, message="several timed-out attempts")
        assert "no answer within 1s" in _log(config)
        established = [c for c in publisher.net_connections(kind="tcp")
                       if c.raddr and c.raddr.port == iggy.port and c.status == psutil.CONN_ESTABLISHED]
        assert len(established) <= 1, established  # one per retry, all left open, before
        assert publisher.is_running() and service.poll() is None
        iggy.freeze(False)
        wait_for(lambda: set(_ids(iggy)) == set(range(1, 31)), 90, 0.2, message="every row after the thaw")
    finally:
        assert stop_service(service) == 0
    assert sorted(set(_ids(iggy))) == list(range(1, 31))


def test_a_wedged_publisher_is_killed_and_the_pipeline_restarted(pg_dsn, iggy, tmp_path):
    """The publisher now proves liveness like the workers: silent for heartbeat_timeout, it is
    killed and the pipeline restarted (before, a stopped publisher stalled the service for ever)."""
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO t DEFAULT VALUES")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"]},
                          supervisor={"heartbeat_timeout": "3s", "restart_backoff": "100ms"})
    service = start_service(config)
    try:
        wait_for(lambda: _ids(iggy) == [1], 60, message="the first row")
        wedged = wait_for(lambda: _publisher_pid(service.pid), 30, message="the publisher")
        os.kill(wedged, signal.SIGSTOP)
        execute(pg_dsn, "INSERT INTO t DEFAULT VALUES")
        wait_for(lambda: not psutil.pid_exists(wedged) or psutil.Process(wedged).status() == psutil.STATUS_ZOMBIE,
                 60, message="the wedged publisher to be killed")
        wait_for(lambda: 2 in _ids(iggy), 60, message="the row, sent by the new publisher")
    finally:
        assert stop_service(service) == 0
    assert "publisher has been silent" in _log(config)


def _refused(pg_dsn, iggy, tmp_path, **iggy_keys) -> tuple[int, str]:
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO t DEFAULT VALUES")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"]}, iggy=iggy_keys)
    service = start_service(config)
    try:
        code = service.wait(90)
    finally:
        if service.poll() is None:
            stop_service(service)
    return code, _log(config)


def _admin(iggy, *steps) -> None:
    """Run SDK calls (each ``client -> awaitable``) as root, e.g. to prepare a stream or topic."""
    import asyncio

    from apache_iggy import IggyClient

    async def run() -> None:
        admin = IggyClient(iggy.address)
        await admin.connect()
        await admin.login_user("iggy", "iggy")
        for step in steps:
            await step(admin)

    asyncio.run(run())


def test_a_missing_topic_with_create_missing_false_stops_with_exit_5(pg_dsn, iggy, tmp_path):
    _admin(iggy, lambda c: c.create_stream("pg"))
    code, log = _refused(pg_dsn, iggy, tmp_path, create_missing=False)
    assert code == 5
    assert "Iggy topic pg/t does not exist and iggy.create_missing is false" in log
    assert iggy.topics("pg") == []


def test_a_missing_stream_with_create_missing_false_stops_with_exit_5(pg_dsn, iggy, tmp_path):
    code, log = _refused(pg_dsn, iggy, tmp_path, create_missing=False)
    assert code == 5
    assert "Iggy stream 'pg' does not exist and iggy.create_missing is false" in log


def test_a_topic_with_too_few_partitions_stops_with_exit_5(pg_dsn, iggy, tmp_path):
    _admin(iggy, lambda c: c.create_stream("pg"), lambda c: c.create_topic("pg", "t", 1))
    code, log = _refused(pg_dsn, iggy, tmp_path, partitions=4)
    assert code == 5
    assert "Iggy topic pg/t has 1 partition(s), iggy.partitions asks for 4" in log
    assert iggy.messages("pg", "t") == []


def test_a_wrong_password_stops_with_exit_5(pg_dsn, iggy, tmp_path):
    code, log = _refused(pg_dsn, iggy, tmp_path, password="not-the-password")
    assert code == 5
    assert "refused user 'iggy'" in log and "Invalid credentials" in log


def test_a_digits_only_topic_is_refused_in_the_config(pg_dsn, iggy, tmp_path):
    """The SDK would send "2024" as the numeric id 2024: never found, created again, written elsewhere."""
    execute(pg_dsn, 'CREATE TABLE "2024" (id serial PRIMARY KEY)')
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["2024"]})
    service = start_service(config)
    assert service.wait(60) == 2
    assert "for table 2024, topic name '2024' is a number" in _log(config)
    assert iggy.streams() == []
