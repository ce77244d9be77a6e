"""Transaction markers and schema watching, without a database: what goes out, and when it is durable."""

from __future__ import annotations

import json

from pgsource.cdc.schema_watch import SchemaWatch
from pgsource.cdc.transaction_markers import TransactionMarkers
from pgsource.encode.ids import cdc_message_id
from pgsource.encode.markers import BEGIN_POSITION, COMMIT_POSITION, encode_schema_change, schema_change_id
from pgsource.state.records import ShapeRecord, TableShape


def test_begin_before_the_first_message_and_commit_with_the_counts():
    sent = []
    add = lambda *message: sent.append(message)  # noqa: E731
    markers = TransactionMarkers("iggy_slot", "transactions")
    markers.start(734, 0x1A2B3C4, "0/1A2B3C4", "2024-01-15T10:30:00.000001Z")
    assert sent == []
    markers.tally("orders", add)[0] += 1
    markers.tally("orders", add)[0] += 1
    markers.tally("sales.items", add)[0] += 1
    markers.finish(add)
    assert [m[0] for m in sent] == ["transactions", "transactions"]
    assert [m[1] for m in sent] == [cdc_message_id(0x1A2B3C4, "iggy_slot", BEGIN_POSITION),
                                    cdc_message_id(0x1A2B3C4, "iggy_slot", COMMIT_POSITION)]
    begin, commit = (json.loads(m[3]) for m in sent)
    assert begin == {"type": "BEGIN", "xid": 734, "commit_lsn": "0/1A2B3C4", "commit_time": "2024-01-15T10:30:00.000001Z"}
    assert commit == {**begin, "type": "COMMIT", "messages": 3, "tables": {"orders": 2, "sales.items": 1}}
    assert sent[1][4] == {"operation": "COMMIT", "xid": "734", "lsn": "0/1A2B3C4"}


def test_a_transaction_without_messages_gets_no_markers():
    sent = []
    markers = TransactionMarkers("s", "transactions")
    markers.start(1, 10, "0/A", "t")
    markers.finish(lambda *m: sent.append(m))
    assert sent == []


def test_a_shape_change_is_announced_once_and_durable_only_past_its_transaction():
    old = (("id", "integer"), ("name", "text"))
    new = (("id", "bigint"), ("name", "text"), ("note", "character varying(20)"))
    watch = SchemaWatch(ShapeRecord((TableShape("orders", old),)))
    assert watch.seen("orders", old, 100) is None
    change = watch.seen("orders", new, 200)
    assert (change.old, change.new) == (old, new)
    assert watch.seen("orders", new, 300) is None  # the same Relation again (another ALTER, same columns)
    assert watch.confirmed(200) is None  # the slot could still replay the transaction at 200
    record = watch.confirmed(201)
    assert record.get("orders").columns == new
    assert SchemaWatch(record).seen("orders", new, 400) is None  # after a restart: nothing new


def test_the_first_shape_of_a_table_is_the_baseline_not_a_change():
    watch = SchemaWatch(None)
    assert watch.seen("orders", (("id", "integer"),), 5) is None
    assert watch.confirmed(6).get("orders").columns == (("id", "integer"),)


def test_a_schema_change_message_is_an_envelope_with_the_columns_before_and_after():
    body = json.loads(encode_schema_change("orders", "2024-01-15T10:30:00Z", (("id", "integer"),), (("id", "bigint"),)))
    assert body == {"table_name": "orders", "operation_type": "SCHEMA_CHANGE", "timestamp": "2024-01-15T10:30:00Z",
                    "data": {"columns": [{"name": "id", "type": "bigint"}]},
                    "old_data": {"columns": [{"name": "id", "type": "integer"}]}}
    columns = (("id", "bigint"),)
    assert schema_change_id("orders", 7, columns) == schema_change_id("orders", 7, columns)
    assert len({schema_change_id("orders", 7, columns), schema_change_id("orders", 8, columns),
                schema_change_id("orders", 7, columns, partition=1)}) == 3
