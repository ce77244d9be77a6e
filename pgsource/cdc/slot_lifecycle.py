"""``SlotPreparation``: what a CDC worker does before it streams (``workers/cdc_worker.py``, its only user).

A missing slot is created only on the first start (``pgsource/cdc/slot_history.py``); the initial snapshot,
and the snapshots of tables that join an existing slot (``pgsource/pg/publications.py``,
``pgsource/cdc/snapshot.py``), must be acknowledged completely before the slot's record says so and
streaming begins; an interrupted one is done again at the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from pgsource.cdc.publication_shapes import apply_shape_changes, review_shapes
from pgsource.cdc.slot_history import identity_problem, missing_slot_problem, slot_was_used
from pgsource.cdc.snapshot import send_snapshot
from pgsource.errors import PrerequisiteError
from pgsource.lsn import format_lsn
from pgsource.pg import connect as pg
from pgsource.pg import publications as pubs
from pgsource.pg import replication as rep
from pgsource.pg.statements import commit
from pgsource.pipeline.progress import ProgressTracker
from pgsource.state import SlotProgress, SnapshotPhase, TableJoin

log = logging.getLogger("pgsource.cdc")


class SlotPreparation:
    """Mixed into ``CdcWorker``: the slot, its record, its snapshots and the tables joining it."""


    def _prepare_slot(self) -> SlotProgress | None:
        """The slot ready to stream from, and its record; None when a snapshot is left unfinished."""
        source = self.spec.config.source
        stored = self.store.load(self.key, SlotProgress)
        where = f"state {self.store.path(self.key)}"
        publication = pubs.load_publications(self.conn, source.publication_name).get(self.publication)
        self._check_publication(publication)
        self._apply_shapes(publication)
        state = rep.slot_state(self.conn, self.slot)
        if state is None:
            forced = False
            problem = missing_slot_problem(self.slot, stored, where)
            if problem is not None:
                if source.on_missing_slot != "snapshot":
                    raise PrerequisiteError(problem)
                log.warning("%s: replication slot %s is missing; on_missing_slot: snapshot accepts the gap:"
                            " a new slot and a snapshot of %s", self.spec.name, self.slot,
                            ", ".join(t.qualified for t in self.tables))
                forced = True
            # The publication first: pgoutput reads it in the catalog as of each change decoded.
            if publication is None:
                pubs.create_publication(self.conn, self.publication, self.tables)
            else:
                pubs.add_tables(self.conn, self.publication, [t for t in self.tables if not publication.holds(t)])
            keep = stored is not None and not stored.streamed and not forced  # an unfinished first attempt
            return self._create_slot(forced or source.snapshot == "initial", stored.generation if keep else 0)
        problem = identity_problem(self.slot, stored, self.identity, where)
        if problem is not None:
            raise PrerequisiteError(problem)
        state = rep.wait_until_free(self.conn, state)
        rep.check_slot(self.conn, state)
        self._start_progress(state.confirmed_flush_lsn)
        if stored is not None and not stored.streamed:
            return self._redo_initial_snapshot(stored, publication)
        record = stored if slot_was_used(stored) else SlotProgress(self.slot, SnapshotPhase.NONE, lsn=state.confirmed_flush_lsn)
        record = self._check_identities(record)  # pgsource/cdc/identity.py: renamed, replaced, unpublished, rejoin
        every = not record.tables and not record.rejoin  # a record of an older version: all its publication holds
        captured = [
            t.qualified for t in self.tables
            if publication is not None and publication.holds(t) and (every or t.qualified in record.tables)
        ]
        joining = [t for t in self.tables if t.qualified not in captured]
        if joining:
            record = self._join(record, joining, publication)
            if record is None:
                return None
        record = dataclasses.replace(
            record, lsn=max(record.lsn, state.confirmed_flush_lsn), system_identifier=self.identity.system_identifier,
            timeline=self.identity.timeline, tables=tuple(sorted(set(captured) | {t.qualified for t in joining})),
        )
        self.store.commit(self.key, record)
        return record

    def _check_publication(self, publication: pubs.Publication | None) -> None:
        if publication is None or publication.via_root:
            return
        relations = pubs.describe_relations(self.conn, self.tables)
        partitioned = [name for name, rel in relations.items() if rel is not None and rel.partitioned]
        if partitioned:
            raise PrerequisiteError(pubs.via_root_problem(self.publication, partitioned))

    def _apply_shapes(self, publication: pubs.Publication | None) -> None:
        """Column lists and row filters as configured: refused ones stop the start (PostgreSQL's
        reason), changed ones are altered in the publication now, before any change is read."""
        review = review_shapes(self.conn, publication, self.tables)
        if review.problems:
            raise PrerequisiteError("; ".join(review.problems))
        for note in review.notes:
            log.warning("%s: %s", self.spec.name, note)
        apply_shape_changes(self.conn, self.publication, review.changes, self.spec.name)

    def _start_progress(self, lsn: int) -> None:
        self.progress = ProgressTracker(lsn, order=int)
        self._recorded_lsn = self._confirmed_lsn = lsn
        self.metrics.confirmed_lsn.labels(self.spec.name).set(lsn)

    def _create_slot(self, snapshot: bool, generation: int) -> SlotProgress | None:
        """A new slot; with ``snapshot`` the tables' rows at its consistent point go out first."""
        identity = {"system_identifier": self.identity.system_identifier, "timeline": self.identity.timeline}
        tables = tuple(sorted(t.qualified for t in self.tables))
        if not snapshot:
            lsn = rep.create_slot(self.conn, self.slot)
            self._start_progress(lsn)
            record = SlotProgress(self.slot, SnapshotPhase.NONE, lsn=lsn, consistent_lsn=lsn, tables=tables, **identity)
            self.store.commit(self.key, record, force=True)  # a new slot: its history starts here
            return record
        # Recorded before the slot exists: from here on an interruption makes the next start go on.
        self.store.commit(self.key, SlotProgress(self.slot, SnapshotPhase.IN_PROGRESS, generation=generation,
                                                 tables=tables, **identity), force=True)
        source = self.spec.config.source
        replication = pg.connect_replication(source.connection_string, application_name=f"pgsource-{self.spec.name}-snapshot")
        try:
            lsn, snapshot_name = rep.create_slot_exporting(replication, self.slot)
            generation = generation or lsn
            record = SlotProgress(self.slot, SnapshotPhase.IN_PROGRESS, lsn=lsn, consistent_lsn=lsn, tables=tables,
                                  generation=generation, **identity)
            self.store.commit(self.key, record, force=True)
            self._start_progress(lsn)
            reader = self._snapshot_reader(snapshot_name)
        finally:
            replication.close()  # the snapshot was imported (or creating it failed)
        log.info("%s: initial snapshot of %s at %s", self.spec.name, ", ".join(tables), format_lsn(lsn))
        if not self._snapshot(reader, self.tables, dict.fromkeys(tables, generation)):
            return None
        record = dataclasses.replace(record, phase=SnapshotPhase.DONE)
        self.store.commit(self.key, record)
        log.info("%s: initial snapshot acknowledged, streaming from %s", self.spec.name, format_lsn(lsn))
        return record

    def _redo_initial_snapshot(self, stored: SlotProgress, publication: pubs.Publication | None) -> SlotProgress | None:
        """Nothing was streamed from the slot: it still stands at its consistent point. Read the
        rows again now, then stream from that point (see ``pgsource/cdc/snapshot.py``, a redo).

        A table configured since the first attempt joins the publication first, under the cut's
        lock: a transaction that wrote it before it joined has committed before the new snapshot."""
        log.warning("%s: the initial snapshot of slot %s was not acknowledged completely; sending it again",
                    self.spec.name, self.slot)
        missing = [t for t in self.tables if publication is None or not publication.holds(t)]
        if missing:
            if publication is None:
                pubs.create_publication(self.conn, self.publication, [])
            self._cut(missing, missing, snapshot=False)
        generation = stored.generation or stored.consistent_lsn or self._recorded_lsn
        reader = self._snapshot_reader(None)
        tables = [t.qualified for t in self.tables]
        if not self._snapshot(reader, self.tables, dict.fromkeys(tables, generation)):
            return None
        record = dataclasses.replace(stored, phase=SnapshotPhase.DONE, generation=generation, tables=tuple(sorted(tables)),
                                     system_identifier=self.identity.system_identifier, timeline=self.identity.timeline)
        self.store.commit(self.key, record)
        return record

    def _join(self, record: SlotProgress, tables: list, publication: pubs.Publication | None) -> SlotProgress | None:
        """Tables that join the streaming slot: a cut, then (``snapshot: initial``) their rows at it.

        The join is recorded before the publication changes, so that a table is never taken as
        captured while its rows before the cut were not all acknowledged. A join interrupted
        after its cut keeps that cut (``with snapshot: never`` it is simply done); its rows are
        read again in a new snapshot, the stream then replays its changes since the cut.
        """
        names = [t.qualified for t in tables]
        # with snapshot: initial every joining table's rows; tables `pgsource rejoin` named, always
        with_rows = set(names) if self.spec.config.source.snapshot == "initial" else set(record.rejoin) & set(names)
        snapshot = bool(with_rows)
        joins = {join.table: join for join in record.joins}
        for name in names:
            if name not in joins or joins[name].done:  # a table that left and comes back joins anew
                joins[name] = TableJoin(name, 0, 0)
        record = dataclasses.replace(record, joins=tuple(joins.values()))
        self.store.commit(self.key, record)
        cut_now = [t for t in tables if joins[t.qualified].start_lsn == 0]
        reader = None
        if cut_now:
            add = [t for t in cut_now if publication is None or not publication.holds(t)]
            if publication is None:  # the slot outlived its publication
                pubs.create_publication(self.conn, self.publication, [])
            cut, reader = self._cut(cut_now, add, snapshot)
            for t in cut_now:
                old = joins[t.qualified]
                joins[t.qualified] = TableJoin(t.qualified, cut.lsn, old.generation or cut.lsn)
            record = dataclasses.replace(record, joins=tuple(joins.values()))
            self.store.commit(self.key, record)
            log.info("%s: %s joined slot %s at %s", self.spec.name, ", ".join(t.qualified for t in cut_now),
                     self.slot, format_lsn(cut.lsn))
        if snapshot:
            # The tables cut now are read in the cut's snapshot; those cut by an interrupted
            # attempt, in a new one (their stream then replays the changes since their cut).
            earlier = [t for t in tables if t not in cut_now and t.qualified in with_rows]
            generations = {name: joins[name].generation for name in names}
            rows_now = [t for t in cut_now if t.qualified in with_rows]
            if reader is not None and not rows_now:
                reader.close()
            elif rows_now and not self._snapshot(reader, rows_now, generations):
                return None
            if earlier and not self._snapshot(self._snapshot_reader(None), earlier, generations):
                return None
        for name in names:
            joins[name] = dataclasses.replace(joins[name], done=True)
        record = dataclasses.replace(record, joins=tuple(joins.values()))
        self.store.commit(self.key, record)
        return record

    def _cut(self, tables: list, add: list, snapshot: bool):
        """``table_cut`` once its lock can be had; returns the cut and a reader in its snapshot (or None).

        Before asking for the lock it waits, without queueing, for the transactions writing the
        tables now (a long one would otherwise hold every new writer behind the cut's lock)."""
        reader = self._open_reader() if snapshot else None  # opened before the lock: writers wait less
        while True:
            writers = pubs.current_writers(self.conn, tables)
            said = 0.0
            while writers:
                self.notify()
                if self._should_stop():
                    raise SystemExit(0)
                if time.monotonic() - said > 10:
                    said = time.monotonic()
                    log.info("%s: %s joins %s once %d transaction(s) writing it end", self.spec.name,
                             ", ".join(t.qualified for t in tables), self.publication, len(writers))
                self.stop_event.wait(0.2)
                writers &= pubs.current_writers(self.conn, tables)
            try:
                with pubs.table_cut(self.conn, self.publication, tables, add, export=snapshot) as cut:
                    if reader is not None:
                        rep.import_snapshot(reader, cut.snapshot)
                return cut, reader
            except pubs.LockBusy as exc:
                log.warning("%s: adding %s to %s waits for its lock (%s)", self.spec.name,
                            ", ".join(t.qualified for t in tables), self.publication, exc)
                self.notify()
                if self._should_stop():
                    raise SystemExit(0) from None

    def _open_reader(self):
        source = self.spec.config.source
        return pg.connect(source.connection_string, application_name=f"pgsource-{self.spec.name}-snapshot", autocommit=False)

    def _snapshot_reader(self, snapshot_name: str | None):
        """A connection in a REPEATABLE READ transaction: in an exported snapshot, or in its own."""
        reader = self._open_reader()
        self.spec.backends(reader)
        if snapshot_name is not None:
            rep.import_snapshot(reader, snapshot_name)
        else:
            rep.begin_repeatable_read(reader)
        return reader

    def _snapshot(self, reader, tables: list, generations: dict[str, int], relations=None) -> bool:
        """Send the rows and wait until Iggy acknowledged every one; False if stopped before.
        ``relations``: per table, the partition to read instead (``pgsource/cdc/identity.py``)."""
        try:
            read = send_snapshot(reader, self.spec.config, tables, generations, self._send, self._waiting,
                                 worker=self.spec.name, relations=relations)
            commit(reader)
        finally:
            reader.close()
        self._wait_for_acks(deadline=None)
        done = read and self.progress.in_flight == 0
        if not done:
            log.warning("%s: stopped before every snapshot message of %s was acknowledged", self.spec.name,
                        ", ".join(t.qualified for t in tables))
        return done
