"""``BackfillRunner`` without a database: requests, chunks between watermarks, progress on acks."""

from __future__ import annotations

from pgsource.cdc.backfill import BackfillRunner
from pgsource.cdc.backfill_request import BackfillRequest
from pgsource.cdc.watermarks import Watermark
from pgsource.state.records import BackfillPhase


def _runner(**kw) -> BackfillRunner:
    return BackfillRunner("iggy_slot", {"orders", "items"}, None, 2, clock=lambda: 100.0, **kw)


def _mark(token: str, mark: str) -> bytes:
    return Watermark("iggy_slot", token, mark).to_json().encode()


def _request(**fields) -> bytes:
    return BackfillRequest(**{"id": "r1", "table": "orders", **fields}).to_json().encode()


def test_a_backfill_reads_chunk_after_chunk_and_records_what_iggy_acknowledged():
    runner = _runner()
    assert runner.request(_request(), 500) == "backfill r1 of orders started (chunks of 2 rows)"
    backfill, after = runner.due()
    assert (backfill.id, backfill.generation, after) == ("r1", 500, None)
    runner.opened(backfill, "t1", {("1",): "row1", ("2",): "row2"}, read=2)
    assert runner.due() is None and runner.watched == {"orders"}
    assert runner.watermark(_mark("t1", "low")) is None
    runner.changed("orders", ("2",))
    out = runner.watermark(_mark("t1", "high"))
    assert (out.rows, out.last_key, out.finished) == (["row1"], ("2",), False)
    runner.sent(out, seq=7, rows=1)
    backfill, after = runner.due()
    assert after == ("2",)  # read on while chunk 1 waits for its ack
    runner.opened(backfill, "t2", {("3",): "row3"}, read=1)
    runner.watermark(_mark("t2", "low"))
    last = runner.watermark(_mark("t2", "high"))
    assert last.finished and runner.due() is None
    runner.sent(last, seq=8, rows=1)
    assert runner.acked_through(6) is None
    record = runner.acked_through(7)
    assert record.running[0].last_key == ("2",) and record.running[0].rows == 1
    record = runner.acked_through(8)
    assert record.running == [] and record.backfills[0].phase is BackfillPhase.DONE and record.backfills[0].rows == 2


def test_a_replayed_request_is_not_started_twice_and_a_restart_reads_after_the_acknowledged_key():
    runner = _runner()
    runner.request(_request(), 500)
    backfill, _ = runner.due()
    runner.opened(backfill, "t1", {("1",): "a", ("2",): "b"}, read=2)
    runner.watermark(_mark("t1", "low"))
    runner.sent(runner.watermark(_mark("t1", "high")), seq=3, rows=2)
    record = runner.acked_through(3)
    again = BackfillRunner("iggy_slot", {"orders"}, record, 2)
    assert again.request(_request(), 500) is None
    backfill, after = again.due()
    assert (backfill.id, after) == ("r1", ("2",))
    assert again.watermark(_mark("t1", "high")) is None  # the old attempt's watermark, replayed


def test_requests_for_other_slots_or_tables_are_not_ours_and_bad_ones_are_said():
    runner = _runner()
    assert runner.request(_request(slot="other_slot"), 1) is None
    assert runner.request(_request(table="elsewhere"), 1) is None
    assert runner.request(b'{"table": 5}', 0x10) == "backfill request at lsn 10 ignored: table: required, a table name as in source.tables"
    assert runner.due() is None


def test_a_cancel_drops_the_open_chunk_and_stops_the_backfill():
    runner = _runner()
    runner.request(_request(), 500)
    backfill, _ = runner.due()
    runner.opened(backfill, "t1", {("1",): "a"}, read=1)
    assert runner.request(_request(id="c1", action="cancel"), 600) == "backfill of orders cancelled"
    assert runner.watermark(_mark("t1", "low")) is None and runner.watermark(_mark("t1", "high")) is None
    assert runner.due() is None and runner.record.backfills[0].phase is BackfillPhase.CANCELLED
