"""The offset writer: acknowledged offsets reach state.dir on their own thread, newest wins, errors surface."""

from __future__ import annotations

import threading

import pytest

from pgsource.errors import StateError
from pgsource.state import FileStateStore, PollingOffset
from pgsource.state.writer import OffsetWriter
from tests.support import wait_for


def _stored(directory, key: str) -> PollingOffset | None:
    return FileStateStore(str(directory)).load(key, PollingOffset)  # as a restart would read it


def test_a_submitted_offset_is_what_a_restart_resumes_from(tmp_path):
    writer = OffsetWriter(FileStateStore(str(tmp_path)))
    writer.submit("polling/users", PollingOffset(("100",), rows=100))
    wait_for(lambda: _stored(tmp_path, "polling/users"), timeout=10, message="the offset on disk")
    writer.submit("polling/users", PollingOffset(("200",), rows=200))
    writer.close()
    assert _stored(tmp_path, "polling/users") == PollingOffset(("200",), rows=200)


def test_close_writes_the_newest_offset_of_every_table_at_once(tmp_path):
    writer = OffsetWriter(FileStateStore(str(tmp_path)), interval=3600)  # nothing would be written for an hour
    writer.submit("polling/users", PollingOffset(("1",)))
    wait_for(lambda: _stored(tmp_path, "polling/users"), timeout=10, message="the first commit")  # the first is at once
    for value in range(2, 50):
        writer.submit("polling/users", PollingOffset((str(value),)))
    writer.submit("polling/orders", PollingOffset(("7",)))
    assert _stored(tmp_path, "polling/users").position == ("1",)  # held back by the interval
    writer.close()
    assert _stored(tmp_path, "polling/users").position == ("49",)
    assert _stored(tmp_path, "polling/orders").position == ("7",)


def test_offsets_submitted_within_the_interval_replace_each_other(tmp_path):
    commits: list[tuple[str, tuple]] = []
    store = FileStateStore(str(tmp_path))
    real_commit = store.commit
    gate, writing = threading.Event(), threading.Event()

    def recording_commit(key, record, **kwargs):
        writing.set()
        gate.wait(10)  # the first commit is slow: everything below is submitted while it is written
        commits.append((key, record.position))
        real_commit(key, record, **kwargs)

    store.commit = recording_commit
    writer = OffsetWriter(store)
    writer.submit("polling/users", PollingOffset(("1",)))
    assert writing.wait(10), "the writer never took the first offset"
    for value in range(2, 100):
        writer.submit("polling/users", PollingOffset((str(value),)))
    gate.set()
    writer.close()
    assert commits == [("polling/users", ("1",)), ("polling/users", ("99",))]  # two fsyncs, not 99
    assert _stored(tmp_path, "polling/users").position == ("99",)


def test_a_failed_commit_stops_the_worker_on_its_next_submit_and_keeps_the_last_good_offset(tmp_path):
    FileStateStore(str(tmp_path)).commit("polling/users", PollingOffset(("500",)))
    writer = OffsetWriter(FileStateStore(str(tmp_path)))
    # behind what is stored (a second service on the same state.dir, say): refused by the store, on the
    # writer's thread; the worker learns it from its next submit, never by a silent rewind
    with pytest.raises(StateError, match="backward"):
        wait_for(lambda: writer.submit("polling/users", PollingOffset(("400",))), timeout=10, interval=0.01)
    with pytest.raises(StateError, match="backward"):
        writer.close()
    assert _stored(tmp_path, "polling/users").position == ("500",)


def test_a_failure_seen_only_at_close_is_raised_by_close(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    writer = OffsetWriter(FileStateStore(str(blocker)), interval=3600)
    writer.submit("polling/users", PollingOffset(("1",)))
    with pytest.raises(StateError, match="cannot write state file"):
        writer.close()


def test_close_without_any_offset_writes_nothing(tmp_path):
    writer = OffsetWriter(FileStateStore(str(tmp_path / "state")))
    writer.close()
    assert FileStateStore(str(tmp_path / "state")).keys() == []
