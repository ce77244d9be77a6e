"""``CdcWorker``: one process, one publication, one slot; changes into Iggy, nothing lost.

Batches go to the publisher through the outbox (``pgsource/pipeline/outbox.py``); what the
slot is confirmed up to is decided by the ``SlotCommitter`` (``pgsource/cdc/committer.py``):
one ``ProgressTracker`` per worker, for the snapshot and both transports, in which every
batch is ``sent``, the end LSN of every transaction read completely is ``mark``ed after
the batches holding its changes, and acks come back as ``acked``. The slot is only ever
confirmed up to ``committable()``: the end of a transaction whose every message, and
every message before it, Iggy acknowledged.

Two transports share the pgoutput decoder and ``ChangeEncoder``:

- ``sql``: ``pg_logical_slot_peek_binary_changes`` read as a binary COPY in chunks (bounded
  memory for a transaction of any size); after Iggy acknowledged the peek's messages,
  ``pg_replication_slot_advance`` to the committable position. Each peek is bounded by the
  WAL flush position read just before it; when it returns fewer changes than asked, that
  position is marked, so idle tables do not make the slot retain WAL.
- ``replication`` (default): the streaming protocol, read with psycopg2 and confirmed with
  pgsource's own status updates (``pgsource/pg/replication_stream.py`` says why psycopg2's
  must never carry a flush position), at least every second.

Never ``pg_logical_slot_get_changes``: it consumes changes before they are delivered.

Boot prepares the slot (``SlotLifecycle.prepare``, ``pgsource/cdc/slot_lifecycle.py``): a missing
slot is created only on the first start (``pgsource/cdc/slot_history.py``); the plan's snapshots
(the initial one, those of tables that join an existing slot) go out through the outbox and
must be acknowledged completely before the slot's record says so (``SlotLifecycle.finish``)
and streaming begins; an interrupted one is done again at the next start. While streaming,
``TableWatch`` (``pgsource/cdc/identity.py``) follows the tables by OID. The slot's record has
one owner, ``SlotRecords`` (``pgsource/cdc/slot_record.py``).
"""

from __future__ import annotations

import logging
import time
from functools import partial

from pgsource.cdc.backfill_driver import BackfillDriving
from pgsource.cdc.committer import SlotCommitter, SqlSlotConfirmer, StreamSlotConfirmer
from pgsource.cdc.encoder import ChangeBatch, ChangeEncoder, tables_of
from pgsource.cdc.flush_policy import FlushPolicy
from pgsource.cdc.identity import TableWatch
from pgsource.cdc.schema_watch import SchemaWatch
from pgsource.cdc.slot_lifecycle import SlotLifecycle
from pgsource.cdc.slot_plan import SlotNames, SlotSettings
from pgsource.cdc.slot_record import SlotRecords
from pgsource.cdc.snapshot import SnapshotConnections, SnapshotSender, SnapshotSettings
from pgsource.errors import PgSourceError, PrerequisiteError
from pgsource.pg import connect as pg
from pgsource.pg import replication as rep
from pgsource.pg.catalog import describe_table
from pgsource.pg.peek import COPY_CHUNK, BinaryCopyRows, build_peek_copy, copy_out, peek_limit
from pgsource.pg.replication_stream import ReplicationStream
from pgsource.pg.statements import commit, rollback, set_autocommit
from pgsource.pg.types import load_table_types, load_type_catalog, load_type_names
from pgsource.pipeline.block import BlockHead, encode_message_block
from pgsource.state import FileStateStore, ShapeRecord, shapes_key
from workers.base import SourceWorker, WorkerSpec

log = logging.getLogger("pgsource.cdc")

IDLE_PAUSE = 0.005  # seconds between peeks that found nothing (latency vs. load)
BURST = 256  # messages read from the stream between two turns of the loop (its liveness, stop and table checks)


