"""Latency at a steady change rate: a transaction's commit time against the Iggy receive time of its changes."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime

import psycopg2

from bench.cdc import cdc_source
from bench.database import create_slots, drop_slots
from bench.iggy_target import IggyView
from bench.report import log, percentile
from bench.service import Service, wait_until
from bench.table import TABLE, UPDATE_FIRST, UPDATE_RANGE

SLOT = "b_latency"
STREAM = "latency"


def run_latency(args, dsn, view: IggyView, workdir: str) -> dict:
    slot = SLOT
    stream = STREAM
    create_slots(dsn, [slot])
    transport = args.latency_transport
    source = cdc_source(dsn, slot, transport, args.batch_size)
    service = Service(os.path.join(workdir, stream), source, view, stream)
    service.start()
    tail = None
    if getattr(args, "latency_visible", False):
        from bench.visible import Tail

        tail = Tail(view.target, stream, TABLE)
        tail.start()
    per_txn = args.latency_txn_rows
    interval = per_txn / args.latency_rate
    transactions = int(args.latency_seconds / interval)
    writers = max(1, args.latency_writers)
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = on")
            cur.execute(UPDATE_FIRST)
            conn.commit()
            wait_until(lambda: view.count(stream, TABLE) >= 1, service, 60, "the probe change")
        log(f"latency: {args.latency_rate} changes/s for {args.latency_seconds}s ({per_txn} per transaction,"
            f" {writers} writer connection(s), {transport} transport)")
        begin = time.perf_counter()
        threads = [threading.Thread(target=_write, args=(dsn, args.rows, per_txn, begin, interval,
                                                         range(w, transactions, writers)))
                   for w in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        achieved = transactions * per_txn / (time.perf_counter() - begin)
        expected = 1 + transactions * per_txn
        wait_until(lambda: view.count(stream, TABLE) >= expected, service, 120, f"{expected} changes")
        service.sampler.sample()
    finally:
        conn.close()
        service.stop()
        arrivals = tail.stop()[1:] if tail is not None else None
    messages = view.read_all(stream, TABLE, expected)[1:]
    view.drop(stream)
    drop_slots(dsn, [slot])
    lags = []
    for received_us, payload in messages:
        body = json.loads(payload)
        committed = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).timestamp()
        lags.append(received_us / 1e6 - committed)
    lags.sort()
    figures = {
        "changes": len(lags),
        "achieved_rate": achieved,
        "p50_ms": percentile(lags, 50) * 1000,
        "p99_ms": percentile(lags, 99) * 1000,
        "max_ms": lags[-1] * 1000 if lags else None,
        "peak_rss_mb": service.sampler.peak_rss / 2**20,
    }
    log(f"latency: p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms")
    if arrivals is not None:
        figures.update(_visible(arrivals, tail.error))
        log(f"latency until readable: p50 {figures['visible_p50_ms']:.1f} ms, p99 {figures['visible_p99_ms']:.1f} ms")
    return figures


def _write(dsn: str, rows: int, per_txn: int, begin: float, interval: float, indexes: range) -> None:
    """One writer connection: transaction ``index`` commits at ``begin + index * interval``.

    ``synchronous_commit = on`` (PostgreSQL's default): the test cluster runs with it off, which
    leaves commits unflushed for up to wal_writer_delay (200 ms), and logical decoding reads flushed
    WAL only; that would measure the WAL writer, not pgsource. Several connections (``--latency-writers``)
    keep one session's commit flushes from capping the rate or delaying the schedule (a harness
    effect, not pgsource's)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET synchronous_commit = on")
            for index in indexes:
                pause = begin + index * interval - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                low = (index * per_txn) % (rows - per_txn)
                cur.execute(UPDATE_RANGE, (low, low + per_txn))
                conn.commit()
    finally:
        conn.close()


def _visible(arrivals: list, error: str | None) -> dict:
    """Commit → the first poll that returned the change (``--latency-visible``, bench/visible.py)."""
    lags = sorted(received - datetime.fromisoformat(json.loads(payload)["timestamp"].replace("Z", "+00:00")).timestamp()
                  for received, payload in arrivals)
    return {"visible_changes": len(lags), "visible_error": error,
            "visible_p50_ms": percentile(lags, 50) * 1000 if lags else float("nan"),
            "visible_p99_ms": percentile(lags, 99) * 1000 if lags else float("nan")}
