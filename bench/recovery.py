"""Time to recover: pgsource streaming into a 3-node cluster, a node killed, until its next acknowledged batch.

``python -m bench.recovery --server /path/to/iggy-server --repeat 3 --json out.json``: for each
``--mode`` (polling, cdc) and ``--loss`` (``kill-primary``: kill -9 of the node pgsource's publisher
sends through, the partition's primary; ``kill-follower``: kill -9 of the primary's successor in
the replication chain), a fresh cluster (``tests/real/cluster.py``), a fresh database, pgsource
with ``iggy.address`` = every node (the seed list) and a writer committing ``--rate`` rows/s. The
figure is the time from the kill to the first increase of ``pgsource_sink_messages_sent_total``
(pgsource's /metrics, sampled every 20 ms), and the rows/s acknowledged in the 10 s after it.
The median over ``--repeat`` runs is printed; every run is in the JSON. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil
import psycopg2
import yaml

from bench.processes import REPO
from bench.report import log

SENT = re.compile(r'^pgsource_sink_messages_sent_total\{table="t"\} (\S+)$', re.M)
CREATE = "CREATE TABLE t (id int PRIMARY KEY, payload text)"
INSERT = "INSERT INTO t SELECT g, repeat('p', 100) FROM generate_series(%s, %s) g"


class Writer(threading.Thread):
    """One session committing ``per_txn`` rows ``rate / per_txn`` times a second until stopped."""

    def __init__(self, dsn: str, rate: int, per_txn: int = 20) -> None:
        super().__init__(daemon=True)
        self.dsn, self.per_txn, self.interval = dsn, per_txn, per_txn / rate
        self.written = 0
        self.halt = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                while not self.halt.wait(self.interval):
                    cur.execute(INSERT, (self.written + 1, self.written + self.per_txn))
                    conn.commit()
                    self.written += self.per_txn
        finally:
            conn.close()


def sent(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            found = SENT.search(answer.read().decode())
    except OSError:
        return -1.0
    return float(found.group(1)) if found else 0.0


def publisher_node(service_pid: int, cluster) -> int | None:
    by_port = {node.ports["tcp"]: node.replica_id for node in cluster.nodes}
    nodes = set()
    for child in psutil.Process(service_pid).children(recursive=True):
        try:
            nodes |= {by_port[c.raddr.port] for c in child.net_connections(kind="tcp")
                      if c.raddr and c.status == psutil.CONN_ESTABLISHED and c.raddr.port in by_port}
        except psutil.Error:
            continue
    return nodes.pop() if len(nodes) == 1 else None


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value is not None and value is not False:
            return value
        time.sleep(0.05)  # the pace of this condition loop
    raise RuntimeError(f"{what}: not within {timeout:.0f}s")


def one_run(args, postgres, mode: str, loss: str, workdir: str) -> dict:
    from pgsource_testkit.postgres import free_port
    from tests.real import reader
    from tests.real.cluster import IggyCluster

    database = postgres.create_database()
    dsn = postgres.dsn(database)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(CREATE)
    cluster = IggyCluster(args.server, 3, data_dir=os.path.join(workdir, "cluster")).start()
    port = free_port()
    view = type("View", (), {"username": "iggy", "password": "iggy", "address": cluster.addresses[0],
                             "addresses": cluster.addresses})()
    reader.create_topics(view, "bench", ["t"], 1)  # this server refuses the wheel's create-topic options
    source = {"connection_string": dsn, "mode": mode, "tables": ["t"], "batch_size": args.batch_size}
    source.update({"cdc_transport": "replication"} if mode == "cdc" else {"late_commits": "off", "poll_interval": "100ms"})
    config = {"source": source,
              "iggy": {"address": cluster.addresses, "stream": "bench", "topic": "{table}", "create_missing": False,
                       "send_timeout": "15s"},
              "state": {"dir": os.path.join(workdir, "state")}, "metrics": {"port": port, "host": "127.0.0.1"}}
    path = os.path.join(workdir, "pgsource.yaml")
    with open(path, "w") as out:
        yaml.safe_dump(config, out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PGSOURCE_LOG_LEVEL": "INFO"}
    with open(os.path.join(workdir, "pgsource.log"), "ab") as log_file:
        service = subprocess.Popen([sys.executable, "-m", "workers.cli", "run", "--config", path], cwd=str(REPO),
                                   env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    writer = Writer(dsn, args.rate)
    try:
        writer.start()
        wait(lambda: sent(port) >= 2 * args.rate, 120, "the first rows acknowledged")
        primary = wait(lambda: publisher_node(service.pid, cluster), 30, "the publisher's node")
        victim = primary if loss == "kill-primary" else (primary + 1) % 3
        killed = time.monotonic()
        cluster.kill(victim)
        before = sent(port)
        recovered = None
        while time.monotonic() - killed < 90 and recovered is None:
            if sent(port) > before:
                recovered = time.monotonic() - killed
            time.sleep(0.02)  # the sampling pace
        after_recovery = sent(port)
        time.sleep(10)  # the window the rate after recovery is measured over
        rate_after = (sent(port) - after_recovery) / 10
        return {"mode": mode, "loss": loss, "victim": victim, "primary": primary, "recovery_s": recovered,
                "rows_per_s_after": rate_after, "load": os.getloadavg()}
    finally:
        writer.halt.set()
        service.terminate()
        try:
            service.wait(30)
        except subprocess.TimeoutExpired:
            service.kill()
        cluster.close()
        shutil.rmtree(os.path.join(workdir, "state"), ignore_errors=True)
        shutil.rmtree(os.path.join(workdir, "cluster"), ignore_errors=True)
        postgres.drop_database(database)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--mode", default="polling,cdc")
    parser.add_argument("--loss", default="kill-primary,kill-follower")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=int, default=2000, help="rows committed per second meanwhile")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from pgsource_testkit.postgres import LocalPostgres

    postgres = LocalPostgres().start()
    workdir = tempfile.mkdtemp(prefix="pgsource-bench-recovery-")
    runs = []
    try:
        for mode in args.mode.split(","):
            for loss in args.loss.split(","):
                for _ in range(args.repeat):
                    run = one_run(args, postgres, mode, loss, workdir)
                    log(f"{mode} {loss}: recovered in {run['recovery_s']}s, {run['rows_per_s_after']:,.0f} rows/s after"
                        f" (load {run['load'][0]:.1f})")
                    runs.append(run)
    finally:
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for mode in args.mode.split(","):
        for loss in args.loss.split(","):
            mine = [r for r in runs if r["mode"] == mode and r["loss"] == loss]
            times = [r["recovery_s"] for r in mine if r["recovery_s"] is not None]
            print(f"{mode:8} {loss:14} recovery median {statistics.median(times) if times else float('nan'):.2f}s"
                  f" (runs: {', '.join(f'{t:.2f}' for t in times)}; {len(mine) - len(times)} never),"
                  f" rows/s after median {statistics.median(r['rows_per_s_after'] for r in mine):,.0f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"command": " ".join(["python -m bench.recovery", *(argv or sys.argv[1:])]), "runs": runs}, out, indent=2)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
