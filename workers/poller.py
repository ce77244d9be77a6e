"""``PollWorker``: one process that polls its tables and hands batches to the publisher.

It owns its psycopg2 connection and its offsets. A batch goes on the queue as soon as
it is read (up to ``max_in_flight_batches`` unacknowledged), and the next read starts
after it; the stored offset moves only when the publisher's ack for that batch comes
back, after the batch's deletes or marks were applied. A crash therefore re-reads only
unacknowledged batches, and their messages carry the same deterministic ids.

Reading ahead: when a read returned a full batch, the read of the batch after it starts
at once on a helper thread (psycopg2 lets go of the GIL while PostgreSQL works), while
this thread encodes and queues the batch it has. The read-ahead starts from the offset
the queued batch will have, so nothing changes in what is read or committed; a
read-ahead whose batch was not queued (stopping) is simply dropped. It pays only while
there are more cores than workers (1 worker on 2 cores: +26 % rows/s); with a worker per
core the cores are busy already and the extra thread costs a little (-1 %), so it is off
then. Tables with ``delete_after_read``/``processed_column`` do not read ahead either:
their acknowledgements run SQL on the same connection.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pgsource.assignment import WorkUnit
from pgsource.encode.frames import encode_partition_frames
from pgsource.events import AckEvent, BatchEvent
from pgsource.pg import connect as pg
from pgsource.polling import TableReader
from pgsource.state import ChunkCuts, FileStateStore, PollingOffset
from workers.base import QueueWorker, WorkerSpec
from workers.channel import Empty, ParentWatch, get_event, put_event

log = logging.getLogger("pgsource.poller")

@dataclass
class _Cursor:
    """The runtime state of one unit: where the next read starts, when it may poll again."""

    key: str  # where its offset is stored
    reader: TableReader
    read_after: PollingOffset | None
    next_poll: float = 0.0
    rows: int = 0
    ahead: Future | None = None  # the read of the batch after ``read_after``, already under way


@dataclass
class _Pending:
    cursor: _Cursor
    offset: PollingOffset
    identities: list | None
    messages: int
    sent_at: float = field(default_factory=time.monotonic)


class PollWorker(QueueWorker):
    """Polls its tables; see the module docstring for when offsets move."""

    def __init__(self, spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
        super().__init__(spec, batch_queue, ack_queue, status_queue, stop_event)
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._finished = False

    def boot(self) -> None:
        config = self.spec.config
        self.store = FileStateStore(config.state.dir)
        self.conn = pg.connect(config.source.connection_string, application_name=f"pgsource-{self.spec.name}")
        self.cursors = [self._open(unit) for unit in self.spec.units] or [self._open(None)]
        self.offsets = OffsetWriter(self.store, self.spec.config.state.commit_interval)
        source = config.source
        reads_ahead = self.spec.workers_total < _cores() and not (source.delete_after_read or source.processed_column)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="read-ahead") if reads_ahead else None

    def serve(self) -> None:
        self._loop(self.cursors, self.watch)

    def close(self) -> None:
        try:
            if not self._finished:  # leaving on an error: still commit what Iggy already has
                self._finish()
        except Exception as exc:  # noqa: BLE001 - the error that got us here is what gets reported
            log.warning("%s: could not commit the last acknowledged batches (%s); they will be re-sent", self.spec.name, exc)
        finally:
            if self._reader is not None:  # the connection is closed only once no read uses it
                self._reader.shutdown(wait=True, cancel_futures=True)
            self.conn.close()

    def _open(self, unit: WorkUnit | None) -> _Cursor:
        source = self.spec.config.source
        reader = TableReader(self.conn, self.spec.config, unit.table if unit else None)
        key = unit.key if unit else "polling/custom_query"
        stored = self.store.load(key, PollingOffset)
        if unit is not None and unit.chunks > 1:
            reader.restrict_to_chunk(*self._chunk_range(unit, reader, stored))
        if stored is None and source.initial_offset is not None:
            stored = PollingOffset((str(source.initial_offset),))
        log.info("%s: %s from %s", self.spec.name, reader.table_name, stored.cursor if stored else "the start")
        return _Cursor(key, reader, stored, rows=stored.rows if stored else 0)

    def _chunk_range(self, unit: WorkUnit, reader: TableReader, stored: PollingOffset | None) -> tuple[int | None, int | None]:
        """``[lo, hi)`` of one chunk: cut points computed once per table, stored, reused on restart.

        The first worker to get here (under a file lock in ``state.dir``) cuts ``[min, max]`` of
        the key into equal ranges and stores the cuts; every chunk then reads the same ones.
        The first chunk is unbounded below and the last unbounded above, so the chunks cover
        every key exactly once, and the last one goes on reading new rows incrementally.
        """
        if stored is not None and stored.chunk is not None:
            return stored.chunk
        cuts_key = f"polling/{unit.table.qualified}#cuts{unit.chunks}"
        os.makedirs(self.store.directory, exist_ok=True)
        with open(os.path.join(self.store.directory, ".chunks.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self.store.load(cuts_key, ChunkCuts)
            if found is None:
                low, high = reader.key_bounds() or (0, 0)
                span = high - low + 1
                found = ChunkCuts(tuple(low + span * index // unit.chunks for index in range(1, unit.chunks)), low, high)
                self.store.commit(cuts_key, found)
            cuts = found.cuts
        lo = cuts[unit.chunk - 1] if unit.chunk > 0 else None
        hi = cuts[unit.chunk] if unit.chunk < unit.chunks - 1 else None
        return lo, hi

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, cursors: list[_Cursor], watch: ParentWatch) -> None:
        config = self.spec.config
        source = config.source
        max_in_flight = source.max_in_flight_batches
        while not self._should_stop():
            self.spec.beat()
            if watch.orphaned():
                log.error("%s: supervisor is gone, exiting", self.spec.name)
                return
            self._drain_acks(timeout=0)
            now = time.monotonic()
            read_any = False
            for cursor in cursors:
                if len(self._pending) >= max_in_flight or self._should_stop():
                    break
                if cursor.next_poll > now:
                    continue
                rows = self._read(cursor)
                if len(rows) < source.batch_size:
                    cursor.next_poll = time.monotonic() + source.poll_interval
                elif self._reader is not None:  # a full batch: more may follow, start reading them now
                    cursor.ahead = self._reader.submit(cursor.reader.fetch_batch, cursor.reader.offset_after(rows))
                if rows:
                    read_any = True
                    self._queue_batch(cursor, rows)
            if not read_any:
                pause = max(0.0, min(min(c.next_poll for c in cursors) - time.monotonic(), 0.5))
                if self._pending:
                    self._drain_acks(timeout=pause)
                else:
                    self.stop_event.wait(pause)
            elif len(self._pending) >= max_in_flight:
                self._drain_acks(timeout=0.5)
        self._finish()

    def _read(self, cursor: _Cursor) -> list[tuple]:
        """The batch after ``cursor.read_after``: the read-ahead's result if one is under way."""
        ahead, cursor.ahead = cursor.ahead, None
        if ahead is not None:
            return ahead.result()
        return cursor.reader.fetch_batch(cursor.read_after)

    def _queue_batch(self, cursor: _Cursor, rows: list[tuple]) -> None:
        encoded = cursor.reader.encode_batch(rows, self.spec.config.source.include_metadata, cursor.rows)
        self._seq += 1
        event = BatchEvent(
            worker=self.spec.name,
            seq=self._seq,
            stream=self.spec.config.iggy.stream,
            topic=cursor.reader.topic,
            table=cursor.reader.table_name,
            parts=encode_partition_frames(encoded.ids, encoded.partitions, encoded.payloads, where=f"table {cursor.reader.table_name}"),
            count=len(encoded.ids),
            created=time.time(),
        )
        if not put_event(self.batch_queue, event, self._should_stop):
            return  # stopping while the queue is full: this batch was never sent, nothing to commit
        self._pending[self._seq] = _Pending(cursor, encoded.last_offset, encoded.identities, len(rows))
        cursor.read_after = encoded.last_offset
        cursor.rows = encoded.last_offset.rows
        self.metrics.rows_read.labels(cursor.reader.table_name, self.spec.name).inc(len(rows))
        self.metrics.batches_queued.labels(self.spec.name).inc()
        self.metrics.in_flight.labels(self.spec.name).set(len(self._pending))

    def _drain_acks(self, timeout: float) -> None:
        """Commit every batch acknowledged so far; wait up to ``timeout`` for the first ack."""
        wait = timeout
        while self._pending:
            try:
                ack: AckEvent = get_event(self.ack_queue, timeout=wait) if wait > 0 else get_event_nowait(self.ack_queue)
            except Empty:
                return
            wait = 0
            self._commit_through(ack.seq)

    def _commit_through(self, seq: int) -> None:
        while self._pending and next(iter(self._pending)) <= seq:
            _, pending = self._pending.popitem(last=False)
            pending.cursor.reader.apply_acknowledged(pending.identities)
            self.offsets.submit(pending.cursor.key, pending.offset)
            self.metrics.offset_commits.labels(self.spec.name).inc()
        self.metrics.in_flight.labels(self.spec.name).set(len(self._pending))

    def _finish(self) -> None:
        """Graceful stop: wait (bounded) for the acks of batches already sent, then commit them."""
        deadline = time.monotonic() + self.spec.config.supervisor.stop_timeout
        while self._pending and time.monotonic() < deadline:
            self._drain_acks(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
        if self._pending:
            log.warning("%s: %d batch(es) not acknowledged before the deadline; they will be re-sent", self.spec.name, len(self._pending))
        self._finished = True
        self.offsets.close()


class OffsetWriter:
    """Commits acknowledged offsets on a thread of its own, so the fsyncs do not stall reading.

    ``submit`` is called only once Iggy acknowledged the offset's batch, so what is written is
    never ahead of Iggy. Offsets submitted while a commit is written, or within
    ``interval`` seconds of the last one, replace each other: only the newest is written
    (progress only moves forward; a crash re-sends what was acknowledged since the last
    commit, with the same ids). An fsync'd file per batch cost ~0.4 µs of CPU per row.
    ``close`` writes the newest at once.
    """

    def __init__(self, store: FileStateStore, interval: float = 0.0) -> None:
        self.store = store
        self.interval = interval
        self._latest: dict[str, PollingOffset] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="offset-writer", daemon=True)
        self._thread.start()

    def submit(self, key: str, offset: PollingOffset) -> None:
        with self._cond:
            if self._error is not None:
                raise self._error
            self._latest[key] = offset
            self._cond.notify()

    def _run(self) -> None:
        next_commit = 0.0
        while True:
            with self._cond:
                while not self._closed and (not self._latest or time.monotonic() < next_commit):
                    self._cond.wait(None if not self._latest else next_commit - time.monotonic())
                if not self._latest and self._closed:
                    return
                batch, self._latest = self._latest, {}
            next_commit = time.monotonic() + self.interval
            try:
                for key, offset in batch.items():
                    self.store.commit(key, offset)
            except BaseException as exc:  # surfaced to the worker on its next submit/close
                with self._cond:
                    self._error = exc
                return

    def close(self) -> None:
        """Write everything submitted, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error


def _cores() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count, where known)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def get_event_nowait(channel):
    return get_event(channel, timeout=0.000_001)


def run_poll_worker(spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
    """Process target (a module-level function, so the spawn start method can import it)."""
    PollWorker(spec, batch_queue, ack_queue, status_queue, stop_event).run()
