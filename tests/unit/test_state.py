"""The state store: typed records, atomic files, old files read, corrupt ones refused, no step backward."""

from __future__ import annotations

import json
import os

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


def test_a_valid_file_cut_short_is_refused_not_read_as_a_start_over(tmp_path):
    store = FileStateStore(str(tmp_path))
    store.commit("polling/users", PollingOffset(("1234",), rows=1234))
    path = store.path("polling/users")
    with open(path, "rb") as handle:
        whole = handle.read()
    for cut in (1, len(whole) // 2, len(whole) - 1):  # a torn write, as a disk without the rename would leave
        with open(path, "wb") as out:
            out.write(whole[:cut])
        with pytest.raises(StateError, match="unreadable"):
            FileStateStore(str(tmp_path)).load("polling/users", PollingOffset)
        with pytest.raises(StateError, match="unreadable"):  # nor overwritten by the next commit
            FileStateStore(str(tmp_path)).commit("polling/users", PollingOffset(("1",)))


def test_a_failed_write_keeps_the_previous_record_whole(tmp_path, monkeypatch):
    store = FileStateStore(str(tmp_path))
    store.commit("polling/users", PollingOffset(("10",), rows=10))

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pgsource.state.store.os.replace", crash)
    with pytest.raises(StateError, match="cannot write state file .*No space left on device"):
        store.commit("polling/users", PollingOffset(("20",), rows=20))
    monkeypatch.undo()
    assert FileStateStore(str(tmp_path)).load("polling/users", PollingOffset) == PollingOffset(("10",), rows=10)
    assert [name for name in tmp_path.iterdir() if name.name.startswith(".tmp-")] == []  # the temp file is gone


def test_a_temp_file_left_by_a_crash_before_the_rename_is_ignored(tmp_path):
    store = FileStateStore(str(tmp_path))
    store.commit("polling/users", PollingOffset(("10",)))
    (tmp_path / ".tmp-abc123").write_text('{"format": 2, "key": "polling/us')  # killed mid-write
    restarted = FileStateStore(str(tmp_path))
    assert restarted.keys() == ["polling/users"]
    assert restarted.load("polling/users", PollingOffset).position == ("10",)


def test_a_commit_replaces_the_file_in_one_step(tmp_path, monkeypatch):
    """What is at the record's path is always a whole record: the new one is renamed over the old."""
    store = FileStateStore(str(tmp_path))
    store.commit("polling/users", PollingOffset(("10",)))
    seen = []
    real_replace = os.replace

    def observing_replace(src, dst):
        seen.append(FileStateStore(str(tmp_path)).load("polling/users", PollingOffset).position)  # just before
        with open(src) as handle:
            seen.append(tuple(json.load(handle)["record"]["cursor"]))  # the complete new file, fsync'd
        real_replace(src, dst)

    monkeypatch.setattr("pgsource.state.store.os.replace", observing_replace)
    store.commit("polling/users", PollingOffset(("20",)))
    assert seen == [("10",), ("20",)]
    assert FileStateStore(str(tmp_path)).load("polling/users", PollingOffset).position == ("20",)


def test_an_unwritable_state_dir_is_a_state_error(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(StateError, match="cannot write state file"):
        FileStateStore(str(blocker)).commit("polling/users", PollingOffset(("1",)))


def test_a_first_format_file_is_upgraded_by_the_next_commit_and_still_guards_its_position(tmp_path):
    store = FileStateStore(str(tmp_path))
    with open(store.path("polling/users"), "w") as out:
        json.dump({"key": "polling/users", "cursor": ["500"], "rows": 500, "done": False, "extra": {}}, out)
    with pytest.raises(StateError, match="backward"):  # the legacy position counts like a new one
        FileStateStore(str(tmp_path)).commit("polling/users", PollingOffset(("499",)))
    store = FileStateStore(str(tmp_path))
    store.commit("polling/users", PollingOffset(("501",), rows=501))
    with open(store.path("polling/users")) as handle:
        body = json.load(handle)
    assert (body["format"], body["kind"], body["key"]) == (2, "polling", "polling/users")
    assert FileStateStore(str(tmp_path)).load("polling/users", PollingOffset) == PollingOffset(("501",), rows=501)


def test_reset_moves_an_offset_back_and_a_restart_resumes_from_there(tmp_path):
    FileStateStore(str(tmp_path)).commit("polling/users", PollingOffset(("900",), rows=900))
    FileStateStore(str(tmp_path)).commit("polling/users", PollingOffset(("100",), rows=100), force=True)
    restarted = FileStateStore(str(tmp_path))
    assert restarted.load("polling/users", PollingOffset) == PollingOffset(("100",), rows=100)
    restarted.commit("polling/users", PollingOffset(("101",)))  # forward from the reset position is allowed
    with pytest.raises(StateError, match="backward"):
        restarted.commit("polling/users", PollingOffset(("100",)))


def test_keys_with_unsafe_characters_get_files_of_their_own(tmp_path):
    store = FileStateStore(str(tmp_path))
    keys = ["polling/public.users", "polling/public.users#0of2", 'polling/"We/ird"."ta ble"', "polling/public%2Eusers"]
    for index, key in enumerate(keys):
        store.commit(key, PollingOffset((str(index),)))
    assert len({store.path(key) for key in keys}) == len(keys)
    assert all(store.path(key).startswith(str(tmp_path) + "/") and "/" not in store.path(key)[len(str(tmp_path)) + 1:]
               for key in keys)
    restarted = FileStateStore(str(tmp_path))
    assert sorted(restarted.keys()) == sorted(keys)
    assert [restarted.load(key, PollingOffset).position for key in keys] == [("0",), ("1",), ("2",), ("3",)]


def test_a_deleted_key_starts_over(tmp_path):
    store = FileStateStore(str(tmp_path))
    store.commit("polling/users", PollingOffset(("50",)))
    store.delete("polling/users")
    store.delete("polling/users")  # twice is harmless
    assert FileStateStore(str(tmp_path)).load("polling/users", PollingOffset) is None
    store.commit("polling/users", PollingOffset(("1",)))  # no memory of the deleted position
    assert FileStateStore(str(tmp_path)).load("polling/users", PollingOffset).position == ("1",)
