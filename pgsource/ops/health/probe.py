"""``SourceProbe``: the supervisor's bounded questions to PostgreSQL about waiting work.

One connection of its own (``application_name`` ``pgsource-health``), every statement
under a 2 s ``statement_timeout``, serialized by a lock (the readiness thread and a
metrics scrape may ask at once). A failure closes the connection and raises
``ProbeError``; the next question connects again.

- polling: is there a row after the committed offset of one of the worker's tables
  (read from ``state.dir``, as a restart would)?
- cdc: the worker's slot in ``pg_replication_slots`` against ``pg_current_wal_lsn()``,
  tracked across ``refresh`` calls: when its confirmed position last moved, and where the
  server's flushed WAL stood then (a walsender sends only flushed WAL). Work waits when WAL was written *after* that (the slot did not
  follow it); the few bytes an idle server leaves after the confirmed position (a
  running-xacts record the walsender has not pinged about yet) are not work. An idle slot
  does not move, so ``moved_at`` is also when WAL was first seen waiting: a change written
  after an idle hour is not "no progress for an hour" (it would be 503 at once, not after
  ``stall_after``; and a probe between a commit and its acknowledgement would blip).
"""

from __future__ import annotations

import threading
import time

from pgsource.config.model import Config
from pgsource.errors import PgSourceError, ProbeError
from pgsource.lsn import format_lsn
from pgsource.pg import connect as pg
from pgsource.pg.horizon import TrackingKind
from pgsource.pg.positions import Bounds, SlotStats, bounded, rows_after, slot_stats
from pgsource.plan.assignment import WorkUnit
from pgsource.state import FileStateStore, PollingOffset

STATEMENT_TIMEOUT = 2.0
CONNECT_TIMEOUT = 3


class SourceProbe:
    def __init__(self, config: Config, assignment: dict[str, list[WorkUnit]]) -> None:
        self.config = config
        self.assignment = assignment
        self.slots = {name: units[0].slot for name, units in assignment.items() if units} if config.source.cdc else {}
        self._lock = threading.Lock()
        self._conn = None
        self._readers: dict[str, object] = {}
        self._store = FileStateStore(config.state.dir)
        self._confirmed: dict[str, tuple[int, float, int]] = {}  # slot -> (confirmed lsn, when it moved, WAL end then)
        self._stats: dict[str, SlotStats] = {}
        self._work_seen: dict[str, float] = {}  # slot -> when WAL was first seen waiting after it stood still

    # -- questions -------------------------------------------------------------------------

    def refresh(self) -> None:
        """CDC: read every slot once (to see its confirmed position move); polling: nothing."""
        if self.slots:
            self.slot_stats()

    def moved_at(self, worker: str) -> float:
        slot = self.slots.get(worker)
        found = self._confirmed.get(slot) if slot else None
        return max(found[1] if found else 0.0, self._work_seen.get(slot, 0.0))

    def waiting(self, worker: str) -> str | None:
        """What waits in PostgreSQL for ``worker``, in a few words; None when nothing does."""
        if self.config.source.cdc:
            slot = self.slots[worker]
            stats = self._stats.get(slot)
            if stats is None:
                return f"slot {slot} does not exist"
            written = self._written_since(slot, stats)
            if written:
                return (f"slot {slot}: {written} bytes of WAL written since its confirmed"
                        f" position stopped at {format_lsn(stats.confirmed_lsn)}")
            return None
        with self._lock:
            for unit in self.assignment[worker]:
                found = self._rows_after(unit)
                if found:
                    return found
        return None

    def slot_stats(self) -> dict[str, SlotStats]:
        """Slot name → its figures (one bounded query); raises ProbeError."""
        with self._lock:
            stats = self._ask(lambda conn: slot_stats(conn, list(self.slots.values())))
        now = time.monotonic()
        for slot, found in stats.items():
            previous = self._confirmed.get(slot)
            if previous is None or previous[0] != found.confirmed_lsn:
                self._confirmed[slot] = (found.confirmed_lsn, now, found.flush_lsn)
            if not self._written_since(slot, found):
                self._work_seen.pop(slot, None)
            else:
                self._work_seen.setdefault(slot, now)
        self._stats = stats
        return stats

    def _written_since(self, slot: str, stats: SlotStats) -> int:
        """Bytes of WAL flushed after the slot's confirmed position stopped moving (0: none)."""
        moved = self._confirmed.get(slot)
        wal_then = moved[2] if moved else stats.confirmed_lsn
        if stats.flush_lsn > stats.confirmed_lsn and stats.flush_lsn > wal_then:
            return stats.flush_lsn - wal_then
        return 0

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- internals ---------------------------------------------------------------------------

    def _rows_after(self, unit: WorkUnit) -> str | None:
        try:
            stored = self._store.load(unit.key, PollingOffset)
        except PgSourceError as exc:
            raise ProbeError(str(exc)) from None
        initial = self.config.source.initial_offset
        if stored is None:
            bounds = Bounds((str(initial),) if initial is not None else ())
        else:
            bounds = Bounds(stored.position, stored.chunk, stored.snapshot)
        reader = self._ask(lambda conn: self._reader(conn, unit))
        exact = reader.tracking is not None and reader.tracking.kind is TrackingKind.XID8
        if self._ask(lambda conn: rows_after(conn, reader.plan, bounds, exact=exact)):
            where = f"offset {', '.join(stored.position)}" if stored is not None and stored.position else "the start"
            return f"table {reader.table_name}: rows wait after {where}"
        return None

    def _reader(self, conn, unit: WorkUnit):
        from pgsource.polling.reader import open_reader

        reader = self._readers.get(unit.table.qualified)
        if reader is None:
            reader = self._readers[unit.table.qualified] = open_reader(conn, self.config, unit.table)
        return reader

    def _ask(self, question):
        try:
            if self._conn is None or self._conn.closed:
                self._conn = pg.connect(self.config.source.connection_string, application_name="pgsource-health",
                                        connect_timeout=CONNECT_TIMEOUT)
                bounded(self._conn, STATEMENT_TIMEOUT)
                self._readers.clear()
            return question(self._conn)
        except (PgSourceError, pg.Error) as exc:
            self._drop()
            raise ProbeError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except pg.Error:
                pass
            self._conn = None
