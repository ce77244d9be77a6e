"""pgsource's benchmark: throughput against the physical limits of the same run, latency, memory.

``python -m bench.run --rows 1000000 --json out.json`` (see bench/README.md). It starts a
private PostgreSQL and the Iggy stand-in (in its own process), builds a realistic table,
then measures each figure ``--repeat`` times (median reported):

- ``COPY t TO STDOUT`` and ``COPY (SELECT row_to_json(t) ...) TO STDOUT`` read and discarded;
- pgsource polling end to end (``python -m workers.cli run``) with 1 worker and with
  ``--workers`` workers (the table split into that many key-range chunks);
- CDC of one transaction of N updates and of 1,000 transactions of N/1000 updates:
  pgsource end to end against a do-nothing streaming consumer and a SQL peek count;
- latency at a steady change rate (commit time → the stand-in's receive time);
- peak RSS of all pgsource processes together and their CPU seconds per million rows.

``--iggy HOST:PORT`` measures the same into a real Iggy server instead of the stand-in
(``--iggy-username``/``--iggy-password``, default iggy/iggy). Its CPU is measured when it
runs on this machine (the process listening on that port). A server that refuses the
create-topic options of apache-iggy 0.9.0 gets each run's topic created beforehand,
without options, and pgsource runs with ``create_missing: false``.

Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from bench.cdc import run_cdc
from bench.database import scalar
from bench.iggy_target import IggyView, Target, local_listener_pid
from bench.latency import run_latency
from bench.limits import run_copy_limits
from bench.polling import run_polling_family
from bench.processes import REPO, profile_into
from bench.report import add_totals, log, report
from bench.table import build_table, create_publication, table_mb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="the many-workers case (default: cores)")
    parser.add_argument("--batch-size", type=int, default=1000, help="source.batch_size (default: the product default)")
    parser.add_argument("--late-commits", default="auto",
                        help="comma-separated source.late_commits settings for polling, interleaved run by run (auto,off: the guard's cost)")
    parser.add_argument("--split", choices=["chunks"], default="chunks",
                        help="how the many-workers case splits the work: key-range chunks of the one table")
    parser.add_argument("--cdc-transport", default="sql", help="comma-separated: sql, replication")
    parser.add_argument("--latency-rate", type=int, default=2000)
    parser.add_argument("--latency-seconds", type=float, default=30)
    parser.add_argument("--latency-txn-rows", type=int, default=10)
    parser.add_argument("--latency-writers", type=int, default=2, help="writer connections sharing the schedule")
    parser.add_argument("--latency-transport", default="replication",
                        help="the CDC transport of the latency figure (default: the product's default, replication)")
    parser.add_argument("--only", default="copy,polling,cdc,latency", help="comma-separated parts to run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    parser.add_argument("--profile", metavar="DIR", help="cProfile every pgsource process (one .prof per process under DIR); skews figures")
    parser.add_argument("--iggy", metavar="HOST:PORT", help="a real Iggy server instead of the stand-in")
    parser.add_argument("--iggy-username", default="iggy")
    parser.add_argument("--iggy-password", default="iggy")
    parser.add_argument("--iggy-pids", help="comma-separated pids whose CPU is the server's (a cluster's nodes; bench/cluster.py)")
    parser.add_argument("--latency-visible", action="store_true",
                        help="latency also until a consumer's poll returns the change (bench/visible.py)")
    args = parser.parse_args(argv)
    if args.profile:
        profile_into(args.profile)
    if args.rows % 1000:
        parser.error("--rows must be a multiple of 1000 (the 1,000-transaction CDC shape)")
    parts = set(args.only.split(","))

    sys.path.insert(0, str(REPO))
    from pgsource_testkit.iggy import IggyStandInProcess
    from pgsource_testkit.postgres import LocalPostgres

    workdir = tempfile.mkdtemp(prefix="pgsource-bench-")
    results: dict = {
        "rows": args.rows, "repeat": args.repeat, "nproc": os.cpu_count(), "batch_size": args.batch_size,
        "split": args.split, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
    }
    postgres = LocalPostgres().start()
    standin = None
    if args.iggy:
        pids = [int(pid) for pid in args.iggy_pids.split(",")] if args.iggy_pids else None
        target = Target(args.iggy, "iggy-server", local_listener_pid(args.iggy), args.iggy_username, args.iggy_password, pids)
    else:
        standin = IggyStandInProcess().start()
        target = Target(standin.address, "stand-in", standin.pid)
    results["iggy"] = {"kind": target.kind, "address": target.address, "pid": target.pid, "pids": target.pids}
    try:
        database = postgres.create_database("bench")
        dsn = postgres.dsn(database)
        results["postgres"] = scalar(dsn, "SHOW server_version")
        log(f"PostgreSQL {results['postgres']} on port {postgres.port}; {target.kind} at {target.address} (pid {target.pid})")
        started = time.perf_counter()
        build_table(dsn, args.rows)
        results["table_mb"] = table_mb(dsn)
        log(f"table of {args.rows} rows built in {time.perf_counter() - started:.1f}s ({results['table_mb']:.0f} MB)")
        view = IggyView(target)
        if target.kind == "iggy-server":
            target.precreate = results["iggy"]["precreate_topics"] = view.refuses_wheel_topic_options()

        if "copy" in parts or "polling" in parts:
            results.update(run_copy_limits(args, dsn))
        if "polling" in parts:
            results["polling"] = run_polling_family(args, dsn, view, workdir)
        if "cdc" in parts or "latency" in parts:
            create_publication(dsn)
        if "cdc" in parts:
            results["cdc"] = run_cdc(args, dsn, view, workdir)
        if "latency" in parts:
            results["latency"] = run_latency(args, dsn, view, workdir)
    finally:
        if standin is not None:
            standin.stop()
        postgres.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work directory kept: {workdir}")

    add_totals(results)
    print(report(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # apache-iggy 0.9.0 may abort the interpreter's teardown (see pgsource/sink/sockets.py)
