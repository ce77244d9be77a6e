"""pgsource polling end to end: 1 worker, and ``--workers`` workers on key-range chunks of the one table."""

from __future__ import annotations

import os
import time

from bench.iggy_target import IggyView
from bench.processes import pgsource_backends
from bench.report import log, summarize
from bench.service import Service, wait_until
from bench.table import TABLE


def run_polling(args, dsn: str, view: IggyView, workers: int, run: int, workdir: str, late_commits: str = "auto") -> dict:
    stream = f"poll_w{workers}_r{run}" + ("" if late_commits == "auto" else f"_late_{late_commits}")
    table = {"name": TABLE, "chunks": workers} if workers > 1 and args.split == "chunks" else TABLE
    source = {
        "connection_string": dsn,
        "mode": "polling",
        "tables": [table],
        "poll_interval": "100ms",
        "batch_size": args.batch_size,
        "late_commits": late_commits,
    }
    service = Service(os.path.join(workdir, stream), source, view, stream, workers=workers)
    rows = args.rows
    iggy_cpu = view.target.cpu_seconds()
    started = time.perf_counter()
    service.start()
    service.sampler.backend_finder = lambda: pgsource_backends(dsn)
    try:
        first = wait_until(lambda: view.count(stream, TABLE) > 0, service, 120, "the first message")
        at_first = steady_mark(service, view, stream)
        done = wait_until(
            lambda: view.count(stream, TABLE) >= rows and service.committed_rows() >= rows,
            service, 600, f"{rows} messages acknowledged and committed",
        )
        service.sampler.sample()
        service.sampler.classify()
    finally:
        service.stop()
    by_role = {role: seconds / rows * 1e6 for role, seconds in service.sampler.cpu_by_role().items()}
    steady = steady_figures(service, view, at_first, rows, done)
    figures = service.figures(view, stream, rows, started, done, iggy_cpu)
    seconds = figures.pop("seconds")  # the JSON keeps startup_seconds second
    return {"seconds": seconds, "startup_seconds": first - started, **figures, "cpu_s_per_m_rows_by_process": by_role,
            **steady}


def steady_mark(service: Service, view: IggyView, stream: str, topic: str = TABLE) -> tuple:
    """CPU by process, messages in Iggy and the time, once the first message arrived (start-up is over)."""
    service.sampler.sample()
    service.sampler.classify()
    return service.sampler.cpu_by_role(), view.count(stream, topic), view.target.cpu_seconds(), time.perf_counter()


def steady_figures(service: Service, view: IggyView, mark: tuple, rows: int, done: float) -> dict:
    """From the first message to the end, start-up left out: CPU µs per row by process (what the scale
    model multiplies, bench/RESULTS.md) and rows/s."""
    by_role, count, iggy, when = mark
    left = max(1, rows - count)
    now = service.sampler.cpu_by_role()
    per_row = {role: (seconds - by_role.get(role, 0.0)) / left * 1e6 for role, seconds in now.items()}
    per_row["iggy"] = (view.target.cpu_seconds() - iggy) / left * 1e6
    return {"steady_rows_per_s": left / max(1e-9, done - when), "steady_cpu_us_per_row_by_process": per_row}


def run_polling_family(args, dsn: str, view: IggyView, workdir: str) -> dict:
    """``workers_1`` and ``workers_<N>`` (the product default, ``late_commits: auto``), and with
    ``--late-commits auto,off`` also ``workers_<N>_late_off``: the median of ``--repeat`` runs each,
    the settings interleaved run by run, so that the guard's cost is read from one sitting."""
    out: dict = {}
    settings = [s.strip() for s in args.late_commits.split(",") if s.strip()]
    for workers in sorted({1, args.workers}):
        by_setting: dict[str, list] = {setting: [] for setting in settings}
        for run in range(args.repeat):
            for setting in settings:
                runs = by_setting[setting]
                runs.append(run_polling(args, dsn, view, workers, run, workdir, setting))
                _log_run(args, view, workers, setting, runs[-1])
        for setting, runs in by_setting.items():
            out[f"workers_{workers}" + ("" if setting == "auto" else f"_late_{setting}")] = summarize(runs)
    return out


def _log_run(args, view: IggyView, workers: int, setting: str, figures: dict) -> None:
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(figures["cpu_s_per_m_rows_by_process"].items()))
    steady = ", ".join(f"{k} {v:.2f}" for k, v in sorted(figures["steady_cpu_us_per_row_by_process"].items()))
    log(f"polling workers={workers} late_commits={setting}: {figures['rows_per_s']:,.0f} rows/s"
        f" (startup {figures['startup_seconds']:.1f}s), peak RSS {figures['peak_rss_mb']:.0f} MB;"
        f" CPU s/M rows: {cpu}, {view.target.kind} {figures['iggy_cpu_s_per_m_rows']:.2f};"
        f" after the first message {figures['steady_rows_per_s']:,.0f} rows/s, CPU µs/row: {steady}")
    if figures["delivered"] != args.rows:
        log(f"WARNING: {figures['delivered']} messages delivered for {args.rows} rows")
