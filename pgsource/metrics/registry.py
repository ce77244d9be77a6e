"""Metric definitions, created on first use (after PROMETHEUS_MULTIPROC_DIR is set)."""

from __future__ import annotations

import os
from functools import lru_cache


class Metrics:
    """The service's metrics; one instance per process via ``Metrics.get()``."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.rows_read = Counter("pgsource_source_rows_read_total", "Rows or changes read from PostgreSQL", ["table", "worker"])
        self.batches_queued = Counter("pgsource_source_batches_queued_total", "Batches handed to the publisher", ["worker"])
        self.offset_commits = Counter("pgsource_state_offset_commits_total", "Offsets/LSNs committed after acknowledgement", ["worker"])
        self.messages_sent = Counter("pgsource_sink_messages_sent_total", "Messages acknowledged by Iggy", ["table"])
        self.send_errors = Counter("pgsource_sink_send_errors_total", "Failed sends to Iggy (retried)", [])
        self.send_seconds = Histogram(
            "pgsource_sink_send_duration_seconds", "Time of one acknowledged batch send", [],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.in_flight = Gauge("pgsource_source_batches_in_flight", "Batches sent but not yet acknowledged", ["worker"], multiprocess_mode="livesum")
        self.restarts = Counter("pgsource_supervisor_worker_restarts_total", "Worker processes restarted", ["worker"])
        self.horizon_age = Gauge(
            "pgsource_source_horizon_age_seconds",
            "Polling: how long the transaction holding the committed offset (the late-commit horizon) has run",
            ["table", "worker"], multiprocess_mode="max",
        )
        self.lag_seconds = Gauge("pgsource_cdc_lag_seconds", "Commit time to Iggy acknowledgement of the last batch", ["worker"], multiprocess_mode="max")

    @staticmethod
    @lru_cache(maxsize=1)
    def get() -> Metrics:
        return Metrics()


def serve_metrics(host: str, port: int):
    """Serve /metrics from every process's files; returns the HTTP server (call ``shutdown()``)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def mark_process_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
