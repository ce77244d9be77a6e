"""Polling's schema-change events: a table's columns against the shape consumers were last told of.

A read checks the table's definition after every statement (``KeysetReader``): a change stops
the table's reader before the rows read with the old plan are sent, and the table is opened
again with its new columns. Opening it compares the columns its messages carry
(``KeysetReader.shape``) with the shape recorded in ``state.dir`` (``polling-shapes/<table>``):
the first one is recorded as the baseline; another one is announced, with the same
``SCHEMA_CHANGE`` message CDC sends (``pgsource/encode/markers.py``), before any row of the new
shape, and recorded once Iggy acknowledged it (a crash before sends it again, same id: its
generation, the count of changes recorded, only moves once it is acknowledged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from pgsource.config.model import Config, Partitioning
from pgsource.encode.batch import MessageBatch, new_message_batch
from pgsource.encode.ids import key_partition
from pgsource.encode.markers import SCHEMA_CHANGE, encode_schema_change, schema_change_id
from pgsource.pipeline.block import encode_message_block
from pgsource.state import FileStateStore, ShapeRecord, TableShape, shapes_key

log = logging.getLogger("pgsource.polling")


@dataclass(frozen=True)
class ShapeAnnouncement:
    messages: MessageBatch  # one per partition the table's rows may go to
    key: str  # where the new shape is recorded once they are acknowledged
    record: ShapeRecord


def announce_shape(config: Config, store: FileStateStore, reference: str, table_name: str,
                   shape: tuple[tuple[str, str], ...]) -> ShapeAnnouncement | None:
    """The announcement to send before the table's rows, or None (same shape; a first shape is
    recorded at once as the baseline)."""
    if not config.source.schema_change_events:
        return None
    key = shapes_key(table=reference)
    record = store.load(key, ShapeRecord) or ShapeRecord()
    old = record.get(reference)
    if old is None:
        store.commit(key, record.with_shape(TableShape(reference, shape, 0)))
        return None
    if old.columns == shape:
        return None
    generation = old.generation + 1
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    payload = encode_schema_change(table_name, now, old.columns, shape)
    partitions = config.iggy.partitions
    if partitions == 1 or config.iggy.partitioning is Partitioning.TABLE:
        targets = [key_partition(table_name, partitions)]
    else:
        targets = list(range(partitions))
    messages = new_message_batch()
    headers = {"table": table_name, "operation": SCHEMA_CHANGE}
    for partition in targets:
        messages.ids.append(schema_change_id(table_name, generation, shape, partition))
        messages.partitions.append(partition)
        messages.payloads.append(payload)
        messages.headers.append(headers)
    return ShapeAnnouncement(messages, key, record.with_shape(TableShape(reference, shape, generation)))


def send_changed_shapes(config: Config, store: FileStateStore, units, works, outbox, worker: str) -> None:
    """A table whose columns changed since consumers were told: the SCHEMA_CHANGE goes out, and is
    acknowledged, before its first row; then the shape is recorded (the poll worker, before it reads)."""
    for unit, work in zip(units, works):
        reader = unit.reader
        if reader.plan is None or reader.plan.payload is not None or work.chunk > 0:
            continue  # custom_query, payload_column: no columns to announce; a table's chunks: the first
        found = announce_shape(config, store, work.table.qualified, reader.table_name, reader.shape)
        if found is None:
            continue
        if outbox.send(encode_message_block(unit.head, found.messages, where=f"table {unit.head.table}")) is None:
            return  # stopping while the channel is full
        if not outbox.wait_for_acks():
            return  # stopped before Iggy acknowledged it: the next start sends it again
        store.commit(found.key, found.record)
        log.info("%s: %s: its columns changed; SCHEMA_CHANGE sent before its rows", worker, reader.table_name)
