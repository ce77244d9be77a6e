"""``CdcWorker``: one process, one publication, one slot; changes into Iggy, nothing lost.

Two transports share the pgoutput decoder and ``ChangeEncoder``:

- ``sql`` (default): ``pg_logical_slot_peek_binary_changes`` read through a server-side
  cursor (bounded memory for a transaction of any size), then — only after Iggy
  acknowledged every message of the peek — ``pg_replication_slot_advance``. Each peek is
  bounded by the WAL flush position read just before it; when the peek returns fewer
  changes than asked, the slot is advanced to that position even if nothing was captured,
  so idle tables do not make the slot retain WAL.
- ``replication``: the streaming protocol (psycopg2 ``LogicalReplicationConnection``)
  with flush feedback sent only after acknowledgement.

Never ``pg_logical_slot_get_changes``: it consumes changes before they are delivered.
"""

from __future__ import annotations

import logging
import select
import time

from pgsource.changes import ChangeBatch, ChangeEncoder
from pgsource.errors import PgSourceError
from pgsource.events import BatchEvent
from pgsource.pg import connect as pg
from pgsource.pg import replication as rep
from pgsource.pg.replication import slot_names
from pgsource.pg.types import load_type_catalog
from pgsource.state.store import FileOffsetStore, Offset
from workers.base import QueueWorker, WorkerSpec
from workers.channel import Empty, get_event, put_event

log = logging.getLogger("pgsource.cdc")

FETCH_ROWS = 5000  # rows per FETCH from the peek cursor
PEEK_CHANGES = 200_000  # changes per peek at least: each peek decodes again from the slot's restart LSN
IDLE_PAUSE = 0.005  # seconds between peeks that found nothing (latency vs. load)


class CdcWorker(QueueWorker):
    """Streams one slot; see the module docstring for when the slot is confirmed."""

    def __init__(self, spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
        super().__init__(spec, batch_queue, ack_queue, status_queue, stop_event)
        self._acked = self._seq
        self._confirmed = 0

    def boot(self) -> None:
        config = self.spec.config
        self.slot, self.publication = slot_names(config, self.spec.name, self.spec.workers_total)
        self.store = FileOffsetStore(config.state.dir)
        self.conn = pg.connect(config.source.connection_string, application_name=f"pgsource-{self.spec.name}")
        rep.ensure_publication(self.conn, self.publication, [unit.table for unit in self.spec.units])
        self._prepare_slot()
        self.encoder = ChangeEncoder(config, self.slot, lambda oids: load_type_catalog(self.conn, oids))

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
        stored = self.store.load_offset(key)
        state = rep.slot_state(self.conn, self.slot)
        if state is not None and stored is not None and stored.extra.get("snapshot") == "in_progress":
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

            self.store.commit_offset(key, Offset(("0/0",), extra={"snapshot": "in_progress"}))
            run_initial_snapshot(self)
        else:
            self._confirmed = rep.create_slot(self.conn, self.slot)
        self.store.commit_offset(key, Offset(("0/0",), extra={"snapshot": "done"}))

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
        """Queue every change of one peek; wait for all acks. Returns (rows read, last commit end)."""
        query, params = rep.build_peek(self.slot, self.publication, upto, limit)
        batch = ChangeBatch()
        rows = 0
        last_end = None
        self.conn.autocommit = False
        try:
            with self.conn.cursor(name="pgsource_peek") as cur:
                cur.itersize = FETCH_ROWS
                cur.execute(query, params)
                feed = self.encoder.feed_buffer
                while True:
                    chunk = cur.fetchmany(FETCH_ROWS)
                    if not chunk:
                        break
                    rows += len(chunk)
                    self.spec.beat()
                    for (data,) in chunk:
                        data = bytes(data)
                        feed(data, data.decode("latin-1"), 0, len(data), batch)
                        if batch.count >= self.spec.config.source.batch_size:
                            last_end = batch.last_commit_end or last_end
                            self._send(batch)
                            batch = ChangeBatch()
                    self._collect_acks(block=False)
            self.conn.commit()
        except pg.DatabaseError as exc:
            self.conn.rollback()
            if isinstance(exc, (pg.OperationalError, pg.InterfaceError)):
                raise
            raise PgSourceError(f"{self.spec.name}: reading slot {self.slot} failed: {str(exc).strip()}") from None
        finally:
            self.conn.autocommit = True
        last_end = batch.last_commit_end or last_end
        if batch.count:
            self._send(batch)
        self._wait_acks(deadline=None)
        return rows, last_end

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
        while not self._should_stop():
            self.spec.beat()
            message = cur.read_message()
            if message is not None:
                payload = message.payload
                self.encoder.feed_buffer(payload, payload.decode("latin-1"), 0, len(payload), self._batch)
                if self._batch.last_commit_end is not None:
                    self._commits.append(self._batch.last_commit_end)
                    self._batch.last_commit_end = None
                    if self._batch.count >= source.batch_size:
                        awaiting += self._flush()
                elif self._batch.count >= source.batch_size:
                    awaiting += self._flush()  # a large transaction streams out in batches
                continue
            awaiting += self._flush()  # the socket is drained: send what we have
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
            select.select([cur], [], [], 0.005)
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
            event = BatchEvent(self.spec.name, self._seq, stream, topic, topic, ids, parts, payloads, headers,
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



def run_cdc_worker(spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
    """Process target (module-level so the spawn start method can import it)."""
    CdcWorker(spec, batch_queue, ack_queue, status_queue, stop_event).run()
