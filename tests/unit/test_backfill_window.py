"""The backfill's pure parts: a chunk between its watermarks, and the request a WAL message holds."""

from __future__ import annotations

import pytest

from pgsource.cdc.backfill_request import BackfillRequest, BadRequest, decode_request
from pgsource.cdc.watermarks import ChunkWindow, Watermark, WindowState


def _window() -> ChunkWindow:
    return ChunkWindow("t1", {("1",): "row 1", ("2",): "row 2", ("3",): "row 3"})


def test_rows_changed_between_the_watermarks_are_dropped_the_others_go_out_at_the_high_one():
    window = _window()
    window.changed(("1",))  # before the low watermark: the chunk's read already holds it
    assert window.watermark(Watermark("s", "t1", "low")) is None
    assert window.state is WindowState.OPEN
    window.changed(("2",))
    window.changed(("9",))  # a key outside the chunk
    assert window.watermark(Watermark("s", "t1", "high")) == ["row 1", "row 3"]
    assert window.closed and window.dropped == [("2",)]
    window.changed(("3",))  # after the high watermark: the row went out before this change
    assert window.watermark(Watermark("s", "t1", "high")) is None


def test_a_change_the_chunks_snapshot_did_not_see_drops_its_row_before_the_low_watermark_too():
    window = _window()
    window.changed(("1",), unseen=True)  # committed before the low watermark, not visible to the SELECT
    window.changed(("2",))  # seen by the SELECT: its row holds it
    window.watermark(Watermark("s", "t1", "low"))
    assert window.watermark(Watermark("s", "t1", "high")) == ["row 2", "row 3"]
    assert window.dropped == [("1",)]


def test_watermarks_of_another_attempt_are_ignored():
    window = _window()
    assert window.watermark(Watermark("s", "old", "low")) is None
    assert window.watermark(Watermark("s", "old", "high")) is None
    assert window.state is WindowState.READ


def test_a_truncate_between_the_watermarks_drops_every_row():
    window = _window()
    window.watermark(Watermark("s", "t1", "low"))
    window.truncated()
    assert window.watermark(Watermark("s", "t1", "high")) == []


def test_a_high_watermark_before_the_low_one_is_an_error():
    with pytest.raises(ValueError, match="before its low one"):
        _window().watermark(Watermark("s", "t1", "high"))


def test_watermark_content_round_trips_and_foreign_content_is_none():
    mark = Watermark("iggy_slot", "abc", "low")
    assert Watermark.from_content(mark.to_json().encode()) == mark
    assert Watermark.from_content(b"hello") is None
    assert Watermark.from_content(b'{"slot": 1}') is None


def test_a_request_takes_defaults_from_its_lsn_and_names_its_table_as_tables_does():
    request = decode_request(b'{"table": "public.orders"}', 0x1234)
    assert request == BackfillRequest("4660", "orders", None, None, "start", None)
    full = BackfillRequest("r1", 'sales."q3.orders"', "id > 5", 500, "cancel", "iggy_slot")
    assert decode_request(full.to_json().encode(), 1) == full


@pytest.mark.parametrize(("content", "problem"), [
    (b"nope", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"table": "t", "colour": 1}', "unknown field(s) colour"),
    (b'{}', "table: required"),
    (b'{"table": "a.b.c"}', "table: "),
    (b'{"table": "t", "where": "x) OR (y"}', "where: a ')' closes"),
    (b'{"table": "t", "chunk_size": 0}', "chunk_size: a whole number"),
    (b'{"table": "t", "chunk_size": true}', "chunk_size: a whole number"),
    (b'{"table": "t", "action": "stop"}', "action: start or cancel"),
])
def test_a_bad_request_names_its_field(content, problem):
    with pytest.raises(BadRequest, match=None) as caught:
        decode_request(content, 1)
    assert str(caught.value).startswith(problem)
