"""Snapshots of CDC tables: the rows a table holds at a cut, sent as ``operation_type: SELECT``.

Three cases, one reader (``send_snapshot``: ``KeysetReader``, the same keyset reading and
encoding as polling, on a connection the caller opened in the right snapshot):

- the initial snapshot (``snapshot: initial``, or ``on_missing_slot: snapshot``): the slot
  is created with ``EXPORT_SNAPSHOT`` and the rows are read in that snapshot, so they are
  exactly the state at the slot's consistent point, and streaming starts there;
- a table that joins a slot already streaming: read in the snapshot of its cut
  (``pgsource/pg/publications.py``);
- a redo, when a snapshot was interrupted before every message was acknowledged (the
  slot's record then still says so, and nothing was streamed): the slot is kept where it
  stands (at the cut), the rows are read again in a new snapshot, then the stream replays
  the changes since the cut. A row deleted meanwhile gets its DELETE (a redo in a new slot
  would leave it behind at the consumer), a row changed meanwhile is sent in its new
  version and then its changes arrive: consumers converge on the table's state.

Ids: XXH3-128 of table, the snapshot's generation (the LSN of its first attempt) and the
row's JSON (``pgsource.encode.ids.snapshot_message_id``): a row re-sent unchanged by a
redo keeps its id, a changed row gets a new one.
"""

from __future__ import annotations

from collections.abc import Callable

from pgsource.cdc.encoder import ChangeBatch
from pgsource.config.model import Config, TableConfig
from pgsource.encode.ids import snapshot_message_id
from pgsource.pg.positions import estimated_rows
from pgsource.rows.encoder import EncodeSettings
from pgsource.rows.keyset import KeysetReader, ReadSettings


def send_snapshot(conn, config: Config, tables: list[TableConfig], generations: dict[str, int],
                  send: Callable[[ChangeBatch], None], should_stop: Callable[[], bool], worker: str = "",
                  relations: dict[str, tuple[str, str]] | None = None) -> bool:
    """Read every row of ``tables`` on ``conn`` (already in its snapshot) and ``send`` them in
    batches; False when asked to stop before the last row was read. ``relations``: per table,
    another relation to read instead, (schema, name) (a partition attached to it: its rows go
    out as the table's).

    Progress per table: ``pgsource_cdc_snapshot_estimated_rows`` (the planner's estimate, set
    when the table's snapshot starts) and ``pgsource_cdc_snapshot_rows_read_total``."""
    from pgsource.metrics import Metrics

    metrics = Metrics.get()
    read, encode = ReadSettings.of(config.source), EncodeSettings.of(config)
    readers = [KeysetReader.for_snapshot(conn, table, config.iggy.topic_for(table), read, encode) for table in tables]
    for table, reader in zip(tables, readers):
        if relations and table.qualified in relations:
            reader.read_from(*relations[table.qualified])
    for table, reader in zip(tables, readers):
        estimate = estimated_rows(conn, table.schema_, table.name)
        if estimate is not None:
            metrics.snapshot_estimate.labels(reader.table_name, worker).set(estimate)
        rows = metrics.snapshot_rows.labels(reader.table_name, worker)
        if not _send_table(reader, generations[table.qualified], config.source.batch_size, send, should_stop, rows.inc):
            return False
    return True


def _send_table(reader: KeysetReader, generation: int, batch_size: int,
                send: Callable[[ChangeBatch], None], should_stop: Callable[[], bool],
                counted: Callable[[int], None]) -> bool:
    headers = {"table": reader.table_name, "operation": "SELECT"}  # one dict: encoded once per batch
    offset = None
    rows = 0
    while not should_stop():
        batch_rows = reader.fetch_batch(offset, batch_size)
        if not batch_rows:
            return True
        encoded = reader.encoder.encode_batch(batch_rows, rows)
        batch = ChangeBatch()
        for row, partition, payload in zip(batch_rows, encoded.messages.partitions, encoded.messages.payloads):
            message_id = snapshot_message_id(reader.table_name, generation, row[-1])
            batch.add(reader.topic, message_id, partition, payload.encode(), headers)  # CDC batches carry bytes
        send(batch)
        counted(len(batch_rows))
        offset = reader.offset_after(batch_rows, rows)
        rows = offset.rows
    return False
