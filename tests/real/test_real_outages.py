"""The Iggy server restarted with its data, unreachable for 30 s, frozen: pgsource waits, retries and
delivers every row, and no acknowledged row is sent as a new message (re-sends keep their ids)."""

from __future__ import annotations

import time

import psutil
import pytest

from tests.real.conftest import topics_for
from tests.real.reader import message_count, read_topic
from tests.support import execute, start_service, stop_service, wait_for, write_config

# The tables' ids are set by the test, one writer at a time: no transaction commits late, and
# the late-commit guard (which refuses client-set ids) is not what this suite checks: late_commits: off.

pytestmark = pytest.mark.timeout(900)


def _service(server, dsn, stream, tmp_path, rows: int, **keys):
    execute(dsn, "CREATE TABLE t (id int PRIMARY KEY, payload text)")
    execute(dsn, "INSERT INTO t SELECT g, repeat('p', 100) FROM generate_series(1, %s) g", (rows,))
    iggy_keys = {**topics_for(server, stream, ["t"], partitions=2), **keys.pop("iggy", {})}
    config = write_config(tmp_path, dsn, server.address, source={"tables": ["t"], "batch_size": 200, "late_commits": "off"},
                          iggy=server.iggy_section(stream, **iggy_keys), **keys)
    return config, start_service(config)


def _every_row_once_by_id(iggy, stream: str, rows: int) -> int:
    """Every row arrived, each re-send under its first id; how many duplicates."""
    stored = read_topic(iggy, stream, "t")
    ids_of_row: dict[int, set[int]] = {}
    for message in stored:
        ids_of_row.setdefault(message.body()["data"]["id"], set()).add(message.id)
    assert sorted(ids_of_row) == list(range(1, rows + 1))
    assert all(len(ids) == 1 for ids in ids_of_row.values())
    return len(stored) - rows


def _all_arrived(iggy, stream: str, rows: int) -> bool:
    return len({m.body()["data"]["id"] for m in read_topic(iggy, stream, "t")}) >= rows


def test_the_server_restarted_with_its_data_mid_run(controlled_iggy, real_pg_dsn, real_stream, tmp_path):
    rows = 300_000  # enough that the restart lands mid-run (60,000 were all delivered before it once)
    config, service = _service(controlled_iggy, real_pg_dsn, real_stream, tmp_path, rows)
    try:
        wait_for(lambda: message_count(controlled_iggy, real_stream, "t") >= 5_000, 120, 0.05, message="a first part")
        controlled_iggy.control.restart()
        before = message_count(controlled_iggy, real_stream, "t")
        assert before < rows, "everything arrived before the restart; the test proves nothing (raise rows)"
        execute(real_pg_dsn, "INSERT INTO t VALUES (%s, 'after the restart')", (rows + 1,))
        wait_for(lambda: _all_arrived(controlled_iggy, real_stream, rows + 1), 300, 1, message="every row")
        assert service.poll() is None
    finally:
        assert stop_service(service) == 0
    duplicates = _every_row_once_by_id(controlled_iggy, real_stream, rows + 1)
    assert duplicates <= 8 * 200 + 200  # the batches in flight at the restart, at most
    assert "connected to Iggy at" in config.with_suffix(".log").read_text()


def test_the_server_unreachable_for_30_seconds(controlled_iggy, real_pg_dsn, real_stream, tmp_path):
    rows = 2_000
    config, service = _service(controlled_iggy, real_pg_dsn, real_stream, tmp_path, rows,
                               iggy={"send_timeout": "3s"})
    try:
        wait_for(lambda: message_count(controlled_iggy, real_stream, "t") >= rows, 120, 0.2, message="the first rows")
        controlled_iggy.control.stop()
        execute(real_pg_dsn, "INSERT INTO t SELECT g, 'during the outage' FROM generate_series(%s, %s) g",
                (rows + 1, rows + 500))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the outage: the service must neither exit nor lose anything
            assert service.poll() is None
            time.sleep(1)  # the pace of the check during a 30 s outage (the scenario), not a wait
        controlled_iggy.control.start()
        wait_for(lambda: _all_arrived(controlled_iggy, real_stream, rows + 500), 120, 1, message="the rows of the outage")
    finally:
        assert stop_service(service) == 0
    assert _every_row_once_by_id(controlled_iggy, real_stream, rows + 500) == 0  # nothing was acknowledged twice
    log = config.with_suffix(".log").read_text()
    assert "retrying in" in log and "connected to Iggy at" in log


def _publisher(service_pid: int):
    for child in psutil.Process(service_pid).children():
        try:
            if any("apache_iggy" in m.path for m in child.memory_maps()):
                return child
        except psutil.Error:
            continue
    return None


def test_the_server_frozen_longer_than_the_timeouts(controlled_iggy, real_pg_dsn, real_stream, tmp_path):
    """SIGSTOP: connections stay open, nothing answers. Every SDK call ends in its timeout, the
    publisher keeps its heartbeat while it waits (not killed), does not pile up connections,
    and delivers everything after SIGCONT."""
    rows = 1_000
    config, service = _service(controlled_iggy, real_pg_dsn, real_stream, tmp_path, rows,
                               iggy={"send_timeout": "2s"}, supervisor={"heartbeat_timeout": "10s"})
    port = int(controlled_iggy.address.rsplit(":", 1)[1])
    try:
        wait_for(lambda: message_count(controlled_iggy, real_stream, "t") >= rows, 120, 0.2, message="the first rows")
        publisher = wait_for(lambda: _publisher(service.pid), 30, message="the publisher")
        controlled_iggy.control.freeze()
        try:
            execute(real_pg_dsn, "INSERT INTO t SELECT g, 'while frozen' FROM generate_series(%s, %s) g",
                    (rows + 1, rows + 300))
            frozen_until = time.monotonic() + 25
            peak = 0
            while time.monotonic() < frozen_until:
                established = [c for c in publisher.net_connections(kind="tcp") if c.raddr and c.raddr.port == port
                               and c.status == psutil.CONN_ESTABLISHED]
                peak = max(peak, len(established))
                time.sleep(0.5)  # the sampling pace while the server stays frozen for 25 s (the scenario)
        finally:
            controlled_iggy.control.thaw()
        wait_for(lambda: _all_arrived(controlled_iggy, real_stream, rows + 300), 120, 1, message="the rows sent while frozen")
        assert publisher.is_running(), "the publisher was killed while it waited on its timeouts"
        assert peak <= 2, f"{peak} connections open to the frozen server at once"
    finally:
        assert stop_service(service) == 0
    _every_row_once_by_id(controlled_iggy, real_stream, rows + 300)
    log = config.with_suffix(".log").read_text()
    assert "no answer within 2s" in log and "has been silent" not in log
