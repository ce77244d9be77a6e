"""Preparing a CDC slot, its pure rules: when a missing slot may be created, which tables join,
what a join records before and after its cut, which rows go out first, and the slot's record
written by its one owner. No PostgreSQL: the end-to-end side is tests/cdc (test_ownership,
test_missing_slot, test_snapshot_done, test_table_identity, test_partition_attach)."""

from __future__ import annotations

import pytest

from pgsource.cdc.slot_history import renamed_while_stopped, with_oids
from pgsource.cdc.slot_plan import (
    NewSlot,
    SlotPlan,
    SlotSettings,
    captured_and_joining,
    cut_joins,
    end_joins,
    new_slot,
    open_joins,
    streaming_record,
)
from pgsource.cdc.slot_record import SlotRecords
from pgsource.config.model import TableConfig
from pgsource.errors import PrerequisiteError, StateError
from pgsource.pg.replication import SystemIdentity
from pgsource.state import FileStateStore, SlotProgress, SnapshotPhase, TableJoin

WHERE = "state /var/lib/pgsource/cdc/s.json"


def _tables(*names: str) -> list[TableConfig]:
    return [TableConfig.model_validate(name) for name in names]


def test_a_missing_slot_is_created_without_a_word_on_the_first_start_only():
    assert new_slot("s", None, WHERE, SlotSettings("pub")) == NewSlot(snapshot=False, generation=0, gap=False)
    assert new_slot("s", None, WHERE, SlotSettings("pub", snapshot="initial")) == NewSlot(True, 0, False)
    used = SlotProgress("s", lsn=0x1000, consistent_lsn=0x800)
    with pytest.raises(PrerequisiteError) as refused:
        new_slot("s", used, WHERE, SlotSettings("pub", snapshot="initial"))
    assert "replication slot s is missing, but pgsource used it" in str(refused.value)
    assert "confirmed up to 0/1000" in str(refused.value) and WHERE in str(refused.value)
    # on_missing_slot: snapshot accepts the gap: a new slot, and every table's rows (a new generation)
    accepted = new_slot("s", used, WHERE, SlotSettings("pub", snapshot="never", on_missing_slot="snapshot"))
    assert accepted == NewSlot(snapshot=True, generation=0, gap=True)


def test_an_initial_snapshot_interrupted_before_its_slot_existed_keeps_its_generation():
    # recorded before the slot was created; the slot never came to be: still a first start
    first = SlotProgress("s", SnapshotPhase.IN_PROGRESS, generation=0x5000)
    assert new_slot("s", first, WHERE, SlotSettings("pub", snapshot="initial")) == NewSlot(True, 0x5000, False)


def test_a_table_joins_unless_the_slot_captures_it_and_its_publication_holds_it():
    a, b, c = tables = _tables("a", "b", "c")
    record = SlotProgress("s", lsn=0x100, tables=("a", "c"))
    captured, joining = captured_and_joining(record, tables, lambda t: t.name != "c")
    assert captured == ["a"] and joining == [b, c]
    # a record of an older version lists no tables: everything its publication holds is captured
    captured, joining = captured_and_joining(SlotProgress("s", lsn=0x100), tables, lambda t: t.name != "c")
    assert captured == ["a", "b"] and joining == [c]
    # ... unless pgsource rejoin named one: then the list is the record's
    captured, joining = captured_and_joining(SlotProgress("s", rejoin=("b",)), tables, lambda t: True)
    assert captured == [] and joining == tables


def test_a_join_is_recorded_before_its_cut_and_done_only_once_its_rows_are_acknowledged():
    record = SlotProgress("s", lsn=0x100, tables=("a",), joins=(TableJoin("old", 0x50, 0x50, done=True),))
    opened, with_rows = open_joins(record, ["b", "old"], "initial")
    assert with_rows == {"b", "old"}
    # a table that left and comes back joins anew: a cut of its own, a generation of its own
    assert opened.joins == (TableJoin("old", 0, 0), TableJoin("b", 0, 0))
    cut = cut_joins(opened, ["b", "old"], 0x300)
    assert cut.joins == (TableJoin("old", 0x300, 0x300), TableJoin("b", 0x300, 0x300))
    done = end_joins(cut, ["b", "old"])
    assert all(join.done for join in done.joins) and not any(join.done for join in cut.joins)


