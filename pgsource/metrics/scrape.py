"""Families the supervisor collects at scrape time instead of from the processes' files.

- ``pgsource_cdc_slot_*{worker}``: each slot's confirmed LSN, retained WAL
  (``pg_current_wal_lsn() - restart_lsn``), unconfirmed WAL, ``safe_wal_size`` and
  ``wal_status``, read from ``pg_replication_slots`` in one query bounded by
  ``statement_timeout`` (2 s); when PostgreSQL cannot be asked they are left out of
  that scrape (alert on their absence) and a warning is logged at most once a minute;
- ``pgsource_sink_queue_depth_batches``: batches waiting on the publisher's queue.

These gauges exist in the supervisor alone, so they have no multiprocess mode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pgsource.errors import ProbeError

log = logging.getLogger("pgsource.metrics")

WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")


class ScrapeCollector:
    """A prometheus-client collector; ``slots()`` returns worker → ``SlotStats`` (or raises ProbeError)."""

    def __init__(self, *, slots: Callable[[], dict] | None = None, queue_depth: Callable[[], int | None] | None = None) -> None:
        self._slots = slots
        self._queue_depth = queue_depth
        self._warned = 0.0

    def describe(self):
        return []  # collected lazily: the registry must not call collect() at registration

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        if self._queue_depth is not None:
            depth = self._queue_depth()
            if depth is not None:
                family = GaugeMetricFamily("pgsource_sink_queue_depth_batches", "Batches waiting on the publisher's queue")
                family.add_metric([], depth)
                yield family
        if self._slots is None:
            return
        try:
            by_worker = self._slots()
        except ProbeError as exc:
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning("slot metrics left out of this scrape: %s", exc)
            return
        confirmed = GaugeMetricFamily("pgsource_cdc_slot_confirmed_lsn_bytes",
                                      "The slot's confirmed_flush_lsn (the last position pgsource confirmed)", labels=["worker"])
        retained = GaugeMetricFamily("pgsource_cdc_slot_retained_wal_bytes",
                                     "WAL the server keeps for the slot: pg_current_wal_lsn() - restart_lsn", labels=["worker"])
        unconfirmed = GaugeMetricFamily("pgsource_cdc_slot_unconfirmed_wal_bytes",
                                        "WAL after the slot's confirmed position: pg_current_wal_lsn() - confirmed_flush_lsn",
                                        labels=["worker"])
        safe = GaugeMetricFamily("pgsource_cdc_slot_safe_wal_size_bytes",
                                 "WAL that can still be written before the slot is invalidated (max_slot_wal_keep_size)",
                                 labels=["worker"])
        status = GaugeMetricFamily("pgsource_cdc_slot_wal_status_info",
                                   "1 for the slot's wal_status (reserved, extended, unreserved, lost; missing = no slot)",
                                   labels=["worker", "status"])
        for worker, stats in sorted(by_worker.items()):
            if stats is None:
                status.add_metric([worker, "missing"], 1)
                continue
            confirmed.add_metric([worker], stats.confirmed_lsn)
            retained.add_metric([worker], stats.retained_bytes)
            unconfirmed.add_metric([worker], stats.unconfirmed_bytes)
            if stats.safe_wal_size is not None:
                safe.add_metric([worker], stats.safe_wal_size)
            for name in WAL_STATUSES:
                status.add_metric([worker, name], 1 if stats.wal_status == name else 0)
        yield from (confirmed, retained, unconfirmed, safe, status)
