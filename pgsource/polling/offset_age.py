"""``OffsetAge``: how far behind a time-tracked table's acknowledged rows are (``pgsource_source_offset_age_seconds``).

Per unit, the newest tracking value Iggy acknowledged, as epoch seconds; once a second
the gauge is set to now minus it, per table. Only time tracking columns (timestamptz,
timestamp in the writers' TimeZone, date) have an age.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from pgsource.pg import horizon as hz
from pgsource.polling.late_commits import tracking_key

REPORT_EVERY = 1.0  # seconds


class OffsetAge:
    """Fed by the committer (``acked``), read out by the worker's loop (``report``)."""

    def __init__(self, gauge, worker: str) -> None:
        self._gauge = gauge  # the metric family, labelled (table, worker)
        self._worker = worker
        self._newest: dict[str, float] = {}  # unit key -> epoch seconds of the newest acknowledged value
        self._reported_at = 0.0

    def acked(self, unit, hi: tuple) -> None:
        """A batch of ``unit`` whose last row's position is ``hi`` was acknowledged."""
        if not hi:
            return
        epoch = tracking_epoch(unit.reader.tracking, unit.time_zone, hi[0])
        if epoch is not None:
            self._newest[unit.key] = max(epoch, self._newest.get(unit.key, epoch))

    def report(self, units) -> None:
        """At most once a second: now minus the newest acknowledged value, per table with a time column."""
        now = time.monotonic()
        if now - self._reported_at < REPORT_EVERY:
            return
        self._reported_at = now
        wall = time.time()
        for unit in units:
            newest = self._newest.get(unit.key)
            if newest is not None:
                self._gauge.labels(unit.reader.table_name, self._worker).set(max(0.0, wall - newest))


def tracking_epoch(tracking, time_zone: str | None, text: str) -> float | None:
    """Epoch seconds of a time tracking value (timestamptz, timestamp in the writers' TimeZone, date); else None."""
    if tracking is None or tracking.type_oid not in (hz.TIMESTAMPTZ_OID, hz.TIMESTAMP_OID, hz.DATE_OID):
        return None
    try:
        key = tracking_key(text, tracking.type_oid)
    except ValueError:
        return None
    if key in (float("inf"), float("-inf")):
        return None
    if tracking.type_oid == hz.DATE_OID:
        return key * 86400.0
    seconds = key / 1e6
    if tracking.type_oid == hz.TIMESTAMP_OID and time_zone:  # local time of the writers' zone: shift to UTC
        try:
            local = datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=ZoneInfo(time_zone))
            seconds -= local.utcoffset().total_seconds()
        except (ValueError, OverflowError, KeyError):
            return None
    return seconds
