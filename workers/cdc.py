"""``CdcWorker``: one process, one publication, one slot; changes into Iggy, nothing lost.

Two transports share the pgoutput decoder and ``ChangeEncoder``:

- ``sql``: ``pg_logical_slot_peek_binary_changes`` read as a binary COPY in
  chunks (bounded memory for a transaction of any size), then — only after Iggy
  acknowledged every message of the peek — ``pg_replication_slot_advance``. Each peek is
  bounded by the WAL flush position read just before it; when the peek returns fewer
  changes than asked, the slot is advanced to that position even if nothing was captured,
  so idle tables do not make the slot retain WAL.
- ``replication`` (default): the streaming protocol (psycopg2
  ``LogicalReplicationConnection``) with flush feedback sent only after acknowledgement.

Never ``pg_logical_slot_get_changes``: it consumes changes before they are delivered.
"""

from __future__ import annotations

import io
import logging
import select
import struct
import time

from pgsource.changes import ChangeBatch, ChangeEncoder
from pgsource.encode.frames import encode_partition_frames
from pgsource.errors import PgSourceError
from pgsource.events import BatchEvent
from pgsource.pg import connect as pg
from pgsource.pg import replication as rep
from pgsource.pg.replication import slot_names
from pgsource.pg.types import load_table_types, load_type_catalog
from pgsource.state import FileStateStore, SlotProgress, SnapshotPhase
from workers.base import QueueWorker, WorkerSpec
from workers.channel import Empty, get_event, put_event

log = logging.getLogger("pgsource.cdc")

COPY_CHUNK = 1 << 20  # bytes of the peek's COPY output handed over at a time
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_ROW = struct.Struct("!hi").unpack_from  # field count, data length
_I32 = struct.Struct("!i").unpack_from
PEEK_CHANGES = 200_000  # changes per peek at least: each peek decodes again from the slot's restart LSN
IDLE_PAUSE = 0.005  # seconds between peeks that found nothing (latency vs. load)
# The streaming transport drains the socket faster than the walsender fills it, so "send what
# we have whenever the socket is empty" made batches of a few dozen changes, and every batch
# costs the publisher and Iggy a fixed ~0.2 ms. A partial batch waits this long for more.
LINGER = 0.005


