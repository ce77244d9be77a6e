"""Micro-benchmark of polling's read path: COPY + the C decoder against today's rows (issue 22, item 1).

One process, one private PostgreSQL, ``bench_t`` (``bench/table.py``) of ``--rows`` rows read
from start to end in keyset batches of ``--batch-size`` as polling reads it, no Iggy. Per
figure, CPU µs per row of this process (``time.process_time``: the worker's side) and of the
PostgreSQL backend serving it (``/proc/<pid>/stat`` utime + stime), and the wall rate:

| figure | what runs |
|---|---|
| ``copy_table_text`` / ``copy_table_binary`` | ``COPY bench_t TO STDOUT`` (text / binary) into a null sink: the limit |
| ``copy_batches_text`` / ``copy_batches_binary`` | the COPY path's batch statements (``pg/copy_query.py``) into a null sink |
| ``copy_batches_nocheck`` | the same (text) without the column-definition check each batch statement carries |
| ``copy_c`` | ``CopyReader.read_batch`` with the C decoder: COPY, ids, partitions, envelopes, JSON, frames |
| ``copy_c_x10`` | the same, ten batches per COPY statement (``CopyReader.read_batches``) |
| ``copy_python`` | the same with the pure-Python twin (on ``--python-rows`` rows only) |
| ``rows`` | the row path: ``PollingReader.read_batch`` (``row_to_json``) + ``RowEncoder.encode_batch`` + ``encode_partition_frames`` |
| ``*_late`` | the same with ``late_commits: auto`` (every read also returns its snapshot) |

The null sink is ``open(os.devnull, "wb")``: psycopg2 calls its (C) ``write`` once per row, as it
calls the decoder's. The process keeps freed heap as the workers do (``workers/tuning.py``). The machine is shared: each figure carries the 1-minute load average
before it, the figures are interleaved across ``--repeat`` rounds, and the table shows the
median and the minimum of the rounds (CPU time moves less with load than wall time does).

Run: ``python -m bench.copy_read --rows 1000000 --repeat 3 --json bench/results-copy-read.json``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from psycopg2 import sql

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (the fields after the command's closing parenthesis)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(backend: int, run: Callable[[], int]) -> dict:
    """Run ``run`` (it returns the rows it read); CPU of this process and of the backend, wall time."""
    load = _load()
    backend_before, worker_before, wall_before = _cpu_seconds(backend), time.process_time(), time.perf_counter()
    rows = run()
    wall = time.perf_counter() - wall_before
    worker = time.process_time() - worker_before
    server = _cpu_seconds(backend) - backend_before
    return {"rows": rows, "wall_s": wall, "rows_per_s": rows / wall, "worker_us": worker / rows * 1e6,
            "backend_us": server / rows * 1e6, "total_us": (worker + server) / rows * 1e6, "load_1m": load}


class Bench:
    """The readers of ``bench_t`` on one connection (``late``: ``late_commits: auto``)."""

    def __init__(self, dsn: str, batch_size: int, late: bool) -> None:
        from pgsource.config.model import Config
        from pgsource.pg import connect as pg
        from pgsource.polling.reader import open_reader

        config = Config.model_validate({
            "source": {"connection_string": dsn, "mode": "polling", "tables": ["bench_t"], "batch_size": batch_size,
                       "late_commits": "auto" if late else "off"},
            "iggy": {"address": "127.0.0.1:1"},
        })
        self.conn = pg.connect(dsn)
        self.reader = open_reader(self.conn, config, config.source.tables[0])
        self.batch_size = batch_size

    def backend(self) -> int:
        from pgsource.pg.statements import backend_pid

        return backend_pid(self.conn)

    def copy_path(self, native: bool, limit: int | None = None, batches: int = 1) -> int:
        """``batches``: batches read by one COPY (``CopyReader.read_batches``)."""
        from pgsource.rows.copy_reader import CopyReader

        copy = CopyReader(self.reader, native=native)
        offset, rows = None, 0
        while limit is None or rows < limit:
            if batches == 1:
                reads = [copy.read_batch(offset, self.batch_size, read_rows=rows)]
            else:
                reads, error = copy.read_batches(offset, self.batch_size, batches, read_rows=rows)
                assert error is None
            for read in reads:
                assert read.messages == read.rows and sum(part.count for part in read.parts) == read.rows
                offset, rows = (read.after, rows + read.rows) if read.rows else (offset, rows)
            if reads[-1].rows < self.batch_size:
                break
        return rows

    def row_path(self) -> int:
        from pgsource.encode.frames import encode_partition_frames

        reader = self.reader
        offset, rows = None, 0
        while True:
            read = reader.read_batch(offset, self.batch_size)
            if not read.rows:
                return rows
            encoded = reader.encoder.encode_batch(read.rows, rows)
            messages = encoded.messages
            encode_partition_frames(messages.ids, messages.partitions, messages.payloads, where="bench_t")
            offset, rows = read.after, rows + len(read.rows)

    def copy_batches(self, binary: bool, total: int, check: bool = True) -> int:
        """The COPY path's batch statements into a null sink, offsets computed (ids are 1..N); ``check``:
        with the column-definition condition (``copy_query._same_definition``) the COPY path adds."""
        from pgsource.pg.copy_query import _same_definition, build_copy_layout
        from pgsource.pg.select import build_batch_query
        from pgsource.pg.statements import copy_to, render
        from pgsource.pg.types import load_column_types
        from pgsource.state import PollingOffset

        reader = self.reader
        layout = build_copy_layout(reader.plan, reader.column_types,
                                   load_column_types(self.conn, set(reader.column_types.values())))
        oid, definition = reader._definition
        statements = {}
        with open(os.devnull, "wb") as sink:
            for start in range(0, total, self.batch_size):
                reading, params = reader.batch_reading(PollingOffset((str(start),), 0, None) if start else None,
                                                       self.batch_size)
                statement = statements.get(reading)
                if statement is None:
                    select = build_batch_query(reader.plan, reading, sql.SQL(", ").join(layout.select),
                                               _same_definition() if check else None)
                    options = sql.SQL(" (FORMAT binary)") if binary else sql.SQL("")
                    statement = statements[reading] = render(sql.SQL("COPY ({}) TO STDOUT{}").format(select, options),
                                                             self.conn)  # as CopyReader keeps it: rendered once
                copy_to(self.conn, statement, {**params, "relation": oid, "definition": definition}, sink)
        return total

    def copy_table(self, binary: bool, total: int) -> int:
        from pgsource.pg.statements import copy_to

        options = sql.SQL(" (FORMAT binary)") if binary else sql.SQL("")
        with open(os.devnull, "wb") as sink:
            copy_to(self.conn, sql.SQL("COPY bench_t TO STDOUT{}").format(options), None, sink)
        return total


def figures(bench: Bench, late: Bench, rows: int, python_rows: int) -> dict[str, Callable[[], int]]:
    return {
        "copy_table_text": lambda: bench.copy_table(False, rows),
        "copy_table_binary": lambda: bench.copy_table(True, rows),
        "copy_batches_text": lambda: bench.copy_batches(False, rows),
        "copy_batches_binary": lambda: bench.copy_batches(True, rows),
        "copy_batches_nocheck": lambda: bench.copy_batches(False, rows, check=False),
        "copy_c": lambda: bench.copy_path(True),
        "copy_c_x10": lambda: bench.copy_path(True, batches=10),
        "rows": bench.row_path,
        "copy_c_late": lambda: late.copy_path(True),
        "rows_late": late.row_path,
        "copy_python": lambda: bench.copy_path(False, python_rows),
    }


def report(results: dict) -> None:
    print(f"{'figure':<22}{'worker µs/row':>16}{'backend µs/row':>16}{'total µs/row':>15}{'rows/s':>12}  load",
          file=sys.stderr)
    def both(runs: list[dict], key: str) -> str:
        values = [run[key] for run in runs]
        return f"{statistics.median(values):.2f} ({min(values):.2f})"

    for name, runs in results["figures"].items():
        rate = statistics.median(run["rows_per_s"] for run in runs)
        loads = ",".join(f"{run['load_1m']:.1f}" for run in runs)
        print(f"{name:<22}{both(runs, 'worker_us'):>16}{both(runs, 'backend_us'):>16}{both(runs, 'total_us'):>15}{rate:>12,.0f}  {loads}",
              file=sys.stderr)
    print("(median over rounds, minimum in parentheses)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python-rows", type=int, default=100_000, help="rows the pure-Python twin reads (0: skip)")
    parser.add_argument("--only", default="", help="comma-separated figure names (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from bench.table import build_table, table_mb
    from pgsource_testkit.postgres import LocalPostgres
    from workers.tuning import keep_freed_memory

    keep_freed_memory()  # as every worker process does (workers/tuning.py): a batch's buffers are reused

    results: dict = {"command": " ".join(["python -m bench.copy_read", *(argv if argv is not None else sys.argv[1:])]),
                     "rows": args.rows, "batch_size": args.batch_size, "nproc": os.cpu_count(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "figures": {}}
    postgres = LocalPostgres().start()
    try:
        dsn = postgres.dsn(postgres.create_database("bench"))
        build_table(dsn, args.rows)
        results["table_mb"] = table_mb(dsn)
        bench, late = Bench(dsn, args.batch_size, False), Bench(dsn, args.batch_size, True)
        chosen = figures(bench, late, args.rows, args.python_rows)
        wanted = [name for name in chosen if not args.only or name in args.only.split(",")]
        if not args.python_rows and "copy_python" in wanted:
            wanted.remove("copy_python")
        bench.copy_table(False, args.rows)  # warm the caches once
        for round_ in range(args.repeat):
            for name in wanted:
                owner = late if name.endswith("_late") else bench
                run = measure(owner.backend(), chosen[name])
                results["figures"].setdefault(name, []).append(run)
                print(f"round {round_ + 1} {name}: {run['total_us']:.2f} µs/row ({run['worker_us']:.2f} + "
                      f"{run['backend_us']:.2f}), {run['rows_per_s']:,.0f} rows/s, load {run['load_1m']:.1f}",
                      file=sys.stderr)
        report(results)
    finally:
        postgres.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
