"""``judge``: what makes pgsource ready or stuck (pure: no processes, no database)."""

from __future__ import annotations

import re

import pytest

from pgsource.errors import ProbeError
from pgsource.ops.health import PublisherView, WorkerView, judge

NOW = 1000.0
UP = PublisherView(alive=True, connected=True)


def worker(**fields) -> WorkerView:
    return WorkerView(**{"name": "worker-0", "alive": True, "connected": True, "started_at": 0.0, **fields})


def verdict(publisher=UP, workers=None, waiting=lambda name: None, moved_at=lambda name: 0.0):
    return judge(NOW, publisher, workers or [worker()], stall_after=60, window=61, waiting=waiting, moved_at=moved_at)


def test_nothing_to_do_is_ready_however_long_ago_progress_was():
    assert verdict().ready


def test_rows_waiting_without_progress_is_stuck_and_named():
    result = verdict(workers=[worker(acked_at=NOW - 100)], waiting=lambda name: "table users: rows wait after offset 7")
    assert not result.ready
    assert result.body()["stuck"] == [{"what": "worker-0", "reason": "table users: rows wait after offset 7; no progress for 100.0s"}]


@pytest.mark.parametrize("progress", ["acked_at", "caught_up_at", "started_at"])
def test_recent_progress_of_any_kind_is_ready_even_with_rows_waiting(progress):
    assert verdict(workers=[worker(**{progress: NOW - 5})], waiting=lambda name: "rows wait").ready


def test_a_slot_that_moved_recently_is_progress():
    assert verdict(waiting=lambda name: "WAL waits", moved_at=lambda name: NOW - 1).ready


def test_a_batch_unacknowledged_for_longer_than_stall_after_is_stuck_in_any_case():
    sending = PublisherView(alive=True, connected=True, sending_since=NOW - 61, sending_worker="worker-0")
    result = verdict(publisher=sending, workers=[worker(caught_up_at=NOW, waiting_since=NOW - 61)])
    assert not result.ready
    assert [s.what for s in result.stuck] == ["iggy"]  # named once, not again for the worker
    assert re.fullmatch(r"a batch of worker-0 unacknowledged for 61\.0s", result.stuck[0].reason)
    assert verdict(workers=[worker(caught_up_at=NOW, waiting_since=NOW - 59)]).ready


def test_not_connected_or_not_running_is_stuck():
    assert verdict(publisher=PublisherView(alive=True, connected=False, error="refused")).body()["stuck"] == [
        {"what": "iggy", "reason": "not connected: refused"}]
    assert not verdict(publisher=PublisherView(alive=False, connected=False)).ready
    assert not verdict(workers=[worker(connected=False)]).ready
    assert not verdict(workers=[worker(alive=False)]).ready


def test_a_database_that_cannot_be_asked_is_stuck():
    def refuse(name):
        raise ProbeError("connection refused")

    result = verdict(workers=[worker(acked_at=NOW - 100)], waiting=refuse)
    assert result.stuck[0].what == "postgresql" and "connection refused" in result.stuck[0].reason
