"""``SlotLifecycle``: a CDC slot made ready to stream, before the worker streams from it.

``prepare()`` returns a ``SlotPlan`` (``pgsource/cdc/slot_plan.py``): where streaming starts,
the per-table cuts, the snapshots to send first, and the record that will say they were
sent. A missing slot is created only on the first start (``pgsource/cdc/slot_history.py``);
the initial snapshot, and the snapshots of tables that join an existing slot
(``pgsource/pg/publications.py``, ``pgsource/cdc/snapshot.py``), must be acknowledged
completely before the slot's record says so (``finish()``) and streaming begins; an
interrupted one is done again at the next start. What must survive an interruption is
stored as it happens: a first attempt's generation, a join and its cut.

The lifecycle sends nothing itself: the worker sends the plan's snapshots through its
pipeline (``SnapshotSender``). The slot's record is stored through ``SlotRecords``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from pgsource.cdc.identity import check_identities
from pgsource.cdc.publication_shapes import apply_shape_changes, review_shapes
from pgsource.cdc.slot_history import identity_problem, slot_was_used, with_oids
from pgsource.cdc.slot_plan import (
    SlotNames,
    SlotPlan,
    SlotSettings,
    SnapshotWork,
    captured_and_joining,
    cut_joins,
    end_joins,
    new_slot,
    open_joins,
    streaming_record,
)
from pgsource.cdc.slot_record import SlotRecords
from pgsource.cdc.snapshot import SnapshotConnections
from pgsource.config.model import TableConfig
from pgsource.errors import PrerequisiteError
from pgsource.lsn import format_lsn
from pgsource.pg import publications as pubs
from pgsource.pg import replication as rep
from pgsource.state import SlotProgress, SnapshotPhase

log = logging.getLogger("pgsource.cdc")

WRITERS_SAID_EVERY = 10.0  # seconds between log lines while a join waits for the tables' writers


class SlotLifecycle:
    """Prepares one slot (see the module docstring).

    Inputs: the worker's connection, the slot's names, the configured tables and their oids
    now (``oids``), the record's owner, the settings it takes of ``source.*``, the factory of
    its other connections, and ``pause(seconds)``: wait a little while a join waits for
    writers or a lock (it keeps the worker alive, and ends it when it must stop)."""

    def __init__(self, conn, names: SlotNames, tables: list[TableConfig], oids: dict[str, int],
                 records: SlotRecords, settings: SlotSettings, connections: SnapshotConnections,
                 pause: Callable[[float], None]) -> None:
        self.conn = conn
        self.names = names
        self.tables = tables
        self.oids = oids
        self.records = records
        self.settings = settings
        self.connections = connections
        self.pause = pause
        self.identity: rep.SystemIdentity | None = None  # the database's, read by ``prepare``

    @property
    def slot(self) -> str:
        return self.names.slot

    def prepare(self) -> SlotPlan:
        """The slot checked (or created) and its joins cut; the plan of what goes out before streaming."""
        stored = self.records.load()
        self.identity = rep.system_identity(self.conn)
        publication = pubs.load_publications(self.conn, self.settings.publication_name).get(self.names.publication)
        self._check_publication(publication)
        self._apply_shapes(publication)
        state = rep.slot_state(self.conn, self.slot)
        if state is None:
            return self._create(stored, publication)
        problem = identity_problem(self.slot, stored, self.identity, self.records.where)
        if problem is not None:
            raise PrerequisiteError(problem)
        state = rep.wait_until_free(self.conn, state)
        rep.check_slot(self.conn, state)
        start = state.confirmed_flush_lsn
        if stored is not None and not stored.streamed:
            return self._redo_initial_snapshot(stored, publication, start)
        record = stored if slot_was_used(stored) else SlotProgress(self.slot, SnapshotPhase.NONE, lsn=start)
        record = check_identities(self.conn, self.names, self.tables, self.oids, record)  # renamed, replaced, rejoin
        captured, joining = captured_and_joining(record, self.tables,
                                                 lambda t: publication is not None and publication.holds(t))
        snapshots = []
        if joining:
            record, snapshots = self._join(record, joining, publication)
        tables = captured + [t.qualified for t in joining]
        return self._plan(streaming_record(record, start, self.identity, tables), start, snapshots)

    def finish(self, plan: SlotPlan) -> SlotProgress:
        """Every snapshot of ``plan`` was acknowledged: the record says so from now on."""
        record = self.records.save(plan.record)
        if plan.done:
            log.info("%s: %s", self.names.worker, plan.done)
        return record

    def _plan(self, record: SlotProgress, start: int, snapshots: list[SnapshotWork], done: str = "") -> SlotPlan:
        """The plan, its record holding the oid of each table it captures."""
        return SlotPlan(with_oids(record, self.oids), start, snapshots, done)

    def _check_publication(self, publication: pubs.Publication | None) -> None:
        if publication is None or publication.via_root:
            return
        relations = pubs.describe_relations(self.conn, self.tables)
        partitioned = [name for name, rel in relations.items() if rel is not None and rel.partitioned]
        if partitioned:
            raise PrerequisiteError(pubs.via_root_problem(self.names.publication, partitioned))

    def _apply_shapes(self, publication: pubs.Publication | None) -> None:
        """Column lists and row filters as configured: refused ones stop the start (PostgreSQL's
        reason), changed ones are altered in the publication now, before any change is read."""
        review = review_shapes(self.conn, publication, self.tables)
        if review.problems:
            raise PrerequisiteError("; ".join(review.problems))
        for note in review.notes:
            log.warning("%s: %s", self.names.worker, note)
        apply_shape_changes(self.conn, self.names.publication, review.changes, self.names.worker)

    def _create(self, stored: SlotProgress | None, publication: pubs.Publication | None) -> SlotPlan:
        """A missing slot: the publication first (pgoutput reads it in the catalog as of each change
        decoded), then the slot; with a snapshot, the tables' rows at its consistent point go out first."""
        how = new_slot(self.slot, stored, self.records.where, self.settings)
        if how.gap:
            log.warning("%s: replication slot %s is missing; on_missing_slot: snapshot accepts the gap:"
                        " a new slot and a snapshot of %s", self.names.worker, self.slot,
                        ", ".join(t.qualified for t in self.tables))
        if publication is None:
            pubs.create_publication(self.conn, self.names.publication, self.tables)
        else:
            pubs.add_tables(self.conn, self.names.publication, [t for t in self.tables if not publication.holds(t)])
        identity = {"system_identifier": self.identity.system_identifier, "timeline": self.identity.timeline}
        tables = tuple(sorted(t.qualified for t in self.tables))
        if not how.snapshot:
            lsn = rep.create_slot(self.conn, self.slot)
            record = SlotProgress(self.slot, SnapshotPhase.NONE, lsn=lsn, consistent_lsn=lsn, tables=tables, **identity)
            self.records.save(record, force=True)  # a new slot: its history starts here
            return self._plan(record, lsn, [])
        # Recorded before the slot exists: from here on an interruption makes the next start go on.
        self.records.save(SlotProgress(self.slot, SnapshotPhase.IN_PROGRESS, generation=how.generation,
                                       tables=tables, **identity), force=True)
        replication = self.connections.replication()
        try:
            lsn, snapshot_name = rep.create_slot_exporting(replication, self.slot)
            generation = how.generation or lsn
            record = SlotProgress(self.slot, SnapshotPhase.IN_PROGRESS, lsn=lsn, consistent_lsn=lsn, tables=tables,
                                  generation=generation, **identity)
            self.records.save(record, force=True)
            reader = self.connections.snapshot_reader(snapshot_name)
        finally:
            replication.close()  # the snapshot was imported (or creating it failed)
        log.info("%s: initial snapshot of %s at %s", self.names.worker, ", ".join(tables), format_lsn(lsn))
        work = SnapshotWork(self.tables, dict.fromkeys(tables, generation), reader)
        return self._plan(dataclasses.replace(record, phase=SnapshotPhase.DONE), lsn, [work],
                          f"initial snapshot acknowledged, streaming from {format_lsn(lsn)}")

    def _redo_initial_snapshot(self, stored: SlotProgress, publication: pubs.Publication | None,
                               start: int) -> SlotPlan:
        """Nothing was streamed from the slot: it still stands at its consistent point. Read the
        rows again, then stream from that point (see ``pgsource/cdc/snapshot.py``, a redo).

        A table configured since the first attempt joins the publication first, under the cut's
        lock: a transaction that wrote it before it joined has committed before the new snapshot."""
        log.warning("%s: the initial snapshot of slot %s was not acknowledged completely; sending it again",
                    self.names.worker, self.slot)
        missing = [t for t in self.tables if publication is None or not publication.holds(t)]
        if missing:
            if publication is None:
                pubs.create_publication(self.conn, self.names.publication, [])
            self._cut(missing, missing, snapshot=False)
        generation = stored.generation or stored.consistent_lsn or start
        tables = [t.qualified for t in self.tables]
        record = dataclasses.replace(stored, phase=SnapshotPhase.DONE, generation=generation, tables=tuple(sorted(tables)),
                                     system_identifier=self.identity.system_identifier, timeline=self.identity.timeline)
        return self._plan(record, start, [SnapshotWork(self.tables, dict.fromkeys(tables, generation))])

    def _join(self, record: SlotProgress, tables: list[TableConfig],
              publication: pubs.Publication | None) -> tuple[SlotProgress, list[SnapshotWork]]:
        """Tables that join the streaming slot: a cut, then (``snapshot: initial``) their rows at it.
        Returns the record once their rows are acknowledged, and those rows' snapshots.

        The join is recorded before the publication changes, so that a table is never taken as
        captured while its rows before the cut were not all acknowledged. A join interrupted
        after its cut keeps that cut (with ``snapshot: never`` it is simply done); its rows are
        read again in a new snapshot, the stream then replays its changes since the cut.
        """
        names = [t.qualified for t in tables]
        record, with_rows = open_joins(record, names, self.settings.snapshot)
        self.records.save(record)
        started = {join.table: join.start_lsn for join in record.joins}
        cut_now = [t for t in tables if started[t.qualified] == 0]
        reader = None
        if cut_now:
            add = [t for t in cut_now if publication is None or not publication.holds(t)]
            if publication is None:  # the slot outlived its publication
                pubs.create_publication(self.conn, self.names.publication, [])
            cut, reader = self._cut(cut_now, add, bool(with_rows))
            record = self.records.save(cut_joins(record, [t.qualified for t in cut_now], cut.lsn))
            log.info("%s: %s joined slot %s at %s", self.names.worker, ", ".join(t.qualified for t in cut_now),
                     self.slot, format_lsn(cut.lsn))
        # The tables cut now are read in the cut's snapshot; those cut by an interrupted attempt,
        # in a new one (their stream then replays the changes since their cut).
        generations = {join.table: join.generation for join in record.joins if join.table in names}
        rows_now = [t for t in cut_now if t.qualified in with_rows]
        earlier = [t for t in tables if t not in cut_now and t.qualified in with_rows]
        snapshots = []
        if rows_now:
            snapshots.append(SnapshotWork(rows_now, generations, reader))
        elif reader is not None:
            reader.close()
        if earlier:
            snapshots.append(SnapshotWork(earlier, generations))
        return end_joins(record, names), snapshots

    def _cut(self, tables: list[TableConfig], add: list[TableConfig], snapshot: bool):
        """``table_cut`` once its lock can be had; returns the cut and a reader in its snapshot (or None).

        Before asking for the lock it waits, without queueing, for the transactions writing the
        tables now (a long one would otherwise hold every new writer behind the cut's lock)."""
        reader = self.connections.reader() if snapshot else None  # opened before the lock: writers wait less
        which = ", ".join(t.qualified for t in tables)
        while True:
            writers = pubs.current_writers(self.conn, tables)
            said = 0.0
            while writers:
                if time.monotonic() - said > WRITERS_SAID_EVERY:
                    said = time.monotonic()
                    log.info("%s: %s joins %s once %d transaction(s) writing it end", self.names.worker, which,
                             self.names.publication, len(writers))
                self.pause(0.2)
                writers &= pubs.current_writers(self.conn, tables)
            try:
                with pubs.table_cut(self.conn, self.names.publication, tables, add, export=snapshot) as cut:
                    if reader is not None:
                        rep.import_snapshot(reader, cut.snapshot)
                return cut, reader
            except pubs.LockBusy as exc:
                log.warning("%s: adding %s to %s waits for its lock (%s)", self.names.worker, which,
                            self.names.publication, exc)
                self.pause(0)
