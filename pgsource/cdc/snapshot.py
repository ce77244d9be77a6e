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

A fourth reads another relation under a table's name: a partition attached to a captured
partitioned table (``pgsource/cdc/identity.py``).

``SnapshotSender`` sends such work (``SnapshotWork``, ``pgsource/cdc/slot_plan.py``) through
the worker's pipeline, and says whether Iggy acknowledged every message of it: only then
may a slot's record say the snapshot is done.

Ids: XXH3-128 of table, the snapshot's generation (the LSN of its first attempt) and the
row's JSON (``pgsource.encode.ids.snapshot_message_id``): a row re-sent unchanged by a
redo keeps its id, a changed row gets a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pgsource.cdc.encoder import ChangeBatch
from pgsource.cdc.slot_plan import SnapshotWork
from pgsource.config.model import Config, TableConfig
from pgsource.encode.ids import snapshot_message_id
from pgsource.pg import connect as pg
from pgsource.pg import replication as rep
from pgsource.pg.positions import estimated_rows
from pgsource.pg.statements import commit
from pgsource.rows.encoder import EncodeSettings
from pgsource.rows.keyset import KeysetReader, ReadSettings

log = logging.getLogger("pgsource.cdc")


@dataclass(frozen=True)
class SnapshotSettings:
    """What reading and encoding a snapshot takes of the configuration."""

    read: ReadSettings
    encode: EncodeSettings
    topics: dict[str, str]  # per table, its topic

    @classmethod
    def of(cls, config: Config, tables: list[TableConfig]) -> SnapshotSettings:
        topics = {table.qualified: config.iggy.topic_for(table) for table in tables}
        return cls(ReadSettings.of(config.source), EncodeSettings.of(config), topics)


@dataclass(frozen=True)
class SnapshotConnections:
    """Opens a CDC worker's other connections: snapshot readers, and the replication connection
    that creates a slot with an exported snapshot. ``ours`` tells the supervisor a reader's
    backend is the worker's (ended with it when it is orphaned)."""

    connection_string: str
    worker: str
    ours: Callable[[object], None] = lambda connection: None

    def reader(self):
        """A connection for a snapshot to be imported into (not in a transaction yet)."""
        return pg.connect(self.connection_string, application_name=f"pgsource-{self.worker}-snapshot", autocommit=False)

    def snapshot_reader(self, exported: str | None = None):
        """A connection in a REPEATABLE READ transaction: in the ``exported`` snapshot, or in its own."""
        reader = self.reader()
        self.ours(reader)
        if exported is not None:
            rep.import_snapshot(reader, exported)
        else:
            rep.begin_repeatable_read(reader)
        return reader

    def replication(self):
        return pg.connect_replication(self.connection_string, application_name=f"pgsource-{self.worker}-snapshot")


class SnapshotSender:
    """Sends snapshot work through the worker's pipeline (the callbacks) and waits for its acks.

    ``send`` hands a batch to the outbox; ``waiting`` keeps the worker alive between batches and
    says whether to stop; ``acknowledged`` waits until every batch sent is acknowledged (False:
    stopped before)."""

    def __init__(self, settings: SnapshotSettings, batch_size: int, connections: SnapshotConnections, *,
                 send: Callable[[ChangeBatch], None], waiting: Callable[[], bool],
                 acknowledged: Callable[[], bool]) -> None:
        self.settings = settings
        self.batch_size = batch_size  # rows per batch (source.batch_size)
        self.connections = connections
        self._send = send
        self._waiting = waiting
        self._acknowledged = acknowledged

    def deliver(self, works: list[SnapshotWork]) -> bool:
        """Each work in turn; False once one was not acknowledged completely (the readers of the
        others are closed: the next start sends them again)."""
        for done, work in enumerate(works):
            if not self._deliver(work, self.batch_size):
                for rest in works[done + 1:]:
                    if rest.reader is not None:
                        rest.reader.close()
                return False
        return True

    def _deliver(self, work: SnapshotWork, batch_size: int) -> bool:
        reader = work.reader if work.reader is not None else self.connections.snapshot_reader()
        try:
            read = send_snapshot(reader, self.settings, batch_size, work.tables, work.generations, self._send,
                                 self._waiting, worker=self.connections.worker, relations=work.relations)
            commit(reader)
        finally:
            reader.close()
        acknowledged = self._acknowledged()
        if not (read and acknowledged):
            log.warning("%s: stopped before every snapshot message of %s was acknowledged", self.connections.worker,
                        ", ".join(t.qualified for t in work.tables))
        return read and acknowledged


def send_snapshot(conn, settings: SnapshotSettings, batch_size: int, tables: list[TableConfig],
                  generations: dict[str, int], send: Callable[[ChangeBatch], None], should_stop: Callable[[], bool],
                  worker: str = "", relations: dict[str, tuple[str, str]] | None = None) -> bool:
    """Read every row of ``tables`` on ``conn`` (already in its snapshot) and ``send`` them in
    batches of ``batch_size``; False when asked to stop before the last row was read.
    ``relations``: per table, another relation to read instead, (schema, name) (a partition
    attached to it: its rows go out as the table's).

    Progress per table: ``pgsource_cdc_snapshot_estimated_rows`` (the planner's estimate, set
    when the table's snapshot starts) and ``pgsource_cdc_snapshot_rows_read_total``."""
    from pgsource.metrics import Metrics

    metrics = Metrics.get()
    readers = [KeysetReader.for_snapshot(conn, table, settings.topics[table.qualified], settings.read, settings.encode)
               for table in tables]
    for table, reader in zip(tables, readers):
        if relations and table.qualified in relations:
            reader.read_from(*relations[table.qualified])
    for table, reader in zip(tables, readers):
        estimate = estimated_rows(conn, table.schema_, table.name)
        if estimate is not None:
            metrics.snapshot_estimate.labels(reader.table_name, worker).set(estimate)
        rows = metrics.snapshot_rows.labels(reader.table_name, worker)
        if not _send_table(reader, generations[table.qualified], batch_size, send, should_stop, rows.inc):
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
