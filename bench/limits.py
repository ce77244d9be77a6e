"""The physical limits of the run: ``COPY bench_t TO STDOUT`` as text and as ``row_to_json``, read and discarded."""

from __future__ import annotations

import time

import psycopg2
from psycopg2 import sql

from bench.report import log, summarize
from bench.table import TABLE

COPY_STATEMENTS = {
    "copy_text": sql.SQL("COPY {} TO STDOUT").format(sql.Identifier(TABLE)),
    "copy_json": sql.SQL("COPY (SELECT row_to_json(t) FROM {} t) TO STDOUT").format(sql.Identifier(TABLE)),
}


class _Discard:
    """A file-like sink for ``copy_expert`` that throws everything away (counting bytes)."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)


def measure_copy(dsn: str, statement: sql.Composable) -> float:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            sink = _Discard()
            started = time.perf_counter()
            cur.copy_expert(statement, sink, size=1 << 20)
            return time.perf_counter() - started
    finally:
        conn.close()


def run_copy_limits(args, dsn: str) -> dict:
    """``copy_text`` and ``copy_json``: rows/s of each COPY, median of ``--repeat`` after one warm-up."""
    out: dict = {}
    for name, statement in COPY_STATEMENTS.items():
        measure_copy(dsn, statement)  # warm the cache once
        times = [measure_copy(dsn, statement) for _ in range(args.repeat)]
        out[name] = summarize([{"rows_per_s": args.rows / t, "seconds": t} for t in times])
        log(f"{name}: {out[name]['rows_per_s']:,.0f} rows/s")
    return out
