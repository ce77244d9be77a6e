"""pgsource into a 3-node Iggy cluster while a node is lost: kill -9 of the node pgsource writes
through (the partition's primary), kill -9 of a follower, SIGSTOP of either for 30 s.

Rows are written all along (one writer, ids from the test). Every committed row arrives, each
under one id however often it is re-sent, the service never exits, and its positions (the
polling offset, the slot's confirmed LSN) never move backward. How long pgsource took from the
loss to its first acknowledged batch after it (read off its /metrics) is recorded as the test's
``recovery_s`` property (``-rP`` or ``--junitxml`` shows it). What an acknowledgement promises on
this server (a quorum of 2) is in ``test_real_cluster_facts.py``.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request

import psutil
import psycopg2
import pytest

from pgsource_testkit.postgres import free_port
from tests.cdc.common import confirmed_lsn
from tests.real.conftest import topics_for
from tests.real.reader import read_topic
from tests.support import execute, start_service, stop_service, stored_offset, wait_for, write_config

pytestmark = pytest.mark.timeout(600)

PAUSE = 30.0  # seconds a node stays SIGSTOPped (the scenario)
# Above the SDK's walk to the partition's new primary after a view change (about 5 s per node it
# tries: a raw SendMessages to a node that is not the primary is answered "not accepted" and
# replayed), so a send is not abandoned half way; below the pause, so a frozen node is given up.
SEND_TIMEOUT = "15s"
SENT = re.compile(r'^pgsource_sink_messages_sent_total\{table="t"\} (\S+)$', re.M)


class Writer(threading.Thread):
    """One session inserting ``per_txn`` rows every ``interval`` seconds, ids 1, 2, ...; until stopped."""

    def __init__(self, dsn: str, per_txn: int = 20, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.dsn, self.per_txn, self.interval = dsn, per_txn, interval
        self.written = 0
        self.halt = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                while not self.halt.wait(self.interval):  # the write rate of the scenario
                    cur.execute("INSERT INTO t SELECT g, 'r' || g FROM generate_series(%s, %s) g",
                                (self.written + 1, self.written + self.per_txn))
                    conn.commit()
                    self.written += self.per_txn
        finally:
            conn.close()


def _sent(metrics_port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as answer:
            found = SENT.search(answer.read().decode())
    except OSError:
        return -1.0
    return float(found.group(1)) if found else 0.0


def _publisher_nodes(service_pid: int, cluster) -> list[int]:
    """The nodes pgsource's publisher holds connections to, one entry per connection."""
    by_port = {node.ports["tcp"]: node.replica_id for node in cluster.nodes}
    found = []
    for child in psutil.Process(service_pid).children(recursive=True):
        try:
            found += [by_port[c.raddr.port] for c in child.net_connections(kind="tcp")
                      if c.raddr and c.status == psutil.CONN_ESTABLISHED and c.raddr.port in by_port]
        except psutil.Error:
            continue
    return found


def _position(mode: str, dsn: str, tmp_path) -> int:
    if mode == "cdc":
        return confirmed_lsn(dsn, "iggy_slot")
    offset = stored_offset(tmp_path, "polling/t")
    return int(offset.position[-1]) if offset is not None and offset.position else 0


def _every_row_once_by_id(iggy, stream: str, rows: int) -> int:
    ids_of_row: dict[int, set[int]] = {}
    stored = read_topic(iggy, stream, "t")
    for message in stored:
        ids_of_row.setdefault(message.body()["data"]["id"], set()).add(message.id)
    assert sorted(ids_of_row) == list(range(1, rows + 1))  # nothing lost
    assert all(len(ids) == 1 for ids in ids_of_row.values())  # a re-sent row keeps its id
    return len(stored) - rows


def _all_arrived(iggy, stream: str, rows: int) -> bool:
    return len({m.body()["data"]["id"] for m in read_topic(iggy, stream, "t")}) >= rows


