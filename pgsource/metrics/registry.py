"""Metric definitions, created on first use (after PROMETHEUS_MULTIPROC_DIR is set).

Every family is ``pgsource_<subsystem>_<name>_<unit>``, labelled by ``table`` and/or
``worker`` where that applies (never by pid). Every gauge says how the multiprocess
collector combines the processes' values: ``live*`` modes drop a dead process's value
(the supervisor calls ``mark_process_dead``), so a restarted worker does not leave a
stale figure behind. Families collected by the supervisor at scrape time (slots, queue
depth, readiness) are in ``pgsource/metrics/scrape.py``.
"""

from __future__ import annotations

import os
from functools import lru_cache

BATCH_MESSAGES_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)
BATCH_BYTES_BUCKETS = (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The service's metrics; one instance per process via ``Metrics.get()``."""

    def __init__(self) -> None:
        self._source()
        self._sink()
        self._cdc()
        self._supervisor()

    def _source(self) -> None:
        """The workers' families."""
        from prometheus_client import Counter, Gauge

        self.rows_read = Counter("pgsource_source_rows_read_total", "Rows or changes read from PostgreSQL", ["table", "worker"])
        self.batches_queued = Counter("pgsource_source_batches_queued_total", "Batches handed to the publisher", ["worker"])
        self.in_flight = Gauge("pgsource_source_batches_in_flight", "Batches sent but not yet acknowledged", ["worker"],
                               multiprocess_mode="livesum")
        self.horizon_age = Gauge(
            "pgsource_source_horizon_age_seconds",
            "Polling: how long the transaction holding the committed offset (the late-commit horizon) has run",
            ["table", "worker"], multiprocess_mode="livemax",
        )
        self.horizon_holder = Gauge(
            "pgsource_source_horizon_holder_pid",
            "Polling: the PostgreSQL backend pid of the transaction holding the committed offset (0 = none)",
            ["table", "worker"], multiprocess_mode="livemax",
        )
        self.rows_below_horizon = Counter(
            "pgsource_source_rows_below_horizon_total",
            "Polling: rows a re-read found below the late-commit horizon observed before their range was read"
            " (values written by the client: rows like them in ranges already complete were missed)",
            ["table", "worker"],
        )
        self.offset_age = Gauge(
            "pgsource_source_offset_age_seconds",
            "Polling, time tracking columns: now minus the tracking value of the newest acknowledged row",
            ["table", "worker"], multiprocess_mode="livemax",
        )
        self.offset_commits = Counter("pgsource_state_offset_commits_total", "Offsets/LSNs committed after acknowledgement", ["worker"])

    def _sink(self) -> None:
        """The publisher's families."""
        from prometheus_client import Counter, Histogram

        self.messages_sent = Counter("pgsource_sink_messages_sent_total", "Messages acknowledged by Iggy", ["table"])
        self.bytes_sent = Counter("pgsource_sink_bytes_sent_total",
                                  "Bytes of message frames (header + payload + user headers) acknowledged by Iggy", ["table"])
        self.send_errors = Counter("pgsource_sink_send_errors_total", "Failed sends to Iggy (each is retried), by reason", ["reason"])
        self.send_retries = Counter("pgsource_sink_send_retries_total",
                                    "Sends of a batch again after a failure, by the failure's reason", ["reason"])
        self.send_seconds = Histogram(
            "pgsource_sink_send_duration_seconds", "Time of one acknowledged batch send", [],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.ack_seconds = Histogram(
            "pgsource_sink_ack_latency_seconds",
            "From the worker queuing a batch to Iggy acknowledging it (queue wait, retries and send)",
            ["worker"], buckets=LATENCY_BUCKETS,
        )
        self.batch_messages = Histogram("pgsource_sink_batch_size_messages", "Messages per acknowledged batch", ["worker"],
                                        buckets=BATCH_MESSAGES_BUCKETS)
        self.batch_bytes = Histogram("pgsource_sink_batch_size_bytes", "Frame bytes per acknowledged batch", ["worker"],
                                     buckets=BATCH_BYTES_BUCKETS)

    def _cdc(self) -> None:
        """CDC's own families (the CDC workers and, for the commit-to-ack latency, the publisher)."""
        from prometheus_client import Counter, Gauge, Histogram

        self.lag_seconds = Gauge("pgsource_cdc_lag_seconds", "Commit time to Iggy acknowledgement of the last batch", ["worker"],
                                 multiprocess_mode="livemax")
        self.commit_to_ack = Histogram(
            "pgsource_cdc_commit_to_ack_seconds",
            "CDC: from the transaction's commit in PostgreSQL to Iggy acknowledging its batch",
            ["worker"], buckets=LATENCY_BUCKETS,
        )
        self.confirmed_lsn = Gauge(
            "pgsource_cdc_confirmed_lsn_bytes",
            "CDC: the last LSN the worker confirmed to its slot (every change before it acknowledged by Iggy)",
            ["worker"], multiprocess_mode="livemax",
        )
        self.snapshot_rows = Counter("pgsource_cdc_snapshot_rows_read_total", "CDC snapshot: rows read and queued",
                                     ["table", "worker"])
        self.snapshot_estimate = Gauge(
            "pgsource_cdc_snapshot_estimated_rows", "CDC snapshot: the planner's estimate of the table's rows (pg_class.reltuples)",
            ["table", "worker"], multiprocess_mode="livemax",
        )
        self.backfill_rows = Counter("pgsource_cdc_backfill_rows_total",
                                     "CDC backfills (pgsource snapshot): rows sent and acknowledged", ["table", "worker"])
        self.backfill_estimate = Gauge(
            "pgsource_cdc_backfill_estimated_rows", "CDC backfill running: the planner's estimate of the rows to send",
            ["table", "worker"], multiprocess_mode="livemax",
        )
        self.backfill_eta = Gauge(
            "pgsource_cdc_backfill_eta_seconds", "CDC backfill running: seconds left at the rate so far (0: none runs)",
            ["table", "worker"], multiprocess_mode="livemax",
        )

    def _supervisor(self) -> None:
        from prometheus_client import Counter, Gauge

        self.restarts = Counter("pgsource_supervisor_worker_restarts_total", "Worker processes restarted, by cause",
                                ["worker", "cause"])
        self.ready = Gauge("pgsource_health_ready_state", "1 while /readyz answers 200, 0 while it answers 503", [],
                           multiprocess_mode="livemax")

    @staticmethod
    @lru_cache(maxsize=1)
    def get() -> Metrics:
        return Metrics()


def serve_metrics(host: str, port: int, health=None, collectors=()):
    """Serve /metrics, /healthz and /readyz; returns the HTTP server (call ``shutdown()``).

    Kept for callers of the first version; see ``pgsource.metrics.server``.
    """
    from pgsource.metrics.server import serve

    return serve(host, port, health=health, collectors=collectors)


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