class CdcWorker(QueueWorker):
    """Streams one slot; see the module docstring for when the slot is confirmed."""

    def __init__(self, spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
        super().__init__(spec, batch_queue, ack_queue, status_queue, stop_event)
        self._acked = self._seq
        self._confirmed = 0

    def boot(self) -> None:
        config = self.spec.config
        self.slot, self.publication = slot_names(config, self.spec.name, self.spec.workers_total)
        self.store = FileStateStore(config.state.dir)
        self.conn = pg.connect(config.source.connection_string, application_name=f"pgsource-{self.spec.name}")
        rep.ensure_publication(self.conn, self.publication, [unit.table for unit in self.spec.units])
        self._prepare_slot()
        self._copying = False
        self.encoder = ChangeEncoder(config, self.slot, self._load_types)
        tables = [(unit.table.schema_, unit.table.name) for unit in self.spec.units]
        self.encoder.types.update(load_table_types(self.conn, tables))

    def _load_types(self, oids: list[int]) -> dict:
        if self._copying:  # no other query while the peek's COPY runs: see _peek
            raise _TypesNeeded(oids)
        return load_type_catalog(self.conn, oids)

    def serve(self) -> None:
        if self.spec.config.source.cdc_transport == "replication":
            self._stream_replication()
        else:
            self._stream_sql()

    def close(self) -> None:
        self.conn.close()

    # -- slot ------------------------------------------------------------------------------

    def _prepare_slot(self) -> None:
        key = f"cdc/{self.slot}"
        stored = self.store.load(key, SlotProgress)
        state = rep.slot_state(self.conn, self.slot)
        if state is not None and stored is not None and stored.phase is SnapshotPhase.IN_PROGRESS:
            log.warning("%s: the initial snapshot of slot %s did not finish; starting it again", self.spec.name, self.slot)
            rep.drop_slot(self.conn, self.slot)  # created by us, nothing consumed from it yet
            state = None
        if state is not None:
            state = rep.wait_until_free(self.conn, state)
            rep.check_slot(self.conn, state)
            self._confirmed = state.confirmed_flush_lsn
            return
        if self.spec.config.source.snapshot == "initial":
            from workers.snapshot import run_initial_snapshot

            self.store.commit(key, SlotProgress(self.slot, SnapshotPhase.IN_PROGRESS))
            run_initial_snapshot(self)
        else:
            self._confirmed = rep.create_slot(self.conn, self.slot)
        self.store.commit(key, SlotProgress(self.slot, SnapshotPhase.DONE))

    # -- the SQL transport -----------------------------------------------------------------

    def _stream_sql(self) -> None:
        source = self.spec.config.source
        limit = max(source.batch_size * source.max_in_flight_batches, PEEK_CHANGES)
        while not self._should_stop():
            self.spec.beat()
            upto = rep.current_flush_lsn(self.conn)
            changes, end = self._peek(upto, limit)
            if self._should_stop() and self._seq != self._acked:
                self._wait_acks(deadline=time.monotonic() + self.spec.config.supervisor.stop_timeout)
            if self._seq != self._acked:
                continue  # not everything was acknowledged: do not confirm; the next peek re-sends it
            target = upto if changes < limit else end
            if target is not None and target > self._confirmed:
                rep.confirm_slot(self.conn, self.slot, target)
                self._confirmed = target
                self.metrics.offset_commits.labels(self.spec.name).inc()
            if changes == 0:
                self.stop_event.wait(IDLE_PAUSE)

    def _peek(self, upto: int, limit: int) -> tuple[int, int | None]:
        """Queue every change of one peek; wait for all acks. Returns (rows read, last commit end).

        The peek is read as ``COPY (...) TO STDOUT (FORMAT binary)``: psycopg2 hands the
        stream to a ``BufferedWriter`` whose raw sink (``_PeekFrames``) gets ~1 MB chunks;
        each chunk is split into messages by the COPY framing and fed without a per-row
        Python object from psycopg2 (and without bytea's hex text). Memory stays bounded:
        one chunk, the unfinished message at its end, one batch.
        """
        query, params = rep.build_peek(self.slot, self.publication, upto, limit)
        frames = _PeekFrames(self)
        self.conn.autocommit = False
        try:
            with self.conn.cursor() as cur:
                statement = b"COPY (" + cur.mogrify(query, params) + b") TO STDOUT WITH (FORMAT binary)"
            while True:
                sink = io.BufferedWriter(frames, buffer_size=COPY_CHUNK)
                try:
                    self._copying = True
                    with self.conn.cursor() as cur:
                        cur.copy_expert(statement, sink)
                    sink.flush()
                    break
                except _TypesNeeded as need:
                    # A Relation with a type unknown since boot (a column added meanwhile): end
                    # the COPY, load the types, and peek again, skipping what was fed already
                    # (the same peek of the unadvanced slot gives the same messages).
                    self._copying = False
                    self.conn.rollback()
                    self.encoder.types.update(load_type_catalog(self.conn, need.oids))
                    frames = frames.resumed()
                finally:
                    self._copying = False
                    sink.close()  # after a failure its buffered rest goes to aborted frames: dropped
            self.conn.commit()
        except pg.DatabaseError as exc:
            self.conn.rollback()
            if isinstance(exc, (pg.OperationalError, pg.InterfaceError)):
                raise
            raise PgSourceError(f"{self.spec.name}: reading slot {self.slot} failed: {str(exc).strip()}") from None
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            self.conn.autocommit = True
        frames.finish()
        last_end = frames.batch.last_commit_end or frames.last_end
        if frames.batch.count:
            self._send(frames.batch)
        self._wait_acks(deadline=None)
        return frames.rows, last_end

    # -- the streaming transport -----------------------------------------------------------

    def _stream_replication(self) -> None:
        source = self.spec.config.source
        conn = pg.connect_replication(source.connection_string, application_name=f"pgsource-{self.spec.name}-wal")
        cur = conn.cursor()
        cur.start_replication(
            slot_name=self.slot, decode=False,
            options={"proto_version": "1", "publication_names": self.publication},
        )
        self._batch = ChangeBatch()
        self._commits: list[int] = []  # commit end LSNs whose messages are in the unsent batch
        awaiting: list[tuple[int, int]] = []  # (seq of the last event holding them, commit end LSN)
        delivered = self._confirmed
        last_feedback = 0.0
        batch_started = 0.0  # when the partial batch got its first change
        while not self._should_stop():
            self.spec.beat()
            message = cur.read_message()
            if message is not None:
                payload = message.payload
                if not self._batch.count:
                    batch_started = time.monotonic()
                text = payload.decode("latin-1") if self.encoder.needs_text else None
                self.encoder.feed_buffer(payload, text, 0, len(payload), self._batch)
                if self._batch.last_commit_end is not None:
                    self._commits.append(self._batch.last_commit_end)
                    self._batch.last_commit_end = None
                    if self._batch.count >= source.batch_size:
                        awaiting += self._flush()
                elif self._batch.count >= source.batch_size:
                    awaiting += self._flush()  # a large transaction streams out in batches
                continue
            linger = batch_started + LINGER - time.monotonic() if self._batch.count else 0.0
            if linger <= 0:
                awaiting += self._flush()  # the socket is drained and the batch waited long enough
            self._collect_acks(block=False)
            while awaiting and awaiting[0][0] <= self._acked:
                delivered = max(delivered, awaiting.pop(0)[1])
            idle = not awaiting and self._acked == self._seq and not self.encoder.in_transaction
            if idle and cur.wal_end > delivered:
                delivered = cur.wal_end  # nothing in flight, no transaction half-read: confirm the server's position
            if delivered > self._confirmed and time.monotonic() - last_feedback > 0.01:
                cur.send_feedback(flush_lsn=delivered)
                self._confirmed = delivered
                last_feedback = time.monotonic()
                self.metrics.offset_commits.labels(self.spec.name).inc()
            select.select([cur], [], [], min(0.005, linger) if linger > 0 else 0.005)
        awaiting += self._flush()
        self._wait_acks(deadline=time.monotonic() + self.spec.config.supervisor.stop_timeout)
        while awaiting and awaiting[0][0] <= self._acked:
            delivered = max(delivered, awaiting.pop(0)[1])
        if delivered > self._confirmed:
            cur.send_feedback(flush_lsn=delivered, force=True)
        conn.close()

    def _flush(self) -> list[tuple[int, int]]:
        if self._batch.count:
            self._send(self._batch)
        done = [(self._seq, end) for end in self._commits]
        self._commits = []
        self._batch = ChangeBatch()
        return done

    # -- queue and acks --------------------------------------------------------------------

    def _send(self, batch: ChangeBatch) -> None:
        stream = self.spec.config.iggy.stream
        for topic, (ids, parts, payloads, headers) in batch.topic_messages.items():
            self._seq += 1
            frames = encode_partition_frames(ids, parts, payloads, headers, where=f"topic {topic}")
            event = BatchEvent(self.spec.name, self._seq, stream, topic, topic, frames, len(ids),
                               created=time.time(), commit_time=batch.commit_time)
            while not put_event(self.batch_queue, event, self._should_stop):
                self._collect_acks(block=False)
            self.metrics.rows_read.labels(topic, self.spec.name).inc(len(ids))

    def _collect_acks(self, block: bool, timeout: float = 0.5) -> None:
        while self._acked < self._seq:
            try:
                ack = get_event(self.ack_queue, timeout=timeout if block else 0.000_001)
            except Empty:
                return
            if ack.seq > self._acked:
                self._acked = ack.seq
            block = False

    def _wait_acks(self, deadline: float | None) -> None:
        if deadline is None and self._should_stop():
            deadline = time.monotonic() + self.spec.config.supervisor.stop_timeout
        while self._acked < self._seq:
            if deadline is not None and time.monotonic() > deadline:
                return
            if self.watch.orphaned():
                raise SystemExit(1)
            self.spec.beat()
            self._collect_acks(block=True)



class _TypesNeeded(Exception):
    def __init__(self, oids: list[int]) -> None:
        super().__init__(oids)
        self.oids = oids


class _PeekFrames(io.RawIOBase):
    """The raw sink of the peek's binary COPY: splits chunks into pgoutput messages and feeds them.

    Binary COPY: an 11-byte signature, int32 flags, int32 header extension length and the
    extension; then per row int16 field count (1 here), int32 length, the ``data`` bytes;
    finally int16 -1.
    """

    def __init__(self, worker: CdcWorker) -> None:
        super().__init__()
        self.worker = worker
        self.batch = ChangeBatch()
        self.rows = 0
        self.last_end: int | None = None
        self._tail = b""
        self._header = True
        self._done = False
        self._skip = 0  # messages already fed by an interrupted COPY of the same peek
        self._failed = False  # after an exception, nothing more is fed (the writer's last flush)

    def resumed(self) -> _PeekFrames:
        """For the same peek read again from its start: skips the messages fed so far."""
        again = _PeekFrames(self.worker)
        again.batch, again.last_end, again._skip = self.batch, self.last_end, self.rows
        return again

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        if self._failed:
            return len(chunk)
        try:
            return self._write(chunk)
        except BaseException:
            self._failed = True
            raise

    def _write(self, chunk) -> int:
        size = len(chunk)
        worker = self.worker
        buf = self._tail + chunk if self._tail else bytes(chunk)
        pos = 0
        if self._header:
            if len(buf) < 19:
                self._tail = buf
                return size
            if buf[:11] != COPY_SIGNATURE:
                raise PgSourceError(f"{worker.spec.name}: the peek's COPY output has no binary COPY signature")
            pos = 19 + _I32(buf, 15)[0]  # skip the header extension
            self._header = False
        # One str for the chunk, for the pure-Python row functions: a value is a slice of it.
        s = buf.decode("latin-1") if worker.encoder.needs_text else None
        feed = worker.encoder.feed_buffer
        batch = self.batch
        batch_size = worker.spec.config.source.batch_size
        total = len(buf)
        while pos + 2 <= total:
            if buf[pos] == 0xFF and buf[pos + 1] == 0xFF:  # the trailer: field count -1
                self._done = True
                pos = total
                break
            if pos + 6 > total:
                break
            fields, length = _COPY_ROW(buf, pos)
            if fields != 1:
                raise PgSourceError(f"{worker.spec.name}: unexpected binary COPY row of {fields} fields")
            start = pos + 6
            end = start + length
            if end > total:
                break
            pos = end
            if self._skip:
                self._skip -= 1
                self.rows += 1
                continue
            feed(buf, s, start, end, batch)
            self.rows += 1
            if batch.count >= batch_size:
                self.last_end = batch.last_commit_end or self.last_end
                worker._send(batch)
                batch = self.batch = ChangeBatch()
        self._tail = buf[pos:]
        worker.spec.beat()
        worker._collect_acks(block=False)
        return size

    def finish(self) -> None:
        if self._tail or not self._done:
            raise PgSourceError(f"{self.worker.spec.name}: the peek's COPY output ended in the middle of a row")


def run_cdc_worker(spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
    """Process target (module-level so the spawn start method can import it)."""
    CdcWorker(spec, batch_queue, ack_queue, status_queue, stop_event).run()
