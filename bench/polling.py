"""pgsource polling end to end: 1 worker, and ``--workers`` workers on key-range chunks of the one table."""

from __future__ import annotations

import os
import time

from bench.iggy_target import IggyView
from bench.processes import pgsource_backends
from bench.report import log, summarize
from bench.service import Service, wait_until
from bench.table import TABLE


def run_polling(args, dsn: str, view: IggyView, workers: int, run: int, workdir: str) -> dict:
    stream = f"poll_w{workers}_r{run}"
    table = {"name": TABLE, "chunks": workers} if workers > 1 and args.split == "chunks" else TABLE
    source = {
        "connection_string": dsn,
        "mode": "polling",
        "tables": [table],
        "poll_interval": "100ms",
        "batch_size": args.batch_size,
    }
    service = Service(os.path.join(workdir, stream), source, view, stream, workers=workers)
    rows = args.rows
    iggy_cpu = view.target.cpu_seconds()
    started = time.perf_counter()
    service.start()
    service.sampler.backend_finder = lambda: pgsource_backends(dsn)
    try:
        first = wait_until(lambda: view.count(stream, TABLE) > 0, service, 120, "the first message")
        done = wait_until(
            lambda: view.count(stream, TABLE) >= rows and service.committed_rows() >= rows,
            service, 600, f"{rows} messages acknowledged and committed",
        )
        service.sampler.sample()
        service.sampler.classify()
    finally:
        service.stop()
    by_role = {role: seconds / rows * 1e6 for role, seconds in service.sampler.cpu_by_role().items()}
    figures = service.figures(view, stream, rows, started, done, iggy_cpu)
    seconds = figures.pop("seconds")  # the JSON keeps startup_seconds second
    return {"seconds": seconds, "startup_seconds": first - started, **figures, "cpu_s_per_m_rows_by_process": by_role}


def run_polling_family(args, dsn: str, view: IggyView, workdir: str) -> dict:
    """``workers_1`` and ``workers_<N>``: the median of ``--repeat`` runs each."""
    out: dict = {}
    for workers in sorted({1, args.workers}):
        runs = []
        for run in range(args.repeat):
            runs.append(run_polling(args, dsn, view, workers, run, workdir))
            figures = runs[-1]
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(figures["cpu_s_per_m_rows_by_process"].items()))
            log(f"polling workers={workers}: {figures['rows_per_s']:,.0f} rows/s"
                f" (startup {figures['startup_seconds']:.1f}s), peak RSS {figures['peak_rss_mb']:.0f} MB;"
                f" CPU s/M rows: {cpu}, {view.target.kind} {figures['iggy_cpu_s_per_m_rows']:.2f}")
            if figures["delivered"] != args.rows:
                log(f"WARNING: {figures['delivered']} messages delivered for {args.rows} rows")
        out[f"workers_{workers}"] = summarize(runs)
    return out