def test_a_join_interrupted_after_its_cut_keeps_its_cut_and_generation():
    interrupted = SlotProgress("s", lsn=0x100, joins=(TableJoin("b", 0x300, 0x300),))
    opened, with_rows = open_joins(interrupted, ["b"], "initial")
    assert opened.joins == (TableJoin("b", 0x300, 0x300),) and with_rows == {"b"}
    # a redo of the cut itself (its first attempt stopped before the cut) keeps the first generation
    assert cut_joins(SlotProgress("s", joins=(TableJoin("b", 0, 0x200),)), ["b"], 0x400).joins == (
        TableJoin("b", 0x400, 0x200),)


def test_with_snapshot_never_only_the_tables_pgsource_rejoin_named_send_their_rows():
    record = SlotProgress("s", lsn=0x100, tables=("a",), rejoin=("c",))
    _, with_rows = open_joins(record, ["b", "c"], "never")
    assert with_rows == {"c"}


def test_the_plan_gives_each_configured_joined_table_its_cut():
    a, b = tables = _tables("a", "sales.b")
    record = SlotProgress("s", joins=(TableJoin("sales.b", 0x300, 0x300, done=True), TableJoin("gone", 0x10, 0x10)))
    assert SlotPlan(record, 0x100).starts(tables) == {("sales", "b"): 0x300}


def test_the_streaming_record_never_moves_back_and_names_the_database():
    identity = SystemIdentity("7345", 2)
    record = streaming_record(SlotProgress("s", lsn=0x500), 0x400, identity, ["b", "a", "b"])
    assert (record.lsn, record.system_identifier, record.timeline, record.tables) == (0x500, "7345", 2, ("a", "b"))
    assert streaming_record(record, 0x600, identity, ["a"]).lsn == 0x600


def test_a_table_renamed_while_stopped_is_the_same_relation_under_its_new_name():
    record = SlotProgress("s", tables=("a", "b"), oids=(("a", 11), ("b", 12)))
    # b is now configured as b2 (same oid); c is new; a is still a
    assert renamed_while_stopped(record, {"a": 11, "b2": 12, "c": 13}) == {"b": "b2"}
    # both names configured: the old one is a table of its own, nothing was renamed
    assert renamed_while_stopped(record, {"a": 11, "b": 99, "b2": 12}) == {}


def test_the_record_keeps_the_oid_of_every_table_it_captures_and_forgets_a_rejoin_done():
    record = SlotProgress("s", tables=("a", "b"), oids=(("a", 11), ("gone", 5)), rejoin=("b", "c"))
    identified = with_oids(record, {"a": 11, "b": 21, "c": 31})
    assert identified.oids == (("a", 11), ("b", 21))
    assert identified.rejoin == ("c",)  # c has not joined yet


def test_the_slots_record_is_written_by_its_owner_and_only_moves_forward(tmp_path):
    store = FileStateStore(str(tmp_path))
    records = SlotRecords(store, "s")
    assert records.load() is None and records.record is None
    records.save(SlotProgress("s", lsn=0x500, tables=("a",)))
    records.confirmed(0x400)  # behind the record: nothing written
    assert FileStateStore(str(tmp_path)).load("cdc/s", SlotProgress).lsn == 0x500
    records.confirmed(0x600)
    assert SlotRecords(FileStateStore(str(tmp_path)), "s").load() == SlotProgress("s", lsn=0x600, tables=("a",))
    with pytest.raises(StateError):
        records.save(SlotProgress("s", lsn=0x100))  # a slot's position never goes back ...
    records.save(SlotProgress("s", lsn=0x100), force=True)  # ... unless it is a new slot
    assert records.load().lsn == 0x100 and str(tmp_path) in records.where
