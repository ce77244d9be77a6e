"""CDC of one transaction of N updates and of 1,000 transactions: the raw streaming and SQL peek drains, and pgsource end to end."""

from __future__ import annotations

import os
import time

import psycopg2

from bench.database import create_slots, drop_slots, scalar
from bench.iggy_target import IggyView
from bench.report import log, summarize
from bench.service import Service, wait_until
from bench.table import PUBLICATION, TABLE, UPDATE_RANGE

PEEK_COUNT = (
    "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
    " 'proto_version', '1', 'publication_names', %s)"
)
SHAPES = (1, 1000)  # transactions the N updates are made in


def shape_name(transactions: int) -> str:
    return "one_txn" if transactions == 1 else f"{transactions}_txns"


def cdc_source(dsn: str, slot: str, transport: str, batch_size: int) -> dict:
    """pgsource's ``source`` section for CDC of ``bench_t`` from ``slot``."""
    return {
        "connection_string": dsn,
        "mode": "cdc",
        "tables": [TABLE],
        "publication_name": PUBLICATION,
        "replication_slot": slot,
        "cdc_transport": transport,
        "batch_size": batch_size,
    }


def cdc_workload(dsn: str, rows: int, transactions: int) -> None:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            per = rows // transactions
            for index in range(transactions):
                cur.execute(UPDATE_RANGE, (index * per, (index + 1) * per))
                conn.commit()
    finally:
        conn.close()


def drain_streaming(dsn: str, slot: str, expected: int, options: str | None = None) -> float:
    """A do-nothing pgoutput consumer; ``options``: session settings (pgsource's, for the 2nd reference)."""
    from psycopg2.extras import LogicalReplicationConnection, StopReplication

    started = time.perf_counter()
    extra = {"options": options} if options else {}
    conn = psycopg2.connect(dsn, connection_factory=LogicalReplicationConnection, **extra)
    cur = conn.cursor()
    cur.start_replication(slot_name=slot, decode=False, options={"proto_version": "1", "publication_names": PUBLICATION})
    seen = 0

    def consume(message) -> None:
        nonlocal seen
        if message.payload[0] in (73, 85, 68):  # I U D
            seen += 1
            if seen >= expected:
                raise StopReplication

    try:
        cur.consume_stream(consume)
    except StopReplication:
        pass
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def drain_peek(dsn: str, slot: str) -> float:
    started = time.perf_counter()
    scalar(dsn, PEEK_COUNT, (slot, PUBLICATION))
    return time.perf_counter() - started


def run_cdc_pgsource(args, dsn, view: IggyView, slot, expected, workdir, transport) -> dict:
    """pgsource end to end, with CPU µs per change by process from the first message on: the
    ``postgres_backends`` there are the walsender (and, small, the worker's SQL session), so
    ``walsender_busy`` = rate × their CPU per change says how close the run came to the walsender's
    own ceiling (issue 22: the walsender should be the bottleneck, busy ≥ 90 % of the drain)."""
    from bench.polling import steady_figures, steady_mark
    from bench.processes import pgsource_backends

    stream = f"cdc_{slot}"
    source = cdc_source(dsn, slot, transport, args.batch_size)
    service = Service(os.path.join(workdir, stream), source, view, stream)
    iggy_cpu = view.target.cpu_seconds()
    started = time.perf_counter()
    service.start()
    service.sampler.backend_finder = lambda: pgsource_backends(dsn)
    try:
        wait_until(lambda: view.count(stream, TABLE) > 0, service, 120, "the first change")
        at_first = steady_mark(service, view, stream)
        done = wait_until(lambda: view.count(stream, TABLE) >= expected, service, 900, f"{expected} changes")
        service.sampler.sample()
        service.sampler.classify()
    finally:
        service.stop()
    steady = steady_figures(service, view, at_first, expected, done)
    figures = service.figures(view, stream, expected, started, done, iggy_cpu)
    per_change = steady["steady_cpu_us_per_row_by_process"]
    steady["walsender_busy"] = steady["steady_rows_per_s"] * per_change.get("postgres_backends", 0.0) / 1e6
    steady["pgsource_us_per_change"] = per_change.get("worker", 0.0) + per_change.get("publisher", 0.0)
    return {**figures, **steady}