class CdcWorker(BackfillDriving, SourceWorker):
    """Streams one slot; see the module docstring for when the slot is confirmed."""

    def __init__(self, spec: WorkerSpec, channel, ack_queue, status_queue, stop_event) -> None:
        super().__init__(spec, channel, ack_queue, status_queue, stop_event)
        self._tick = _nothing  # run in every wait: the streaming transport's feedback
        self._last_seq = 0  # the last batch sent (a backfill chunk with no row left counts as done after it)
        self._unfinished = False  # a snapshot is not acknowledged completely: do not stream
        self.encoder: ChangeEncoder | None = None  # made once the slot is ready (snapshots are sent before)

    # -- boot ------------------------------------------------------------------------------

    def boot(self) -> None:
        config = self.spec.config
        units = self.spec.units
        self.slot, self.publication = units[0].slot, units[0].publication
        self.tables = [unit.table for unit in units]
        self.store = FileStateStore(config.state.dir)
        self.conn = pg.connect(config.source.connection_string, application_name=f"pgsource-{self.spec.name}")
        self.spec.backends(self.conn)
        self.records = SlotRecords(self.store, self.slot)  # the slot's record: its one owner
        self.committer = SlotCommitter(self.records, counter=self.metrics.offset_commits.labels(self.name),
                                       confirmed_gauge=self.metrics.confirmed_lsn.labels(self.name),
                                       progressed=self.spec.progressed)
        self.outbox = self.open_outbox(self.committer)
        self._copying = False
        self.infos = {table.qualified: describe_table(self.conn, table.schema_, table.name) for table in self.tables}
        self._check_tables()
        names = SlotNames(self.name, self.slot, self.publication)
        oids = {name: info.oid for name, info in self.infos.items()}
        connections = SnapshotConnections(config.source.connection_string, self.name, ours=self.spec.backends)
        snapshots = self._snapshot_sender(connections, config.source.batch_size)
        self.table_watch = TableWatch(self.conn, names, self.tables, oids, self.records, snapshots, self.spec.statement)
        trees = self.table_watch.partition_trees()  # before any snapshot: see pgsource/cdc/identity.py
        lifecycle = SlotLifecycle(self.conn, names, self.tables, oids, self.records, SlotSettings.of(config.source),
                                  connections, pause=self._pause)
        plan = lifecycle.prepare()
        self.committer.start(plan.start_lsn)
        if not snapshots.deliver(plan.snapshots):
            self._unfinished = True
            return
        lifecycle.finish(plan)
        self.encoder = self._change_encoder(plan.starts(self.tables))
        self._start_backfills()
        if not self.table_watch.settle(trees):
            self._unfinished = True

    def _snapshot_sender(self, connections: SnapshotConnections, batch_size: int) -> SnapshotSender:
        """Snapshots go out through this worker's outbox, ``batch_size`` rows to a batch."""
        return SnapshotSender(SnapshotSettings.of(self.spec.config, self.tables), batch_size, connections,
                              send=self._send, waiting=self._waiting, acknowledged=self._all_acknowledged)

    def _change_encoder(self, starts: dict[tuple[str, str], int]) -> ChangeEncoder:
        """The encoder of the slot's changes; ``starts``: per joined table, its cut."""
        infos = self.infos
        keys = {(info.schema, info.name): info.identity for info in infos.values()}
        oids = {infos[table.qualified].oid: table for table in self.tables}  # captured by oid, not by name
        key = shapes_key(self.slot)  # shapes the slot is confirmed past: the baseline a restart compares with
        self.shapes = SchemaWatch(self.store.load(key, ShapeRecord), commit=partial(self.store.commit, key))
        self.committer.on_confirmed = self.shapes.confirmed
        encoder = ChangeEncoder(self.spec.config, self.slot, self._load_types, keys=keys, starts=starts, oids=oids,
                                shapes=self.shapes, load_type_names=self._load_type_names)
        encoder.types.update(load_table_types(self.conn, [(table.schema_, table.name) for table in self.tables]))
        return encoder

    def _check_tables(self) -> None:
        from pgsource.ops.checks import cdc_table_problems

        problems = cdc_table_problems(self.conn, self.spec.config)
        if problems:
            raise PrerequisiteError("; ".join(problems))

    def _load_types(self, oids: list[int]) -> dict:
        if self._copying:  # no other query while the peek's COPY runs: see _peek
            raise _TypesNeeded(oids)
        return load_type_catalog(self.conn, oids)

    def _load_type_names(self, pairs: list[tuple[int, int]]) -> dict:
        if self._copying:
            raise _TypesNeeded([], pairs)
        return load_type_names(self.conn, pairs)

    def serve(self) -> None:
        if self._unfinished:
            log.warning("%s: a snapshot was not acknowledged completely; the next start goes on with it", self.spec.name)
            return
        source = self.config.source
        if source.cdc_transport == "replication":
            self._stream_replication(source.batch_size)
        else:
            self._stream_sql(source.batch_size, source.max_in_flight_batches)

    def close(self) -> None:
        self.conn.close()

    # -- the SQL transport -----------------------------------------------------------------

    def _stream_sql(self, batch_size: int, max_in_flight: int) -> None:
        """Peek after peek; ``batch_size`` changes to a batch."""
        limit = peek_limit(batch_size, max_in_flight)
        committer = self.committer
        committer.confirmer = SqlSlotConfirmer(self.conn, self.slot, self.spec.statement)
        while not self._should_stop():
            self.notify()
            self._watch_tables()
            self._backfill_step(force=True)  # between peeks: the connection is free
            upto = rep.current_flush_lsn(self.conn)
            rows = self._peek(upto, limit, batch_size)
            if self.outbox.in_flight:
                break  # stopping before every message of the peek was acknowledged: the next start re-reads it
            if rows < limit and not self.encoder.in_transaction:
                committer.mark(upto)  # the peek read everything before upto
            committer.commit_acknowledged()
            if rows == 0:
                self.stop_event.wait(IDLE_PAUSE)
        committer.commit_acknowledged(force=True)

    def _peek(self, upto: int, limit: int, batch_size: int) -> int:
        """Queue every change of one peek; wait for all acks. Returns the rows (messages) read.

        The peek is read as a binary COPY in chunks (``pgsource/pg/peek.py``): memory stays
        bounded by one chunk, the unfinished message at its end, and one batch.
        """
        query, params = rep.build_peek(self.slot, self.publication, upto, limit)
        statement = build_peek_copy(self.conn, query, params)
        self._peek_batch = ChangeBatch()
        self._peek_fed = self._peek_skip = 0
        feed = partial(self._feed_peek, batch_size=batch_size)
        rows = BinaryCopyRows(feed, needs_text=self.encoder.needs_text, where=self.spec.name)
        set_autocommit(self.conn, False)
        try:
            while True:
                try:
                    self._copying = True
                    with self.spec.statement(f"peeking slot {self.slot}"):
                        copy_out(self.conn, statement, rows, COPY_CHUNK)
                    break
                except _TypesNeeded as need:
                    # A Relation with a type unknown since boot (a column added meanwhile): end
                    # the COPY, load the types, and peek again, skipping what was fed already
                    # (the same peek of the unadvanced slot gives the same messages).
                    self._copying = False
                    rollback(self.conn)
                    self.encoder.types.update(load_type_catalog(self.conn, need.oids))
                    self.encoder.type_names.update(load_type_names(self.conn, need.names))
                    self._peek_skip = self._peek_fed  # every message fed since the peek began, all attempts
                    rows = BinaryCopyRows(feed, needs_text=self.encoder.needs_text, where=self.spec.name)
                finally:
                    self._copying = False
            commit(self.conn)
        except pg.DatabaseError as exc:
            rollback(self.conn)
            if isinstance(exc, (pg.OperationalError, pg.InterfaceError)):
                raise
            raise PgSourceError(f"{self.spec.name}: reading slot {self.slot} failed: {str(exc).strip()}") from None
        except BaseException:
            rollback(self.conn)
            raise
        finally:
            set_autocommit(self.conn, True)
        rows.finish()
        self._send(self._peek_batch)
        self._wait_for_acks(deadline=None)
        return rows.rows

    def _feed_peek(self, buf: bytes, text: str | None, spans: list, batch_size: int) -> None:
        """One chunk of the peek's messages into batches; a full batch is sent at once."""
        feed = self.encoder.feed_buffer
        batch = self._peek_batch
        fed = 0
        try:
            for start, end in spans:
                if self._peek_skip:  # fed by the interrupted COPY of this same peek
                    self._peek_skip -= 1
                    continue
                feed(buf, text, start, end, batch)
                fed += 1
                if batch.count >= batch_size:
                    self._send(batch)
                    batch = self._peek_batch = ChangeBatch()
        finally:
            self._peek_fed += fed
        self.notify()
        self.outbox.take_acks()

    # -- the streaming transport -----------------------------------------------------------

    def _stream_replication(self, batch_size: int) -> None:
        """Read the stream, ``batch_size`` changes to a batch at most (a partial one goes as ``FlushPolicy`` says)."""
        source = self.config.source
        timeout = rep.wal_sender_timeout(self.conn)
        self.stream = stream = ReplicationStream(
            source.connection_string, self.slot, self.publication,
            application_name=f"pgsource-{self.spec.name}-wal",
            feedback_interval=min(1.0, max(0.1, timeout / 4)) if timeout > 0 else 1.0,
        )
        self.spec.backends(stream.connection)
        committer = self.committer
        committer.confirmer = StreamSlotConfirmer(stream)
        self._tick = committer.commit_acknowledged
        read = stream.read_message
        encoder = self.encoder
        self._batch = ChangeBatch()
        flush = FlushPolicy(time.monotonic())
        try:
            while not self._should_stop():
                self.notify()
                self._watch_tables(self._flush_batch)
                message = read()
                if message is not None:
                    self._read_burst(message, read, batch_size, flush)
                    self._backfill_step()
                    continue
                self.outbox.take_acks()
                due, linger = flush.due(time.monotonic(), self._batch.count, self.outbox.in_flight)
                if due:  # the socket is drained (pgsource/cdc/flush_policy.py)
                    self._flush_batch()
                batch = self._batch
                if self._chunk_outs and not batch.count:  # chunks with no row left to send
                    self._send(batch)
                self._backfill_step()
                if not encoder.in_transaction and not batch.count and batch.last_commit_end is None:
                    committer.mark(stream.wal_end)  # nothing half-read, nothing unsent: the server's position
                committer.commit_acknowledged()
                stream.wait(min(0.005, linger) if linger > 0 else 0.005)
            self._flush_batch()
            self._wait_for_acks(deadline=time.monotonic() + self.config.supervisor.stop_timeout)
            committer.commit_acknowledged(force=True)
        finally:
            self._tick = _nothing
            stream.close()

    def _read_burst(self, message, read, batch_size: int, flush: FlushPolicy) -> None:
        """``message`` and up to BURST - 1 more already buffered, with no loop checks between them
        (each is time-gated, but the calls alone were ~1 µs of ~5 per change); a full batch is sent."""
        feed, text = self.encoder.feed_buffer, self.encoder.needs_text
        for left in range(BURST - 1, -1, -1):
            batch = self._batch
            if not batch.count:
                flush.started = time.monotonic()
            payload = message.payload
            feed(payload, payload.decode("latin-1") if text else None, 0, len(payload), batch)
            flush.messages += 1
            if batch.count >= batch_size:  # a large transaction streams out in batches
                self._flush_batch()
                self.committer.commit_acknowledged()
                return
            if not left or (message := read()) is None:  # the message in hand is always fed first
                return

    def _flush_batch(self) -> None:
        batch = self._batch
        if batch.count or batch.last_commit_end is not None:
            self._send(batch)
            self._batch = ChangeBatch()

    # -- sending and acks ------------------------------------------------------------------

    def _send(self, batch: ChangeBatch) -> None:
        """Send the batch's messages (one block per topic), then mark the last transaction it completes."""
        # a batch cut from a transaction larger than batch_size holds no Commit: its transaction's time
        commit_time = batch.commit_time or (self.encoder.transaction_commit_time if self.encoder else 0.0)
        for topic, messages in batch.topic_messages.items():
            if not messages.ids:
                continue
            tables = tables_of(messages.payloads, messages.headers, messages.ids)  # the metrics' label: the table
            head = BlockHead(self.name, self.config.iggy.stream, topic, next(iter(tables)), commit_time,
                             tables if len(tables) > 1 else None)
            seq = self.outbox.send(encode_message_block(head, messages, where=f"topic {topic}"), self._waiting_for_room)
            if seq is None:  # orphaned: no publisher will take it, the next start re-reads it
                raise SystemExit(1)
            self.committer.sent(seq)
            self._last_seq = seq
            for table, (count, _) in tables.items():
                if table:  # "": the transaction topic's markers
                    self.metrics.rows_read.labels(table, self.name).inc(count)
        if self.encoder is not None:
            self._chunks_sent(self._last_seq, acknowledged=not self.outbox.in_flight)
        if batch.last_commit_end is not None:
            self.committer.mark(batch.last_commit_end)

    def _waiting(self) -> bool:
        """While waiting (a full channel, acks, a snapshot's reads): keep confirming, and say whether to stop."""
        self._tick()
        return super()._waiting()

    def _waiting_for_room(self) -> bool:
        """A CDC batch is sent whatever happens, unless the supervisor is gone: acks are taken meanwhile."""
        self._waiting()
        self.outbox.take_acks()
        return self.orphaned

    def _wait_for_acks(self, deadline: float | None) -> None:
        """Until every batch sent is acknowledged; once stopping, at most ``stop_timeout`` more."""
        self.outbox.wait_for_acks(deadline, waiting=self._waiting_or_orphaned)

    def _waiting_or_orphaned(self) -> bool:
        stop = self._waiting()
        if self.orphaned:
            raise SystemExit(1)
        return stop

    def _all_acknowledged(self) -> bool:
        """Wait until Iggy acknowledged every batch sent (a snapshot's); False: stopped before."""
        self._wait_for_acks(deadline=None)
        return self.outbox.in_flight == 0

    def _pause(self, seconds: float) -> None:
        """The slot's preparation waits (for a join's writers or lock): alive meanwhile; a stop ends
        the process (the next start goes on)."""
        if self._waiting():
            raise SystemExit(0)
        self.stop_event.wait(seconds)

    def _watch_tables(self, before_snapshot=None) -> None:
        """Between reads: the tables still the relations captured (``TableWatch.look``)."""
        self.table_watch.look(self.committer.confirmed_lsn, before_snapshot)


def _nothing() -> None:
    return None


class _TypesNeeded(Exception):
    def __init__(self, oids: list[int], names: list[tuple[int, int]] = ()) -> None:
        super().__init__(oids)
        self.oids = oids
        self.names = list(names)


def run_cdc_worker(spec: WorkerSpec, channel, ack_queue, status_queue, stop_event) -> None:
    """Process target (module-level so the spawn start method can import it)."""
    CdcWorker(spec, channel, ack_queue, status_queue, stop_event).run()