@pytest.mark.parametrize("mode", ["polling", "cdc"])
@pytest.mark.parametrize("loss", ["kill-primary", "kill-follower", "pause-primary", "pause-follower"])
def test_pgsource_rides_out_a_lost_node(loss, mode, iggy_cluster, real_pg_dsn, real_stream, tmp_path, record_property):
    cluster = iggy_cluster.cluster
    execute(real_pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, payload text)")
    metrics_port = free_port()
    source = {"tables": ["t"], "batch_size": 200}
    source.update({"mode": "cdc", "cdc_transport": "replication"} if mode == "cdc" else {"late_commits": "off"})
    config = write_config(tmp_path, real_pg_dsn, iggy_cluster.address, source=source,
                          iggy=iggy_cluster.iggy_section(real_stream, send_timeout=SEND_TIMEOUT,
                                                         **topics_for(iggy_cluster, real_stream, ["t"])),
                          metrics={"port": metrics_port, "host": "127.0.0.1"})
    service = start_service(config)
    writer = Writer(real_pg_dsn)
    positions: list[int] = []
    try:
        if mode == "cdc":
            wait_for(lambda: confirmed_lsn(real_pg_dsn, "iggy_slot") > 0, 60, message="the slot")
        writer.start()
        wait_for(lambda: _sent(metrics_port) >= 1000, 120, 0.2, message="a first thousand rows acknowledged")
        # the node its sends go to (with one connection to one node); a list, so node 0 counts as found
        primary = wait_for(lambda: list(set(_publisher_nodes(service.pid, cluster))) or None, 30, 0.2,
                           message="the publisher's node")
        assert len(primary) == 1, f"the publisher is connected to nodes {primary}"
        primary = primary[0]
        victim = primary if loss.endswith("primary") else (primary + 1) % len(cluster.nodes)
        lost_at = time.monotonic()
        if loss.startswith("kill"):
            cluster.kill(victim)
        else:
            cluster.freeze(victim)
        before = _sent(metrics_port)  # after the loss: a reply already on its way counts as before it
        recovered_at = None
        while time.monotonic() - lost_at < PAUSE + 30:  # the loss (and the pause) lasts; sample meanwhile
            if recovered_at is None and _sent(metrics_port) > before:
                recovered_at = time.monotonic()
            if loss.startswith("pause") and time.monotonic() - lost_at >= PAUSE:
                cluster.thaw(victim)
            positions.append(_position(mode, real_pg_dsn, tmp_path))
            assert service.poll() is None, "pgsource exited while a node was lost"
            if recovered_at is not None and time.monotonic() - lost_at >= (PAUSE if loss.startswith("pause") else 10):
                break
            time.sleep(0.05)  # the sampling pace of the scenario
        cluster.thaw(victim)
        writer.halt.set()
        writer.join()
        record_property("recovery_s", None if recovered_at is None else round(recovered_at - lost_at, 2))
        record_property("victim", f"node {victim} ({'primary' if victim == primary else 'follower'})")
        if recovered_at is None and (behind := cluster.fallen_behind()):
            pytest.xfail(f"server 0.9.0-edge.5: a node fell behind before the loss ({behind}); with it behind, "
                         "losing another node leaves no quorum (tests/real/README.md, 'What the cluster cannot do')")
        assert recovered_at is not None, f"no batch acknowledged within {PAUSE + 30:.0f}s of the loss"
        wait_for(lambda: _all_arrived(iggy_cluster, real_stream, writer.written), 180, 1, message="every row written")
        positions.append(_position(mode, real_pg_dsn, tmp_path))
    finally:
        writer.halt.set()
        assert stop_service(service) == 0
    assert positions == sorted(positions)  # never backward
    duplicates = _every_row_once_by_id(iggy_cluster, real_stream, writer.written)
    assert duplicates <= 9 * 200  # at most the batches in flight at the loss, re-sent


def test_one_address_lost_pgsource_waits_and_resumes_when_the_node_is_back(iggy_cluster, real_pg_dsn, real_stream, tmp_path):
    """``iggy.address`` names one node, and that node is killed: the SDK cannot be told another
    one, so pgsource waits (alive, /readyz 503, "Cannot establish connection" retried) as for any
    Iggy outage, and goes on by itself once the node is back. A seed list avoids the wait."""
    cluster = iggy_cluster.cluster
    execute(real_pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, payload text)")
    metrics_port = free_port()
    config = write_config(tmp_path, real_pg_dsn, cluster.addresses[0],
                          source={"tables": ["t"], "batch_size": 200, "late_commits": "off"},
                          iggy=iggy_cluster.iggy_section(real_stream, address=cluster.addresses[0], send_timeout=SEND_TIMEOUT,
                                                         **topics_for(iggy_cluster, real_stream, ["t"])),
                          metrics={"port": metrics_port, "host": "127.0.0.1"})
    service = start_service(config)
    writer = Writer(real_pg_dsn)
    try:
        writer.start()
        wait_for(lambda: _sent(metrics_port) >= 1000, 120, 0.2, message="a first thousand rows acknowledged")
        cluster.kill(0)
        before = _sent(metrics_port)
        wait_for(lambda: _ready(metrics_port) == 503, 60, 0.2, message="/readyz saying not ready")
        held_until = time.monotonic() + 15
        while time.monotonic() < held_until:  # the node stays down: nothing acknowledged, nothing exits
            assert service.poll() is None and _sent(metrics_port) == before
            time.sleep(0.5)  # the sampling pace while the node stays down (the scenario)
        cluster.restart(0)
        writer.halt.set()
        writer.join()
        wait_for(lambda: _all_arrived(iggy_cluster, real_stream, writer.written), 180, 1, message="every row written")
    finally:
        writer.halt.set()
        assert stop_service(service) == 0
    _every_row_once_by_id(iggy_cluster, real_stream, writer.written)
    assert "Cannot establish connection" in config.with_suffix(".log").read_text()


def _ready(metrics_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0