def _rates(rows: int, times: list[float]) -> dict:
    return summarize([{"rows_per_s": rows / t, "seconds": t} for t in times])


def run_cdc_shape(args, dsn, view: IggyView, transactions: int, workdir: str) -> dict:
    rows = args.rows
    shape = shape_name(transactions)
    transports = args.cdc_transport.split(",")
    pgs = {t: [f"b_{shape}_{t}_{r}" for r in range(args.repeat)] for t in transports}
    streaming = [f"b_{shape}_stream_{r}" for r in range(args.repeat)]
    streaming_same = [f"b_{shape}_streamopt_{r}" for r in range(args.repeat)]
    peek = f"b_{shape}_peek"
    every = [s for names in pgs.values() for s in names] + streaming + streaming_same + [peek]
    create_slots(dsn, every)
    log(f"cdc {shape}: workload ({rows} updates in {transactions} transaction(s))")
    started = time.perf_counter()
    cdc_workload(dsn, rows, transactions)
    workload_seconds = time.perf_counter() - started
    out: dict = {"workload_seconds": workload_seconds, "changes": rows, "transactions": transactions}
    try:
        peek_times = []
        for _ in range(args.repeat):
            peek_times.append(drain_peek(dsn, peek))
            log(f"cdc {shape}: SQL peek drain {rows / peek_times[-1]:,.0f} changes/s")
        stream_times = []
        for slot in streaming:
            stream_times.append(drain_streaming(dsn, slot, rows))
            log(f"cdc {shape}: streaming drain {rows / stream_times[-1]:,.0f} changes/s")
        # The same consumer with pgsource's session settings (TimeZone=UTC, DateStyle=ISO...):
        # they change what the walsender spends formatting values, so this is the fair twin.
        from pgsource.pg.connect import SESSION_OPTIONS

        same_times = []
        for slot in streaming_same:
            same_times.append(drain_streaming(dsn, slot, rows, SESSION_OPTIONS))
            log(f"cdc {shape}: streaming drain, pgsource's session settings {rows / same_times[-1]:,.0f} changes/s")
        out["peek_drain"] = _rates(rows, peek_times)
        out["streaming_drain"] = _rates(rows, stream_times)
        out["streaming_drain_same_settings"] = _rates(rows, same_times)
        for transport, slots in pgs.items():
            runs = []
            for slot in slots:
                runs.append(run_cdc_pgsource(args, dsn, view, slot, rows, workdir, transport))
                steady = ", ".join(f"{k} {v:.2f}" for k, v in sorted(runs[-1]["steady_cpu_us_per_row_by_process"].items()))
                log(f"cdc {shape}: pgsource ({transport}) {runs[-1]['rows_per_s']:,.0f} changes/s,"
                    f" peak RSS {runs[-1]['peak_rss_mb']:.0f} MB; after the first change"
                    f" {runs[-1]['steady_rows_per_s']:,.0f} changes/s, CPU µs/change: {steady};"
                    f" worker+publisher {runs[-1]['pgsource_us_per_change']:.2f}, walsender busy {runs[-1]['walsender_busy']:.2f}")
            out[f"pgsource_{transport}"] = summarize(runs)
    finally:
        drop_slots(dsn, every)
    return out


def run_cdc(args, dsn: str, view: IggyView, workdir: str) -> dict:
    """``one_txn`` and ``1000_txns``, each against its own slots (the publication exists already)."""
    return {shape_name(t): run_cdc_shape(args, dsn, view, t, workdir) for t in SHAPES}
