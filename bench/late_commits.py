"""What catching late commits costs, and what not catching them loses: polling under writers that commit out of order.

``python -m bench.late_commits --seconds 20 --writers 8`` starts a private PostgreSQL and the
Iggy stand-in, then for each tracking column (a sequence id, a ``now()``
timestamp) and each ``late_commits`` setting (``auto``, ``off``) runs pgsource polling while
writers insert rows in transactions of which some stay open for a while (they took their id
or their ``now()`` before rows that commit after them). When the writers stop, it waits until
pgsource is idle and counts, from the stand-in: rows committed, rows received, lost, repeated
(the same row under the same id), and how many rows the re-reads sent; and the CPU seconds of
the pgsource process tree. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import psutil
import psycopg2

from pgsource_testkit.iggy import IggyStandIn
from pgsource_testkit.postgres import LocalPostgres
from tests.support import execute, start_service, stop_service, write_config


def _writer(dsn: str, stop: threading.Event, seed: int, committed: list, lock: threading.Lock, hold: float) -> None:
    rng = random.Random(seed)
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    while not stop.is_set():
        cur.execute("INSERT INTO lc_t (payload) SELECT repeat('x', 100) FROM generate_series(1, %s) RETURNING id",
                    (rng.randint(1, 20),))
        ids = [row[0] for row in cur.fetchall()]
        if rng.random() < 0.1:  # one transaction in ten stays open while later ones commit
            time.sleep(rng.uniform(0, hold))
        conn.commit()
        with lock:
            committed.extend(ids)
        time.sleep(rng.uniform(0, 0.01))
    conn.close()


def _tree_cpu(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        return total
    except psutil.NoSuchProcess:
        return 0.0


def run_one(cluster: LocalPostgres, iggy: IggyStandIn, tracking: str, mode: str, args, workdir: Path) -> dict:
    name = cluster.create_database()
    dsn = cluster.dsn(name)
    execute(dsn, "CREATE TABLE lc_t (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), payload text)")
    directory = workdir / f"{tracking}-{mode}"
    directory.mkdir()
    config = write_config(directory, dsn, iggy.address, source={
        "tables": ["lc_t"], "tracking_column": tracking, "batch_size": 500, "poll_interval": "100ms", "late_commits": mode,
    }, iggy={"stream": f"lc-{tracking}-{mode}"})
    service = start_service(config)
    committed: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()
    writers = [threading.Thread(target=_writer, args=(dsn, stop, seed, committed, lock, args.hold)) for seed in range(args.writers)]
    started = time.monotonic()
    for writer in writers:
        writer.start()
    time.sleep(args.seconds)
    stop.set()
    for writer in writers:
        writer.join()
    stream, received, cpu = f"lc-{tracking}-{mode}", [], 0.0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # idle: everything committed has arrived (or, with `off`, nothing more comes)
        before = len(received)
        time.sleep(1.0)
        if stream in iggy.streams() and "lc_t" in iggy.topics(stream):
            received = [json.loads(m.payload)["data"]["id"] for m in iggy.messages(stream, "lc_t")]
        if set(committed) <= set(received) or (len(received) == before and before):
            break
    elapsed = time.monotonic() - started
    cpu = _tree_cpu(service.pid)
    stop_service(service)
    log = config.with_suffix(".log").read_text()
    late = sum(int(line.split(" row(s) committed late")[0].rsplit(" ", 1)[-1])
               for line in log.splitlines() if "committed late behind" in line)
    cluster.drop_database(name)
    return {
        "tracking": tracking, "late_commits": mode, "committed": len(committed), "received": len(set(received)),
        "lost": len(set(committed) - set(received)), "repeated": len(received) - len(set(received)),
        "late_rows_sent": late, "pgsource_cpu_s": round(cpu, 2), "seconds": round(elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="how long the writers write")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--hold", type=float, default=1.0, help="the longest a late transaction stays open (s)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="pgsource-bench-late-") as work:
        cluster = LocalPostgres().start()
        iggy = IggyStandIn().start()  # in this process: its messages are read back directly
        try:
            for tracking in ("id", "at"):
                for mode in ("auto", "off"):
                    results.append(run_one(cluster, iggy, tracking, mode, args, Path(work)))
                    print(json.dumps(results[-1]), flush=True)
        finally:
            iggy.stop()
            cluster.stop()
    header = ("tracking", "late_commits", "committed", "received", "lost", "repeated", "late_rows_sent", "pgsource_cpu_s")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in results:
        print("| " + " | ".join(str(row[key]) for key in header) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
