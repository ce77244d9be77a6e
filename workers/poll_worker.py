"""``PollWorker``: one process that polls its tables and hands batches to the publisher.

It owns its psycopg2 connection and its offsets. A batch goes on the queue as soon as
it is read (up to ``max_in_flight_batches`` unacknowledged), and the next read starts
after it: the *read frontier* never waits. What is *committed* is decided by one
``ProgressTracker`` per table (or chunk): an offset counts only once its batch, and
every batch before it, was acknowledged by Iggy, had its deletes/marks applied, and its
range of the tracking column is sealed against transactions still in progress
(``pgsource/polling/late_commits.py``): a range read while such a transaction could still commit
a row into it holds the offset until the horizon passes it, and is then re-read once for
the row versions its first read could not see. A crash therefore re-reads only what was
not committed, and those messages carry the same deterministic ids.

Reading ahead: when a read returned a full batch, the read of the batch after it starts
at once on a helper thread (psycopg2 lets go of the GIL while PostgreSQL works), while
this thread encodes and queues the batch it has. It pays only while there are more cores
than workers (1 worker on 2 cores: +26 % rows/s), so it is off otherwise, and for tables
whose acknowledgements run SQL (delete/mark).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial

from pgsource.errors import PrerequisiteError, TableChanged
from pgsource.pg import connect as pg
from pgsource.pg import horizon as hz
from pgsource.pg.horizon import TrackingKind
from pgsource.pipeline.channel import Empty, get_event, put_event
from pgsource.pipeline.events import AckEvent, encode_batch_event
from pgsource.pipeline.progress import ProgressTracker
from pgsource.plan.assignment import WorkUnit
from pgsource.polling.guard import check_late_commit_guard
from pgsource.polling.late_commits import (
    Horizon,
    HorizonTracker,
    ReadRange,
    SentIds,
    below_horizon,
    sealed,
    tracking_key,
)
from pgsource.polling.schema_changes import announce_shape
from pgsource.rows.reader import ReadBatch, TableReader
from pgsource.state import ChunkCuts, FileStateStore, PollingOffset
from pgsource.state.writer import OffsetWriter
from workers.base import QueueWorker, WorkerSpec
from workers.parent import ParentWatch

log = logging.getLogger("pgsource.poller")

OBSERVE_EVERY = 0.05  # seconds: a horizon older than this is observed again before a read
HELD_LOG_AFTER = 10.0  # seconds a transaction may hold the horizon before it is logged


@dataclass
class _Unit:
    """The runtime state of one table or chunk: where reads stand, what holds its offset."""

    key: str  # where its offset is stored
    reader: TableReader
    read_after: PollingOffset | None
    progress: ProgressTracker
    rows: int = 0
    next_poll: float = 0.0
    ahead: Future | None = None  # the read of the batch after ``read_after``, already under way
    ahead_horizon: Horizon | None = None  # the horizon observed before that read started
    horizon_tracker: HorizonTracker | None = None
    horizon: Horizon | None = None
    observed_at: float = 0.0
    unsealed: deque = field(default_factory=deque)  # ReadRange, in read order
    committed: PollingOffset | None = None
    held_by: str = ""  # the horizon's holder last logged
    warned_sequence: bool = False  # rows above the sequence were reported
    beyond_sequence: tuple | None = None  # (key, observations): a read above the sequence, judged at the next one
    hidden: set = field(default_factory=set)  # (pid, backend_start) of sessions with track_activities off, reported


@dataclass
class _Queued:
    """A batch on the queue, and what its acknowledgement completes."""

    unit: _Unit
    identities: list | None  # (key..., xmin) per row, for delete/mark
    hi: tuple  # the position of its last row (rows updated meanwhile are read again up to it)
    then: Callable[[], None]  # called once it is acknowledged and its deletes/marks are done


@dataclass
class _LateRead:
    """The re-read of one sealed range, which may take several batches."""

    range: ReadRange
    after: tuple | None = None  # where the next page of the re-read starts
    reading: bool = True
    outstanding: int = 0


class PollWorker(QueueWorker):
    """Polls its tables; see the module docstring for when offsets move."""

    def __init__(self, spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
        super().__init__(spec, batch_queue, ack_queue, status_queue, stop_event)
        self._queued: dict[int, _Queued] = {}
        self._holds = itertools.count()
        self._finished = False
        self._health = _HealthHooks()

    def boot(self) -> None:
        config = self.spec.config
        self.store = FileStateStore(config.state.dir)
        self.conn = pg.connect(config.source.connection_string, application_name=f"pgsource-{self.spec.name}")
        self.spec.backends(self.conn)
        self.units = [self._open(unit) for unit in self.spec.units] or [self._open(None)]
        self.offsets = OffsetWriter(self.store, self.spec.config.state.commit_interval)
        reads_ahead = self.spec.workers_total < _cores() and not any(u.reader.acts_on_rows for u in self.units)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="read-ahead") if reads_ahead else None

    def serve(self) -> None:
        self._announce_shapes()
        self._loop(self.units, self.watch)

    def _announce_shapes(self) -> None:
        """A table whose columns changed since consumers were told (pgsource/polling/schema_changes.py):
        the SCHEMA_CHANGE goes out before its first row; the new shape is recorded once acknowledged."""
        config = self.spec.config
        for unit, work in zip(self.units, self.spec.units):
            reader = unit.reader
            if reader.plan is None or reader.plan.payload is not None or work.chunk > 0:
                continue  # custom_query, payload_column: no columns to announce; a table's chunks: the first
            found = announce_shape(config, self.store, work.table.qualified, reader.table_name, reader.shape)
            if found is None:
                continue
            self._seq += 1
            event = encode_batch_event(found.messages, worker=self.spec.name, seq=self._seq, stream=config.iggy.stream,
                                       topic=reader.topic, table=reader.table_name, where=f"table {reader.table_name}")
            if not put_event(self.batch_queue, event, self._waiting):
                return
            log.info("%s: %s: its columns changed; SCHEMA_CHANGE sent before its rows", self.spec.name, reader.table_name)
            self._queued[self._seq] = _Queued(unit, None, (), partial(self.store.commit, found.key, found.record))

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

    def _open(self, unit: WorkUnit | None) -> _Unit:
        source = self.spec.config.source
        reader = TableReader(self.conn, self.spec.config, unit.table if unit else None, guard=check_late_commit_guard)
        key = unit.key if unit else "polling/custom_query"
        stored = self.store.load(key, PollingOffset)
        if unit is not None and unit.chunks > 1:
            reader.restrict_to_chunk(*self._chunk_range(unit, reader, stored))
        start = stored
        if start is None and source.initial_offset is not None:
            start = PollingOffset((str(source.initial_offset),), chunk=reader.chunk)
        log.info("%s: %s from %s", self.spec.name, reader.table_name, start.position if start else "the start")
        state = _Unit(key, reader, start, ProgressTracker(start), rows=start.rows if start else 0, committed=stored)
        if reader.late_commits and reader.tracking.kind in (TrackingKind.TIME, TrackingKind.SEQUENCE) and reader.time_zone:
            state.horizon_tracker = HorizonTracker(reader.tracking.kind, reader.tracking.type_oid, reader.time_zone,
                                                   reader.tracking.rounding)
        if reader.plan is not None and not reader.late_commits and not reader.exact:
            log.warning("%s: %s: late_commits is off: rows that commit after later rows were read are missed",
                        self.spec.name, reader.table_name)
        elif reader.plan is None:
            log.info("%s: custom_query: rows that commit after later rows were read are not re-read", self.spec.name)
        return state

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

    def _loop(self, units: list[_Unit], watch: ParentWatch) -> None:
        source = self.spec.config.source
        max_in_flight = source.max_in_flight_batches
        while not self._should_stop():
            self.notify()
            if watch.orphaned():
                log.error("%s: supervisor is gone, exiting", self.spec.name)
                return
            self._take_acks(timeout=0)
            self._report_health()
            now = time.monotonic()
            read_any = False
            for unit in units:
                if len(self._queued) >= max_in_flight or self._should_stop():
                    break
                if unit.next_poll > now:
                    continue
                if unit.ahead is None:
                    self._observe_if_stale(unit)
                if unit.unsealed:
                    self._reread_sealed(unit, max_in_flight)
                read = self._read(unit)
                if len(read.rows) < source.batch_size:
                    unit.next_poll = time.monotonic() + source.poll_interval
                    self._caught_up()
                elif self._reader is not None:  # a full batch: more may follow, start reading them now
                    self._observe_if_stale(unit)  # before that read's snapshot
                    unit.ahead_horizon = unit.horizon
                    unit.ahead = self._reader.submit(self._read_batch, unit, read.after)
                if read.rows:
                    read_any = True
                    self._queue_read(unit, read)
                elif unit.reader.exact and read.after is not None and read.after != unit.read_after:  # xid8: a tick ended empty
                    unit.read_after = read.after
                    unit.progress.mark(read.after)
                    self._commit(unit)
            if not read_any:
                pause = max(0.0, min(min(u.next_poll for u in units) - time.monotonic(), 0.5))
                if self._queued:
                    self._take_acks(timeout=pause)
                else:
                    self.stop_event.wait(pause)
            elif len(self._queued) >= max_in_flight:
                self._take_acks(timeout=0.5)
        self._finish()

    def _read(self, unit: _Unit) -> ReadBatch:
        """The batch after ``unit.read_after``: the read-ahead's result if one is under way."""
        ahead, unit.ahead = unit.ahead, None
        if ahead is not None:
            return replace(ahead.result(), horizon=unit.ahead_horizon)
        return replace(self._read_batch(unit, unit.read_after), horizon=unit.horizon)

    def _read_batch(self, unit: _Unit, after: PollingOffset | None) -> ReadBatch:
        with self.spec.statement(f"reading a batch of {unit.reader.table_name}"):
            return unit.reader.read_batch(after)

    # -- late commits ------------------------------------------------------------------------

    def _observe_if_stale(self, unit: _Unit) -> None:
        if unit.horizon_tracker is not None and time.monotonic() - unit.observed_at >= OBSERVE_EVERY:
            self._observe(unit)

    def _observe(self, unit: _Unit) -> None:
        """The horizon, observed in its own statements before the next data snapshot.

        The catalog entries of the column (its default, its sequence's settings) are read with
        the activity, after the sequence's value: a change (``ALTER SEQUENCE ... CACHE 50``) is seen
        before this observation's horizon seals anything. The worker then plans the table again
        from its committed offset (a restart: ``TableChanged``), which refuses what no horizon
        protects any more (CACHE > 1: exit 3) and goes on after a harmless change. A sequence that
        went back (setval, RESTART) stops the table (exit 3): its next ids lie below ids read."""
        tracking = unit.reader.tracking
        reader = unit.reader
        with self.spec.statement(f"observing the transactions in progress for {reader.table_name}"):
            sequence = hz.read_sequence(self.conn, tracking.sequence) if tracking.kind is TrackingKind.SEQUENCE else None
            activity = hz.observe_activity(self.conn, tracking.watch)
        problem = hz.watch_problem(tracking, activity.fingerprint)
        if problem is not None:
            reader.check_definition()  # a column changed (ALTER ... TYPE rewrites the default too): that first
            raise TableChanged(f"table {reader.table_name}: {problem}; planning it again from its committed offset")
        last = unit.horizon_tracker.last_sequence
        if sequence is not None and last is not None and sequence < last:
            raise PrerequisiteError(
                f"table {reader.table_name}: sequence {tracking.sequence} went back while running ({last} -> {sequence}:"
                " setval or RESTART): ids handed out now lie below ids already read, and would be missed. The committed"
                f" offset stays where it was; to read them, pgsource reset --config FILE --table {reader.table_name} --to {sequence}")
        self._report_hidden(unit, activity)
        unit.horizon = unit.horizon_tracker.observe(activity, sequence)
        unit.observed_at = time.monotonic()
        self._report_holder(unit)
        self._judge_beyond_sequence(unit)

    def _report_hidden(self, unit: _Unit, activity: hz.Activity) -> None:
        """Once per session with track_activities = off: it holds the committed offset while it exists."""
        hidden = {(tx.pid, tx.started): tx for tx in activity.transactions if tx.hidden}
        for identity in hidden.keys() - unit.hidden:
            tx = hidden[identity]
            log.warning(
                "%s: %s: pid %s (role %s) runs with track_activities = off: its transactions cannot be seen, so the"
                " committed offset stays where this session was first seen for as long as it exists (rows are"
                " still sent); turn track_activities on for that role", self.spec.name, unit.reader.table_name,
                tx.pid, tx.role or "?",
            )
        unit.hidden = set(hidden)

    def _report_holder(self, unit: _Unit) -> None:
        horizon = unit.horizon
        age = 0.0
        if horizon.holder and horizon.held_since:
            age = max(0.0, time.time() - tracking_key(horizon.held_since, hz.TIMESTAMPTZ_OID) / 1e6)
        self.metrics.horizon_age.labels(unit.reader.table_name, self.spec.name).set(age)
        self._report_holder_pid(unit)
        if horizon.holder and (age >= HELD_LOG_AFTER or not horizon.held_since) and horizon.holder != unit.held_by:
            log.warning(
                "%s: %s: the committed offset is held at %s by %s%s, still in progress; later rows are sent,"
                " and re-read once it ends", self.spec.name, unit.reader.table_name,
                unit.committed.position if unit.committed else "the start", horizon.holder,
                f" since {horizon.held_since}" if horizon.held_since else "",
            )
            unit.held_by = horizon.holder
        elif not horizon.holder:
            unit.held_by = ""

    def _reread_sealed(self, unit: _Unit, max_in_flight: int) -> None:
        """Re-read, once, every range the horizon (or the lag) has passed, oldest first."""
        lag = unit.reader.lag
        now = time.monotonic()
        while unit.unsealed and len(self._queued) < max_in_flight:
            late = unit.unsealed[0]
            if not isinstance(late, _LateRead):
                if not sealed(late, unit.horizon, lag, now):
                    return
                late = unit.unsealed[0] = _LateRead(late)
            if not late.reading:
                unit.unsealed.popleft()
                continue
            r = late.range
            with self.spec.statement(f"re-reading late rows of {unit.reader.table_name}"):
                rows = unit.reader.read_late_rows(r.lo, r.hi, r.snapshot, late.after)
            if rows:
                late.after = unit.reader.offset_after(rows).position
                new = [row for row, message_id in zip(rows, unit.reader.encoder.message_ids(rows)) if message_id not in r.sent]
                self._report_below_horizon(unit, r, new)
                if new:
                    late.outstanding += 1
                    self._queue_rows(unit, new, r.hi, lambda late=late: self._late_batch_done(unit, late))
                    log.info("%s: %s: %d row(s) committed late behind the read frontier, sent now",
                             self.spec.name, unit.reader.table_name, len(new))
            if len(rows) < unit.reader.batch_size:
                late.reading = False
                unit.unsealed.popleft()
                if not late.outstanding:
                    self._release(unit, r.hold)

    def _report_below_horizon(self, unit: _Unit, range_: ReadRange, rows: list[tuple]) -> None:
        """Rows a re-read found below the horizon observed before their range was read: their values
        were written by the client (or a trigger), which the guard cannot protect; rows like them in
        ranges already sealed were missed. Versioned reads (delete/mark) also re-find updated rows:
        not counted there."""
        reader = unit.reader
        if not rows or unit.horizon_tracker is None or reader.plan is None or reader.plan.versioned:
            return
        found = below_horizon(range_, [tracking_key(row[0], reader.tracking.type_oid) for row in rows])
        if found:
            self.metrics.rows_below_horizon.labels(reader.table_name, self.spec.name).inc(found)
            log.warning(
                "%s: %s: %d row(s) re-read below the horizon observed before their range was read: %s was written"
                " by the client (or a trigger), not by the writing transaction's %s; such rows are sent when a"
                " re-read finds them, but missed in ranges already complete (set source.lag, or let the %s)",
                self.spec.name, reader.table_name, found, reader.tracking.column,
                "sequence" if reader.tracking.kind is TrackingKind.SEQUENCE else "clock",
                "sequence fill it" if reader.tracking.kind is TrackingKind.SEQUENCE else "default fill it",
            )

    def _late_batch_done(self, unit: _Unit, late: _LateRead) -> None:
        late.outstanding -= 1
        if not late.reading and not late.outstanding:
            self._release(unit, late.range.hold)

    def _release(self, unit: _Unit, hold) -> None:
        unit.progress.acked(hold)
        self._commit(unit)

    # -- queueing ----------------------------------------------------------------------------

    def _queue_read(self, unit: _Unit, read: ReadBatch) -> None:
        """A batch from the read frontier: queued, its range held if it may still get late rows."""
        reader = unit.reader
        lo = unit.read_after.position if unit.read_after is not None and unit.read_after.position else None
        encoded_after = replace(read.after, rows=unit.rows + len(read.rows))
        hold = None
        if reader.late_commits:
            hi = encoded_after.position
            horizon = read.horizon
            hi_key = tracking_key(hi[0], reader.tracking.type_oid) if unit.horizon_tracker is not None else 0
            at_once = unit.horizon_tracker is not None and reader.lag <= 0 and horizon is not None and hi_key < horizon.key
            self._warn_beyond_sequence(unit, hi_key)
            if not at_once:  # a transaction in progress may still commit a row into this range
                hold = ("sealed", next(self._holds))
                unit.progress.sent(hold)
                unit.unsealed.append(ReadRange(hold, lo, hi, hi_key, read.snapshot, time.monotonic(), SentIds([]),
                                               horizon.key if horizon is not None else None))
        seq = self._queue_rows(unit, read.rows, encoded_after.position, None, keep_ids=hold is not None)
        if seq is None:
            return
        if self.spec.config.source.verbose_logging:
            log.info("%s: %s: %d row(s) after %s, up to %s (batch %d%s)", self.spec.name, reader.table_name,
                     len(read.rows), lo or "the start", encoded_after.position, seq,
                     ", held until transactions in progress end" if hold is not None else "")
        unit.progress.sent(seq, encoded_after)
        queued = self._queued[seq]
        queued.then = lambda: self._release(unit, seq)
        unit.read_after = encoded_after

    def _warn_beyond_sequence(self, unit: _Unit, hi_key) -> None:
        """Rows above the sequence were given their ids by the client: their range seals only once
        the sequence passes them (nextval may still hand out those ids); say so once.

        Above the value observed *before* the read is not enough: rows committed between that
        observation and the read's snapshot took later values of the sequence. The suspicion is
        judged at the next observation, made after the read (``_judge_beyond_sequence``).
        """
        tracker = unit.horizon_tracker
        if tracker is None or unit.warned_sequence or tracker.last_sequence is None or unit.beyond_sequence:
            return
        if unit.reader.tracking.kind is TrackingKind.SEQUENCE and hi_key > tracker.last_sequence:
            unit.beyond_sequence = (hi_key, tracker.observations)

    def _judge_beyond_sequence(self, unit: _Unit) -> None:
        tracker = unit.horizon_tracker
        if unit.beyond_sequence is None or tracker.observations <= unit.beyond_sequence[1]:
            return
        hi_key, _ = unit.beyond_sequence
        unit.beyond_sequence = None
        if hi_key > tracker.last_sequence:  # still above a value read after the read: nextval never gave it
            log.warning(
                "%s: %s: rows with %s above its sequence %s (at %d) were given their values by the client;"
                " the committed offset stays below them until the sequence passes them (set source.lag to seal"
                " them by time instead)", self.spec.name, unit.reader.table_name, unit.reader.tracking.column,
                unit.reader.tracking.sequence, tracker.last_sequence,
            )
            unit.warned_sequence = True

    def _queue_rows(self, unit: _Unit, rows: list[tuple], hi: tuple, then, keep_ids: bool = False) -> int | None:
        """Encode ``rows`` and put them on the queue; the seq of the batch (None when stopping).

        ``keep_ids``: the batch opens an unsealed range, whose re-read must know what it sent.
        """
        reader = unit.reader
        encoded = reader.encoder.encode_batch(rows, self.spec.config.source.include_metadata, unit.rows)
        if keep_ids:
            unit.unsealed[-1].sent = SentIds(encoded.messages.ids)
        self._seq += 1
        event = encode_batch_event(encoded.messages, worker=self.spec.name, seq=self._seq,
                                   stream=self.spec.config.iggy.stream, topic=reader.topic, table=reader.table_name,
                                   where=f"table {reader.table_name}")
        if not put_event(self.batch_queue, event, self._waiting):
            return None  # stopping while the queue is full: this batch was never sent, nothing to commit
        self._queued[self._seq] = _Queued(unit, encoded.identities, hi, then)
        unit.rows += len(rows)
        self.metrics.rows_read.labels(reader.table_name, self.spec.name).inc(len(rows))
        self.metrics.batches_queued.labels(self.spec.name).inc()
        self._in_flight_changed()
        return self._seq

    # -- acknowledgements --------------------------------------------------------------------

    def _take_acks(self, timeout: float) -> None:
        """Handle every ack that arrived; wait up to ``timeout`` for the first one."""
        wait = timeout
        while self._queued:
            try:
                ack: AckEvent = get_event(self.ack_queue, timeout=wait) if wait > 0 else get_event_nowait(self.ack_queue)
            except Empty:
                return
            wait = 0
            queued = self._queued.pop(ack.seq, None)
            self._after_ack(queued)
            if queued is not None:
                self._acknowledged(queued)
        self._in_flight_changed()

    def _acknowledged(self, queued: _Queued) -> None:
        """Iggy has the batch: run its deletes/marks on exactly the versions sent, then let it count.

        A row updated between the read and the ack is a newer version, which was not sent:
        it is left alone, read again (up to the batch's last position) and published; the
        batch counts only once those are acknowledged and acted on too.
        """
        unit = queued.unit
        if queued.identities:
            with self.spec.statement(f"deleting or marking acknowledged rows of {unit.reader.table_name}"):
                survivors = unit.reader.apply_acknowledged(queued.identities)
                rows = unit.reader.read_rows_by_key(survivors, queued.hi) if survivors else []
        else:
            survivors, rows = [], []
        if survivors:
            if rows and self._queue_rows(unit, rows, queued.hi, queued.then) is not None:
                return
        queued.then()

    def _commit(self, unit: _Unit) -> None:
        committable = unit.progress.committable()
        if committable is not None and committable is not unit.committed:
            unit.committed = committable
            self.offsets.submit(unit.key, committable)
            self.metrics.offset_commits.labels(self.spec.name).inc()
            self.spec.progressed()

    def _finish(self) -> None:
        """Graceful stop: wait (bounded) for the acks of batches already sent, then commit them."""
        deadline = time.monotonic() + self.spec.config.supervisor.stop_timeout
        while self._queued and time.monotonic() < deadline:
            self._take_acks(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
        if self._queued:
            log.warning("%s: %d batch(es) not acknowledged before the deadline; they will be re-sent", self.spec.name, len(self._queued))
        self._finished = True
        self.offsets.close()


    # -- what readiness and the metrics see (workers/health_monitor.py, pgsource/metrics) ----------------

    def _caught_up(self) -> None:
        """A read found nothing more to read: progress, as far as readiness is concerned."""
        if self.spec.liveness is not None:
            self.spec.liveness.caught_up()

    def _in_flight_changed(self) -> None:
        """The batches-in-flight gauge, and since when the oldest unacknowledged batch has waited."""
        self.metrics.in_flight.labels(self.spec.name).set(len(self._queued))
        oldest = next(iter(self._queued), None)  # acks come in seq order: the first key is the oldest
        health = self._health
        if oldest != health.oldest_seq:
            health.oldest_seq, health.oldest_since = oldest, time.monotonic()
        if self.spec.liveness is not None:
            self.spec.liveness.waiting(health.oldest_since if oldest is not None else None)

    def _after_ack(self, queued: _Queued | None) -> None:
        """Iggy has a batch: the newest acknowledged tracking value (offset age), and who waits now."""
        if queued is not None and queued.hi:
            epoch = _tracking_epoch(queued.unit.reader, queued.hi[0])
            if epoch is not None:
                key = queued.unit.key
                self._health.newest_acked[key] = max(epoch, self._health.newest_acked.get(key, epoch))
        self._in_flight_changed()

    def _report_health(self) -> None:
        """Once a second: now minus the newest acknowledged tracking value, per table with a time column."""
        now = time.monotonic()
        if now - self._health.reported_at < 1.0:
            return
        self._health.reported_at = now
        wall = time.time()
        for unit in self.units:
            newest = self._health.newest_acked.get(unit.key)
            if newest is not None:
                self.metrics.offset_age.labels(unit.reader.table_name, self.spec.name).set(max(0.0, wall - newest))

    def _report_holder_pid(self, unit: _Unit) -> None:
        match = re.match(r"pid (\d+)", unit.horizon.holder or "")
        self.metrics.horizon_holder.labels(unit.reader.table_name, self.spec.name).set(int(match[1]) if match else 0)


@dataclass
class _HealthHooks:
    oldest_seq: int | None = None  # the oldest batch not acknowledged yet
    oldest_since: float = 0.0  # since when it has been the oldest (monotonic)
    newest_acked: dict = field(default_factory=dict)  # unit key -> epoch seconds of the newest acknowledged tracking value
    reported_at: float = 0.0


def _tracking_epoch(reader: TableReader, text: str) -> float | None:
    """Epoch seconds of a time tracking value (timestamptz, timestamp in the writers' TimeZone, date); else None."""
    tracking = reader.tracking
    if tracking is None or tracking.type_oid not in (hz.TIMESTAMPTZ_OID, hz.TIMESTAMP_OID, hz.DATE_OID):
        return None
    try:
        key = tracking_key(text, tracking.type_oid)
    except ValueError:
        return None
    if key in (float("inf"), float("-inf")):
        return None
    if tracking.type_oid == hz.DATE_OID:
        return key * 86400.0
    seconds = key / 1e6
    if tracking.type_oid == hz.TIMESTAMP_OID and reader.time_zone:  # local time of the writers' zone: shift to UTC
        from datetime import datetime, timezone
        from zoneinfo import ZoneInfo

        try:
            local = datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=ZoneInfo(reader.time_zone))
            seconds -= local.utcoffset().total_seconds()
        except (ValueError, OverflowError, KeyError):
            return None
    return seconds


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
