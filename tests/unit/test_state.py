"""The state store: typed records, atomic files, old files read, corrupt ones refused, no step backward."""

from __future__ import annotations

import json

import pytest

from pgsource.errors import StateError
from pgsource.state import ChunkCuts, FileStateStore, PollingOffset, SlotProgress, SnapshotPhase


def test_records_round_trip_through_their_files(tmp_path):
    store = FileStateStore(str(tmp_path))
    store.commit("polling/users", PollingOffset(("42", "7"), rows=42, chunk=(None, 100)))
    store.commit("polling/users#cuts2", ChunkCuts((50,), 1, 100))
    store.commit("cdc/iggy_slot", SlotProgress("iggy_slot", SnapshotPhase.DONE, lsn=123, system_identifier="7"))
    fresh = FileStateStore(str(tmp_path))  # as after a restart
    assert fresh.load("polling/users", PollingOffset) == PollingOffset(("42", "7"), 42, (None, 100))
    assert fresh.load("polling/users#cuts2", ChunkCuts) == ChunkCuts((50,), 1, 100)
    assert fresh.load("cdc/iggy_slot", SlotProgress).phase is SnapshotPhase.DONE
    assert fresh.load("polling/orders", PollingOffset) is None
    assert sorted(fresh.keys()) == ["cdc/iggy_slot", "polling/users", "polling/users#cuts2"]


def test_files_of_the_first_format_are_read_as_records(tmp_path):
    store = FileStateStore(str(tmp_path))
    legacy = {
        "polling/users": {"key": "polling/users", "cursor": ["9"], "rows": 9, "done": False, "extra": {"chunk": [None, 5]}},
        "polling/users#cuts2": {"key": "polling/users#cuts2", "cursor": [], "extra": {"cuts": [5], "min": 1, "max": 9}},
        "cdc/iggy_slot": {"key": "cdc/iggy_slot", "cursor": ["0/0"], "extra": {"snapshot": "in_progress"}},
    }
    for key, body in legacy.items():
        with open(store.path(key), "w") as out:
            json.dump(body, out)
    assert store.load("polling/users", PollingOffset) == PollingOffset(("9",), 9, (None, 5))
    assert store.load("polling/users#cuts2", ChunkCuts) == ChunkCuts((5,), 1, 9)
    assert store.load("cdc/iggy_slot", SlotProgress).phase is SnapshotPhase.IN_PROGRESS


@pytest.mark.parametrize("content", ["", "{not json", '{"format": 2, "kind": "polling", "record": {}}', "[1, 2]"])
def test_a_corrupt_or_truncated_file_stops_with_its_path(tmp_path, content):
    store = FileStateStore(str(tmp_path))
    with open(store.path("polling/users"), "w") as out:
        out.write(content)
    with pytest.raises(StateError, match="polling%2Fusers.json"):
        FileStateStore(str(tmp_path)).load("polling/users", PollingOffset)


def test_progress_never_moves_backward_unless_forced(tmp_path):
    store = FileStateStore(str(tmp_path))
    store.commit("polling/t", PollingOffset(("100",)))
    store.commit("polling/t", PollingOffset(("100", "3")))  # same value, a tie-breaker more: forward
    with pytest.raises(StateError, match="backward"):
        FileStateStore(str(tmp_path)).commit("polling/t", PollingOffset(("99", "9")))  # a new process too
    store.commit("polling/t", PollingOffset(("2024-01-01 10:00:00.5+00",)), force=True)  # pgsource reset
    store.commit("polling/t", PollingOffset(("2024-01-01 10:00:01+00",)))
    with pytest.raises(StateError, match="backward"):
        store.commit("polling/t", PollingOffset(("2024-01-01 10:00:00.75+00",)))
    store.commit("cdc/s", SlotProgress("s", lsn=50))
    with pytest.raises(StateError, match="backward"):
        store.commit("cdc/s", SlotProgress("s", lsn=49))
    assert FileStateStore(str(tmp_path)).load("cdc/s", SlotProgress).lsn == 50


def test_a_record_of_another_kind_is_refused(tmp_path):
    store = FileStateStore(str(tmp_path))
    store.commit("polling/t", ChunkCuts((1,), 0, 2))
    with pytest.raises(StateError, match="holds a chunk_cuts record"):
        store.load("polling/t", PollingOffset)
