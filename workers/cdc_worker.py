"""``CdcWorker``: one process, one publication, one slot; changes into Iggy, nothing lost.

Progress is one ``ProgressTracker`` (``pgsource/pipeline/progress.py``) per worker, for the
snapshot and both transports: every batch on the queue is ``sent`` (no position of its
own), the end LSN of every transaction read completely is ``mark``ed after the batches
holding its changes, and acks come back as ``acked``. The slot is only ever confirmed up
to ``committable()``: the end of a transaction whose every message, and every message
before it, Iggy acknowledged. Idle periods move the slot too, through the same tracker:
the server's WAL end is ``mark``ed only when no transaction is half-read and nothing read
is left unsent, so it counts only once everything before it was acknowledged.

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

Boot prepares the slot (``_prepare_slot``, ``pgsource/cdc/slot_lifecycle.py``): a missing slot is created only on the first
start (``pgsource/cdc/slot_history.py``); the initial snapshot and the snapshots of tables that join
an existing slot (``pgsource/pg/publications.py``, ``pgsource/cdc/snapshot.py``) must be
acknowledged completely before the slot's record says so and streaming begins; an
interrupted one is done again at the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from pgsource.cdc.encoder import ChangeBatch, ChangeEncoder, tables_of
from pgsource.cdc.identity import TableWatch
from pgsource.cdc.schema_watch import SchemaWatch
from pgsource.cdc.slot_lifecycle import SlotPreparation
from pgsource.errors import PgSourceError, PrerequisiteError
from pgsource.pg import connect as pg
from pgsource.pg import replication as rep
from pgsource.pg.catalog import describe_table
from pgsource.pg.peek import BinaryCopyRows, build_peek_copy, copy_out
from pgsource.pg.replication_stream import ReplicationStream
from pgsource.pg.statements import commit, rollback, set_autocommit
from pgsource.pg.types import load_table_types, load_type_catalog, load_type_names
from pgsource.pipeline.channel import Empty, get_event, put_event
from pgsource.pipeline.events import encode_batch_event
from pgsource.pipeline.progress import ProgressTracker
from pgsource.state import FileStateStore, ShapeRecord, shapes_key
from workers.base import QueueWorker, WorkerSpec

log = logging.getLogger("pgsource.cdc")

COPY_CHUNK = 1 << 20  # bytes of the peek's COPY output handed over at a time
PEEK_CHANGES = 200_000  # changes per peek at least: each peek decodes again from the slot's restart LSN
IDLE_PAUSE = 0.005  # seconds between peeks that found nothing (latency vs. load)
# The streaming transport drains the socket faster than the walsender fills it, so "send what
# we have whenever the socket is empty" made batches of a few dozen changes, and every batch
# costs the publisher and Iggy a fixed ~0.2 ms. A partial batch waits this long for more.
LINGER = 0.005
REMEMBER_EVERY = 10.0  # seconds between copies of the confirmed LSN into the slot's record


class CdcWorker(SlotPreparation, TableWatch, QueueWorker):
    """Streams one slot; see the module docstring for when the slot is confirmed."""

    def __init__(self, spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
        super().__init__(spec, batch_queue, ack_queue, status_queue, stop_event)
        self.progress: ProgressTracker[int] = ProgressTracker(0, order=int)
        self._recorded_lsn = 0  # the newest position recorded in ``progress``
        self._confirmed_lsn = 0  # the newest position confirmed to the slot
        self._tick = _nothing  # run in every wait: the streaming transport's feedback
        self._unfinished = False  # a snapshot is not acknowledged completely: do not stream
        self._remembered_at = time.monotonic()
        self.encoder: ChangeEncoder | None = None  # made once the slot is ready (snapshots are sent before)

    # -- boot ------------------------------------------------------------------------------

    def boot(self) -> None:
        config = self.spec.config
        units = self.spec.units
        self.slot, self.publication = units[0].slot, units[0].publication
        self.tables = [unit.table for unit in units]
        self.store = FileStateStore(config.state.dir)
        self.key = f"cdc/{self.slot}"
        self.conn = pg.connect(config.source.connection_string, application_name=f"pgsource-{self.spec.name}")
        self.spec.backends(self.conn)
        self._copying = False
        self.identity = rep.system_identity(self.conn)
        self.infos = infos = {table.qualified: describe_table(self.conn, table.schema_, table.name) for table in self.tables}
        self._check_tables()
        trees = self._partition_trees()  # before any snapshot: see pgsource/cdc/identity.py
        record = self._prepare_slot()
        if record is None:
            self._unfinished = True
            return
        self.record = record = self._identify(record)
        by_name = {table.qualified: (table.schema_, table.name) for table in self.tables}
        starts = {by_name[join.table]: join.start_lsn for join in record.joins if join.table in by_name}
        keys = {(info.schema, info.name): info.identity for info in infos.values()}
        oids = {infos[table.qualified].oid: table for table in self.tables}  # captured by oid, not by name
        self.shapes_key = shapes_key(self.slot)
        self.shapes = SchemaWatch(self.store.load(self.shapes_key, ShapeRecord))
        self.encoder = ChangeEncoder(config, self.slot, self._load_types, keys=keys, starts=starts, oids=oids,
                                     shapes=self.shapes, load_type_names=self._load_type_names)
        self.encoder.types.update(load_table_types(self.conn, list(by_name.values())))
        if self._settle_partitions(record, trees) is None:
            self._unfinished = True

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

    def _shapes_confirmed(self) -> None:
        """Shapes the slot is confirmed past become the baseline a restart compares with."""
        record = self.shapes.confirmed(self._confirmed_lsn) if self.encoder is not None else None
        if record is not None:
            self.store.commit(self.shapes_key, record)

    def serve(self) -> None:
        if self._unfinished:
            log.warning("%s: a snapshot was not acknowledged completely; the next start goes on with it", self.spec.name)
            return
        if self.spec.config.source.cdc_transport == "replication":
            self._stream_replication()
        else:
            self._stream_sql()

    def close(self) -> None:
        self.conn.close()

    # -- the SQL transport -----------------------------------------------------------------

    def _stream_sql(self) -> None:
        source = self.spec.config.source
        limit = max(source.batch_size * source.max_in_flight_batches, PEEK_CHANGES)
        while not self._should_stop():
            self.notify()
            self._watch_tables()
            upto = rep.current_flush_lsn(self.conn)
            rows = self._peek(upto, limit)
            if self.progress.in_flight:
                break  # stopping before every message of the peek was acknowledged: the next start re-reads it
            if rows < limit and not self.encoder.in_transaction and upto > self._recorded_lsn:
                self.progress.mark(upto)  # the peek read everything before upto
                self._recorded_lsn = upto
            self._confirm_sql()
            if rows == 0:
                self.stop_event.wait(IDLE_PAUSE)
        self._confirm_sql()
        self._remember(force=True)

    def _confirm_sql(self) -> None:
        target = self.progress.committable()
        if target > self._confirmed_lsn:
            with self.spec.statement(f"advancing slot {self.slot}"):
                rep.confirm_slot(self.conn, self.slot, target)
            self._confirmed_lsn = target
            self.metrics.offset_commits.labels(self.spec.name).inc()
            self.metrics.confirmed_lsn.labels(self.spec.name).set(target)
            self._shapes_confirmed()
        self._remember()

    def _peek(self, upto: int, limit: int) -> int:
        """Queue every change of one peek; wait for all acks. Returns the rows (messages) read.

        The peek is read as a binary COPY in chunks (``pgsource/pg/peek.py``): memory stays
        bounded by one chunk, the unfinished message at its end, and one batch.
        """
        query, params = rep.build_peek(self.slot, self.publication, upto, limit)
        statement = build_peek_copy(self.conn, query, params)
        self._peek_batch = ChangeBatch()
        self._peek_fed = self._peek_skip = 0
        rows = BinaryCopyRows(self._feed_peek, needs_text=self.encoder.needs_text, where=self.spec.name)
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
                    rows = BinaryCopyRows(self._feed_peek, needs_text=self.encoder.needs_text, where=self.spec.name)
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

    def _feed_peek(self, buf: bytes, text: str | None, spans: list) -> None:
        """One chunk of the peek's messages into batches; a full batch goes to the queue at once."""
        feed = self.encoder.feed_buffer
        batch = self._peek_batch
        batch_size = self.spec.config.source.batch_size
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
        self._take_acks(block=False)

    # -- the streaming transport -----------------------------------------------------------

    def _stream_replication(self) -> None:
        source = self.spec.config.source
        timeout = rep.wal_sender_timeout(self.conn)
        self.stream = stream = ReplicationStream(
            source.connection_string, self.slot, self.publication,
            application_name=f"pgsource-{self.spec.name}-wal",
            feedback_interval=min(1.0, max(0.1, timeout / 4)) if timeout > 0 else 1.0,
        )
        self.spec.backends(stream.connection)
        self._tick = self._feedback
        read = stream.read_message
        encoder = self.encoder
        feed = encoder.feed_buffer
        batch_size = source.batch_size
        self._batch = ChangeBatch()
        batch_started = 0.0  # when the partial batch got its first change
        try:
            while not self._should_stop():
                self.notify()
                self._watch_tables(self._flush_batch)
                message = read()
                if message is not None:
                    batch = self._batch
                    if not batch.count:
                        batch_started = time.monotonic()
                    payload = message.payload
                    feed(payload, payload.decode("latin-1") if encoder.needs_text else None, 0, len(payload), batch)
                    if batch.count >= batch_size:  # a large transaction streams out in batches
                        self._flush_batch()
                        self._feedback()
                    continue
                linger = batch_started + LINGER - time.monotonic() if self._batch.count else 0.0
                if linger <= 0:
                    self._flush_batch()  # the socket is drained and the batch waited long enough
                self._take_acks(block=False)
                batch = self._batch
                if not encoder.in_transaction and not batch.count and batch.last_commit_end is None:
                    wal_end = stream.wal_end  # nothing half-read, nothing unsent: the server's position
                    if wal_end > self._recorded_lsn:
                        self.progress.mark(wal_end)
                        self._recorded_lsn = wal_end
                self._feedback()
                stream.wait(min(0.005, linger) if linger > 0 else 0.005)
            self._flush_batch()
            self._wait_for_acks(deadline=time.monotonic() + self.spec.config.supervisor.stop_timeout)
            self._feedback(force=True)
            self._remember(force=True)
        finally:
            self._tick = _nothing
            stream.close()

    def _flush_batch(self) -> None:
        batch = self._batch
        if batch.count or batch.last_commit_end is not None:
            self._send(batch)
            self._batch = ChangeBatch()

    def _feedback(self, force: bool = False) -> None:
        target = self.progress.committable()
        if self.stream.confirm(target, force=force) and target > self._confirmed_lsn:
            self._confirmed_lsn = target
            self.metrics.offset_commits.labels(self.spec.name).inc()
            self.metrics.confirmed_lsn.labels(self.spec.name).set(target)
            self._shapes_confirmed()
        self._remember()

    def _remember(self, force: bool = False) -> None:
        """Copy the confirmed LSN into the slot's record now and then (it names the gap if the slot vanishes)."""
        now = time.monotonic()
        if not force and now - self._remembered_at < REMEMBER_EVERY:
            return
        self._remembered_at = now
        if self._confirmed_lsn > self.record.lsn:
            self.record = dataclasses.replace(self.record, lsn=self._confirmed_lsn)
            self.store.commit(self.key, self.record)

    # -- queue and acks --------------------------------------------------------------------

    def _send(self, batch: ChangeBatch) -> None:
        """Queue the batch's messages (one event per topic), then mark the last transaction it completes."""
        stream = self.spec.config.iggy.stream
        # a batch cut from a transaction larger than batch_size holds no Commit: its transaction's time
        commit_time = batch.commit_time or (self.encoder.transaction_commit_time if self.encoder else 0.0)
        for topic, messages in batch.topic_messages.items():
            if not messages.ids:
                continue
            self._seq += 1
            tables = tables_of(messages.payloads, messages.headers, messages.ids)  # the metrics' table label: the table, not the topic
            event = encode_batch_event(messages, worker=self.spec.name, seq=self._seq, stream=stream, topic=topic,
                                       table=next(iter(tables)), where=f"topic {topic}", commit_time=commit_time,
                                       tables=tables if len(tables) > 1 else None)
            self.progress.sent(self._seq)
            while not put_event(self.batch_queue, event, self._waiting):
                if self.orphaned:  # no publisher will take it: the next start re-reads it
                    raise SystemExit(1)
                self._take_acks(block=False)
            for table, (count, _) in tables.items():
                if table:  # "": the transaction topic's markers
                    self.metrics.rows_read.labels(table, self.spec.name).inc(count)
            self.metrics.batches_queued.labels(self.spec.name).inc()
            self.metrics.in_flight.labels(self.spec.name).set(self.progress.in_flight)
        end = batch.last_commit_end
        if end is not None and end > self._recorded_lsn:
            self.progress.mark(end)
            self._recorded_lsn = end

    def _waiting(self) -> bool:
        """put_event's check while the queue is full: keep confirming, and say whether to stop."""
        self._tick()
        return super()._waiting()

    def _take_acks(self, block: bool, timeout: float = 0.2) -> None:
        while self.progress.in_flight:
            try:
                ack = get_event(self.ack_queue, timeout=timeout if block else 0.000_001)
            except Empty:
                return
            self.progress.acked(ack.seq)
            self.metrics.in_flight.labels(self.spec.name).set(self.progress.in_flight)
            block = False

    def _wait_for_acks(self, deadline: float | None) -> None:
        """Until every queued batch is acknowledged; once stopping, at most ``stop_timeout`` more."""
        stop_timeout = self.spec.config.supervisor.stop_timeout
        while self.progress.in_flight:
            if deadline is None and self._should_stop():
                deadline = time.monotonic() + stop_timeout
            if deadline is not None and time.monotonic() > deadline:
                return
            if self.watch.orphaned():
                raise SystemExit(1)
            self.notify()
            self._take_acks(block=True)
            self._tick()


def _nothing() -> None:
    return None


class _TypesNeeded(Exception):
    def __init__(self, oids: list[int], names: list[tuple[int, int]] = ()) -> None:
        super().__init__(oids)
        self.oids = oids
        self.names = list(names)


def run_cdc_worker(spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
    """Process target (module-level so the spawn start method can import it)."""
    CdcWorker(spec, batch_queue, ack_queue, status_queue, stop_event).run()
