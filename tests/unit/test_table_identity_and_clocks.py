"""Issue 18's pure parts: which defaults read the writing transaction's clock, how far a zone's
clock runs back, what a changed catalog entry or a changed table identity means, and that slot
records of older versions still load."""

from __future__ import annotations

import pytest

from pgsource.cdc.slot_history import rename_captured, table_identity_problem
from pgsource.pg.horizon import (
    DATE_OID,
    TIMESTAMP_OID,
    TIMESTAMPTZ_OID,
    TrackingInfo,
    TrackingKind,
    Watch,
    clock_default,
    watch_problem,
)
from pgsource.pg.publications import RelationNow
from pgsource.polling.late_commits import ReadRange, SentIds, backward_shift, below_horizon
from pgsource.state import SlotProgress, TableJoin


@pytest.mark.parametrize(
    ("expression", "type_oid", "expected"),
    [
        ("now()", TIMESTAMPTZ_OID, (None, None)),
        ("CURRENT_TIMESTAMP(3)", TIMESTAMPTZ_OID, (None, 3)),
        ("clock_timestamp()", TIMESTAMP_OID, (None, None)),
        ("(now())::timestamp without time zone", TIMESTAMP_OID, (None, None)),
        ("LOCALTIMESTAMP(0)", TIMESTAMP_OID, (None, 0)),
        ("timezone('UTC'::text, now())", TIMESTAMP_OID, ("UTC", None)),
        ("(now() AT TIME ZONE 'utc'::text)", TIMESTAMP_OID, ("utc", None)),
        ("CURRENT_DATE", DATE_OID, (None, None)),
        ("(now())::date", DATE_OID, (None, None)),
        # not the transaction's clock as this column stores it
        ("(now() + '01:00:00'::interval)", TIMESTAMPTZ_OID, None),
        ("'2020-01-01 00:00:00+00'::timestamp with time zone", TIMESTAMPTZ_OID, None),
        ("LOCALTIMESTAMP", TIMESTAMPTZ_OID, None),
        ("timezone('UTC'::text, now())", TIMESTAMPTZ_OID, None),
        ("CURRENT_DATE", TIMESTAMP_OID, None),
        ("(now())::date", TIMESTAMP_OID, None),
        ("(now())::timestamp without time zone", TIMESTAMPTZ_OID, None),
    ],
)
def test_only_the_writing_transactions_clock_is_guarded(expression, type_oid, expected):
    assert clock_default(expression, type_oid) == expected


def test_a_zone_whose_clock_runs_back_is_measured():
    assert backward_shift("Europe/Berlin") == 3600.0
    assert backward_shift("Australia/Lord_Howe") == 1800.0  # half an hour
    assert backward_shift("UTC") == backward_shift("Asia/Tokyo") == 0.0
    assert backward_shift("Europe/Berlin", dates=True) == 0.0  # 03:00 -> 02:00: the date stays


def test_a_changed_sequence_or_default_is_named():
    tracking = TrackingInfo(TrackingKind.SEQUENCE, "id", 20, "public.t_id_seq", watch=Watch(1, 1, "public.t_id_seq"),
                            fingerprint="7,8,8:1:1:false")
    assert watch_problem(tracking, "7,8,8:1:1:false") is None
    assert watch_problem(tracking, "7,8,8:50:1:false") == "sequence public.t_id_seq changed while running (CACHE 1 -> 50)"
    assert "another sequence now has its name" in watch_problem(tracking, "7,8,9:1:1:false")
    assert "the column's default was replaced" in watch_problem(tracking, "9,8,8:1:1:false")


def test_rows_found_below_the_horizon_of_their_first_read_are_counted():
    range_ = ReadRange(None, None, ("9",), 9, "1:2:", 0.0, SentIds([]), horizon_key=5)
    assert below_horizon(range_, [4, 5, 6, 3]) == 2
    assert below_horizon(ReadRange(None, None, ("9",), 9, "1:2:", 0.0, SentIds([])), [1]) == 0


@pytest.mark.parametrize(
    ("now", "kind"),
    [
        (RelationNow(10, "orders", True), None),
        (RelationNow(0, "archive.orders_v2", True), "renamed"),
        (RelationNow(0, "", False), "dropped"),
        (RelationNow(11, "orders_old", True), "replaced"),
        (RelationNow(10, "orders", False), "unpublished"),
    ],
)
def test_a_table_that_is_no_longer_the_captured_relation_is_named(now, kind):
    found = table_identity_problem("iggy_slot", "iggy_publication", "orders", 10, now)
    assert (found[0] if found else None) == kind
    if kind in ("replaced", "unpublished"):
        assert "pgsource rejoin --config FILE --table orders" in found[1]


def test_slot_records_of_older_versions_load_and_renames_carry_everything():
    old = SlotProgress.from_json({"slot": "s", "lsn": 5, "tables": ["a"]})
    assert old.oids == () and old.partitions == () and old.rejoin == ()
    record = SlotProgress("s", tables=("a", "b"), oids=(("a", 1), ("b", 2)), partitions=(("a", (3,)),),
                          joins=(TableJoin("a", 7, 7, True),))
    renamed = rename_captured(record, {"a": "z"})
    assert renamed.tables == ("b", "z") and renamed.oid_of == {"b": 2, "z": 1}
    assert renamed.partitions_of == {"z": (3,)} and renamed.joins[0].table == "z"
    assert SlotProgress.from_json(renamed.to_json()) == renamed
