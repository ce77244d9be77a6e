"""``PollWorker``: one process that polls its tables and hands batches to the publisher.

It owns its psycopg2 connection and its units (``pgsource/polling/unit.py``: a table or a
chunk each). A batch is sent through the outbox (``pgsource/pipeline/outbox.py``) as soon
as it is read (up to ``max_in_flight_batches`` unacknowledged), and the next read starts
after it: the *read frontier* never waits. What is *committed* is decided by the
``OffsetCommitter`` (``pgsource/polling/committer.py``), one ``ProgressTracker`` per unit:
an offset counts only once its batch, and every batch before it, was acknowledged by
Iggy, had its deletes/marks applied, and its range of the tracking column is sealed
against transactions still in progress
(``pgsource/polling/late_commits.py``): a range read while such a transaction could still commit
a row into it holds the offset until the horizon passes it, and is then re-read once for
the row versions its first read could not see. A crash therefore re-reads only what was
not committed, and those messages carry the same deterministic ids.

Batches are read by COPY where the C build and the server allow it: several batches in one
statement, each framed while it arrives (``pgsource/polling/batches.py``); they wait in the
unit's ``pending`` until the outbox takes them, one by one, as the row path's would.

Reading ahead: when a read returned a full batch, the read of the batches after it starts
at once on a helper thread (psycopg2 lets go of the GIL while PostgreSQL works), while
this thread queues the batches it has. It pays only while there are more cores
than workers (1 worker on 2 cores: +26 % rows/s), so it is off otherwise, and for tables
whose acknowledgements run SQL (delete/mark).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

from pgsource.errors import PrerequisiteError, TableChanged
from pgsource.pg import connect as pg
from pgsource.pg import horizon as hz
from pgsource.pg.horizon import TrackingKind
from pgsource.pipeline.block import encode_block
from pgsource.polling.batches import Batch
from pgsource.polling.committer import OffsetCommitter, Work
from pgsource.polling.late_commits import ReadRange, below_horizon, sealed, tracking_key
from pgsource.polling.offset_age import OffsetAge
from pgsource.polling.schema_changes import send_changed_shapes
from pgsource.polling.unit import PollUnit, open_unit
from pgsource.state import FileStateStore, PollingOffset
from pgsource.state.writer import OffsetWriter
from workers.base import SourceWorker

log = logging.getLogger("pgsource.poller")

OBSERVE_EVERY = 0.05  # seconds: a horizon older than this is observed again before a read
# ... while the reads stay below the horizon (a backlog: the last read was a full batch sealed at once),
# a staler horizon only seals less (it never goes down), so it is observed less often: once a second
# keeps the metrics and the catalog check going, and no read waits for an observation it does not need
OBSERVE_BELOW_EVERY = 1.0
HELD_LOG_AFTER = 10.0  # seconds a transaction may hold the horizon before it is logged


@dataclass
class _LateRead:
    """The re-read of one sealed range, which may take several batches (its ``Work`` is ``range.hold``)."""

    range: ReadRange
    after: tuple | None = None  # where the next page of the re-read starts


class PollWorker(SourceWorker):
    """Polls its tables; see the module docstring for when offsets move."""

    def boot(self) -> None:
        config = self.config
        self.store = FileStateStore(config.state.dir)
        self.conn = pg.connect(config.source.connection_string, application_name=f"pgsource-{self.name}")
        self._conn_lock = threading.Lock()  # a read-ahead's COPY and this thread's statements take turns
        self.spec.backends(self.conn)
        self.units = [open_unit(self.conn, config, self.store, unit, self.name) for unit in self.spec.units] or [
            open_unit(self.conn, config, self.store, None, self.name)]
        self.offset_age = OffsetAge(self.metrics.offset_age, self.name)
        self.committer = OffsetCommitter(
            self.units, OffsetWriter(self.store, config.state.commit_interval), resend=self._send_rows,
            statement=self._statement, offset_age=self.offset_age,
            counter=self.metrics.offset_commits.labels(self.name), progressed=self.spec.progressed)
        self.outbox = self.open_outbox(self.committer)
        self._finished = False
        reads_ahead = self.spec.workers_total < _cores() and not any(u.reader.acts_on_rows for u in self.units)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="read-ahead") if reads_ahead else None

    @contextmanager
    def _statement(self, what: str):
        """Statements on the worker's connection, one at a time across threads: psycopg2 lets go of the
        connection between the chunks of a COPY, so a statement from this thread while the read-ahead's
        COPY runs would break both (PGRES_COPY_OUT)."""
        with self._conn_lock, self.spec.statement(what):
            yield

    def serve(self) -> None:
        send_changed_shapes(self.config, self.store, self.units, self.spec.units, self.outbox, self.name)
        self._loop(self.units, self.config.source.batch_size)

    def close(self) -> None:
        try:
            if not self._finished:  # leaving on an error: still commit what Iggy already has
                self._finish()
        except Exception as exc:  # noqa: BLE001 - the error that got us here is what gets reported
            log.warning("%s: could not commit the last acknowledged batches (%s); they will be re-sent", self.name, exc)
        finally:
            if self._reader is not None:  # the connection is closed only once no read uses it
                self._reader.shutdown(wait=True, cancel_futures=True)
            self.conn.close()

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, units: list[PollUnit], batch_size: int) -> None:
        """Read, send, take acks, until stopped; every read takes ``batch_size`` rows at most."""
        source = self.config.source
        max_in_flight = source.max_in_flight_batches
        outbox = self.outbox
        while not self._should_stop():
            self.notify()
            outbox.take_acks()
            self.offset_age.report(units)
            now = time.monotonic()
            read_any = False
            for unit in units:
                if outbox.in_flight >= max_in_flight or self._should_stop():
                    break
                if unit.next_poll > now:
                    continue
                if unit.ahead is None:
                    self._observe_if_stale(unit)
                if unit.unsealed:
                    self._reread_sealed(unit, max_in_flight, batch_size)
                read = self._read(unit, batch_size)
                if read.rows < batch_size:
                    unit.next_poll = time.monotonic() + source.poll_interval
                    self._caught_up()
                elif self._reader is not None and not unit.pending:  # a full batch: more may follow, read them now
                    self._observe_if_stale(unit)  # before that read's snapshot
                    unit.ahead_horizon = unit.horizon
                    unit.ahead = self._reader.submit(self._read_batches, unit, read.after, batch_size,
                                                     unit.rows + read.rows)
                unit.below_horizon = False
                if read.rows:
                    read_any = True
                    unit.below_horizon = self._queue_read(unit, read) and read.rows >= batch_size
                elif unit.reader.exact and read.after is not None and read.after != unit.read_after:  # xid8: a tick ended empty
                    unit.read_after = read.after
                    self.committer.mark(unit, read.after)
            if not read_any:
                pause = max(0.0, min(min(u.next_poll for u in units) - time.monotonic(), 0.5))
                if outbox.in_flight:
                    outbox.take_acks(timeout=pause)
                else:
                    self.stop_event.wait(pause)
            elif outbox.in_flight >= max_in_flight:
                outbox.take_acks(timeout=0.5)
        self._finish()

    def _read(self, unit: PollUnit, batch_size: int) -> Batch:
        """The batch after ``unit.read_after``: one its last read left pending, the read-ahead's, or a new read's."""
        if not unit.pending:
            ahead, unit.ahead = unit.ahead, None
            if ahead is not None:
                batches, horizon = ahead.result(), unit.ahead_horizon
            else:
                batches, horizon = self._read_batches(unit, unit.read_after, batch_size, unit.rows), unit.horizon
            for batch in batches:
                batch.horizon = horizon
            unit.pending.extend(batches)
        batch = unit.pending.popleft()
        if batch.error is not None:
            raise batch.error
        return batch

    def _read_batches(self, unit: PollUnit, after: PollingOffset | None, batch_size: int, read_rows: int) -> list[Batch]:
        with self._statement(f"reading a batch of {unit.reader.table_name}"):
            return unit.batches.read(after, batch_size, read_rows)

    def _finish(self) -> None:
        """Graceful stop: wait (bounded) for the acks of batches already sent, then commit them."""
        if not self.outbox.wait_for_acks(deadline=time.monotonic() + self.config.supervisor.stop_timeout):
            log.warning("%s: %d batch(es) not acknowledged before the deadline; they will be re-sent", self.name,
                        self.outbox.in_flight)
        self._finished = True
        self.committer.close()

    # -- late commits ------------------------------------------------------------------------

    def _observe_if_stale(self, unit: PollUnit) -> None:
        every = OBSERVE_BELOW_EVERY if unit.below_horizon else OBSERVE_EVERY
        if unit.horizon_tracker is not None and time.monotonic() - unit.observed_at >= every:
            self._observe(unit)

    def _observe(self, unit: PollUnit) -> None:
        """The horizon, observed in its own statements before the next data snapshot.

        The catalog entries of the column (its default, its sequence's settings) are read with
        the activity, after the sequence's value: a change (``ALTER SEQUENCE ... CACHE 50``) is seen
        before this observation's horizon seals anything. The worker then plans the table again
        from its committed offset (a restart: ``TableChanged``), which refuses what no horizon
        protects any more (CACHE > 1: exit 3) and goes on after a harmless change. A sequence that
        went back (setval, RESTART) stops the table (exit 3): its next ids lie below ids read."""
        tracking = unit.reader.tracking
        reader = unit.reader
        with self._statement(f"observing the transactions in progress for {reader.table_name}"):
            sequence = hz.read_sequence(self.conn, tracking.sequence) if tracking.kind is TrackingKind.SEQUENCE else None
            activity = hz.observe_activity(self.conn, tracking.watch)
        problem = hz.watch_problem(tracking, activity.fingerprint)
        if problem is not None:
            with self._statement(f"checking the columns of {reader.table_name}"):
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

    def _report_hidden(self, unit: PollUnit, activity: hz.Activity) -> None:
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

    def _report_holder(self, unit: PollUnit) -> None:
        horizon = unit.horizon
        age = 0.0
        if horizon.holder and horizon.held_since:
            age = max(0.0, time.time() - tracking_key(horizon.held_since, hz.TIMESTAMPTZ_OID) / 1e6)
        self.metrics.horizon_age.labels(unit.reader.table_name, self.name).set(age)
        match = re.match(r"pid (\d+)", horizon.holder or "")
        self.metrics.horizon_holder.labels(unit.reader.table_name, self.name).set(int(match[1]) if match else 0)
        if horizon.holder and (age >= HELD_LOG_AFTER or not horizon.held_since) and horizon.holder != unit.held_by:
            log.warning(
                "%s: %s: the committed offset is held at %s by %s%s, still in progress; later rows are sent,"
                " and re-read once it ends", self.name, unit.reader.table_name,
                unit.committed.position if unit.committed else "the start", horizon.holder,
                f" since {horizon.held_since}" if horizon.held_since else "",
            )
            unit.held_by = horizon.holder
        elif not horizon.holder:
            unit.held_by = ""

    def _reread_sealed(self, unit: PollUnit, max_in_flight: int, batch_size: int) -> None:
        """Re-read, once, every range the horizon (or the lag) has passed, oldest first."""
        lag = unit.reader.lag
        now = time.monotonic()
        while unit.unsealed and self.outbox.in_flight < max_in_flight:
            late = unit.unsealed[0]
            if not isinstance(late, _LateRead):
                if not sealed(late, unit.horizon, lag, now):
                    return
                late = unit.unsealed[0] = _LateRead(late)
            r = late.range
            with self._statement(f"re-reading late rows of {unit.reader.table_name}"):
                rows = unit.reader.read_late_rows(r.lo, r.hi, r.snapshot, batch_size, late.after)
            if rows:
                late.after = unit.reader.offset_after(rows).position
                new = [row for row, message_id in zip(rows, unit.reader.encoder.message_ids(rows)) if message_id not in r.sent]
                self._report_below_horizon(unit, r, new)
                if new:
                    if self._send_rows(r.hold, new, r.hi) is None:
                        return  # stopping: the range stays held, and the next start reads it again
                    log.info("%s: %s: %d row(s) committed late behind the read frontier, sent now",
                             self.name, unit.reader.table_name, len(new))
            if len(rows) < batch_size:
                unit.unsealed.popleft()
                self.committer.close_work(r.hold)  # its range is read: done once its batches are

    def _report_below_horizon(self, unit: PollUnit, range_: ReadRange, rows: list[tuple]) -> None:
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

    # -- sending -----------------------------------------------------------------------------

    def _queue_read(self, unit: PollUnit, read: Batch) -> bool:
        """A batch from the read frontier: sent, its range held if it may still get late rows.
        True when the horizon observed before its read had already passed it (sealed at once)."""
        reader = unit.reader
        lo = unit.read_after.position if unit.read_after is not None and unit.read_after.position else None
        encoded_after = replace(read.after, rows=unit.rows + read.rows)
        unsealed = None
        at_once = False
        if reader.late_commits:
            hi = encoded_after.position
            horizon = read.horizon
            hi_key = tracking_key(hi[0], reader.tracking.type_oid) if unit.horizon_tracker is not None else 0
            at_once = unit.horizon_tracker is not None and reader.lag <= 0 and horizon is not None and hi_key < horizon.key
            self._warn_beyond_sequence(unit, hi_key)
            if not at_once:  # a transaction in progress may still commit a row into this range
                hold = self.committer.open_work(unit, open=True)
                unsealed = ReadRange(hold, lo, hi, hi_key, read.snapshot, time.monotonic(), read.sent_ids(),
                                     horizon.key if horizon is not None else None)
                unit.unsealed.append(unsealed)
        work = self.committer.open_work(unit, encoded_after)
        seq = self._send_batch(work, read, encoded_after.position)
        if seq is None:
            return at_once
        if self.config.source.verbose_logging:
            log.info("%s: %s: %d row(s) after %s, up to %s (batch %d%s)", self.name, reader.table_name,
                     read.rows, lo or "the start", encoded_after.position, seq,
                     ", held until transactions in progress end" if unsealed is not None else "")
        unit.read_after = encoded_after
        return at_once

    def _warn_beyond_sequence(self, unit: PollUnit, hi_key) -> None:
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

    def _judge_beyond_sequence(self, unit: PollUnit) -> None:
        tracker = unit.horizon_tracker
        if unit.beyond_sequence is None or tracker.observations <= unit.beyond_sequence[1]:
            return
        hi_key, _ = unit.beyond_sequence
        unit.beyond_sequence = None
        if hi_key > tracker.last_sequence:  # still above a value read after the read: nextval never gave it
            log.warning(
                "%s: %s: rows with %s above its sequence %s (at %d) were given their values by the client;"
                " the committed offset stays below them until the sequence passes them (set source.lag to seal"
                " them by time instead)", self.name, unit.reader.table_name, unit.reader.tracking.column,
                unit.reader.tracking.sequence, tracker.last_sequence,
            )
            unit.warned_sequence = True

    def _send_rows(self, work: Work, rows: list[tuple], hi: tuple) -> int | None:
        """Rows read again (late commits, updated before their delete/mark) as one batch of ``work``."""
        return self._send_batch(work, work.unit.batches.frame_rows(rows, work.unit.rows), hi)

    def _send_batch(self, work: Work, batch: Batch, hi: tuple) -> int | None:
        """Send ``batch`` (framed) as one block of ``work``; its seq (None when stopping: not sent)."""
        unit = work.unit
        seq = self.outbox.send(encode_block(unit.head, batch.parts, where=f"table {unit.head.table}"))
        if seq is None:
            return None  # stopping while the channel is full: this batch was never sent, nothing to commit
        self.committer.sent(seq, work, batch.identities, hi)
        unit.rows += batch.rows
        self.metrics.rows_read.labels(unit.head.table, self.name).inc(batch.rows)
        return seq

    def _caught_up(self) -> None:
        """A read found nothing more to read: progress, as far as readiness is concerned."""
        if self.spec.liveness is not None:
            self.spec.liveness.caught_up()


def _cores() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count, where known)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_poll_worker(spec, channel, ack_queue, status_queue, stop_event) -> None:
    """Process target (a module-level function, so the spawn start method can import it)."""
    PollWorker(spec, channel, ack_queue, status_queue, stop_event).run()
