"""A CDC worker follows its tables by identity (their OIDs), not by name.

At start (``check_identities``, called while the slot is prepared): a table configured
under a new name (renamed while pgsource was stopped, same OID) stays captured; a name
that now denotes another relation, or a table its publication lost, is refused.

While streaming (``TableWatch``, which the CDC worker asks between reads). The encoder
already captures a relation by the OID it had at boot, so a rename (of the table or its
schema, or SET SCHEMA) loses nothing. What the stream cannot show is read from the catalog
every ``WATCH_EVERY`` seconds, in one statement (two with partitioned tables), on the
worker's own connection:

- a configured name that now denotes another relation (a swap under the same name), or a
  table its publication no longer holds (ALTER PUBLICATION ... DROP TABLE): their changes
  are no longer in the slot. The worker goes on until everything written before it saw
  that is confirmed, then stops (exit 3) naming the table and both OIDs; every start refuses
  it too, until ``pgsource rejoin`` takes the relation as a new table (a join with a snapshot);
- a table dropped: its changes up to the DROP are delivered; a WARNING, the stream goes on
  (the next start asks to remove it from ``tables``);
- a partition that joined a captured partitioned table after it was created (ATTACH
  PARTITION): its rows existing before are in no change, so they are read in a snapshot
  now and sent under the table's name (``operation_type: SELECT``), before the stream goes
  on; the stream then replays the partition's changes made since the attach, which that
  snapshot may already hold: consumers converge (as after a redo, ``pgsource/cdc/snapshot.py``).
  Not with a per-table cut: that would drop the other partitions' changes. The record keeps
  the partitions whose rows were delivered; one attached while pgsource was stopped gets
  its snapshot at the next start.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from pgsource.cdc.slot_history import rename_captured, renamed_while_stopped, table_identity_problem
from pgsource.cdc.slot_plan import SlotNames, SnapshotWork
from pgsource.cdc.slot_record import SlotRecords
from pgsource.cdc.snapshot import SnapshotSender
from pgsource.config.model import TableConfig
from pgsource.errors import PrerequisiteError
from pgsource.lsn import format_lsn
from pgsource.pg import publications as pubs
from pgsource.pg import replication as rep
from pgsource.state import SlotProgress

log = logging.getLogger("pgsource.cdc")

WATCH_EVERY = 2.0  # seconds between looks at the catalog while streaming


def check_identities(conn, names: SlotNames, tables: list[TableConfig], oids: dict[str, int],
                     record: SlotProgress) -> SlotProgress:
    """At start, before any join: a table the configuration now names by its new name (renamed,
    same oid) stays captured; one whose name denotes another relation, or that its publication
    lost, is refused (exit 3); those ``pgsource rejoin`` named leave the captured ones (they join).
    ``oids``: each configured table's oid now."""
    renames = renamed_while_stopped(record, oids)
    if renames:
        record = rename_captured(record, renames)
        log.info("%s: %s: renamed while pgsource was stopped, still captured by slot %s", names.worker,
                 ", ".join(f"{old} -> {new}" for old, new in renames.items()), names.slot)
    oid_of, rejoin = record.oid_of, set(record.rejoin)
    check = [t for t in tables if t.qualified in record.tables and t.qualified in oid_of and t.qualified not in rejoin]
    found = pubs.relations_now(conn, names.publication, [(t, oid_of[t.qualified]) for t in check])
    problems = [table_identity_problem(names.slot, names.publication, t.qualified, oid_of[t.qualified],
                                       found[t.qualified]) for t in check]
    if any(problems):
        raise PrerequisiteError("; ".join(problem[1] for problem in problems if problem))
    if rejoin:
        record = dataclasses.replace(record, tables=tuple(name for name in record.tables if name not in rejoin))
    return record


class TableWatch:
    """The periodic catalog check of a streaming slot's tables, and the snapshots of attached partitions.

    Inputs: the worker's connection, the slot's names, its configured tables and their OIDs at
    boot (``oids``), the record's owner (the captured OIDs, the partitions delivered), the
    snapshot sender (partitions' rows), and ``statement`` (marks a catalog look that may take
    long, for the supervisor's heartbeat)."""

    def __init__(self, conn, names: SlotNames, tables: list[TableConfig], oids: dict[str, int],
                 records: SlotRecords, snapshots: SnapshotSender,
                 statement: Callable[[str], AbstractContextManager]) -> None:
        self.conn = conn
        self.names = names
        self.tables = tables
        self.oids = oids
        self.records = records
        self.snapshots = snapshots
        self._statement = statement
        self._watched_at = 0.0
        self._halt: tuple[str, int] | None = None  # (why, lsn): stop once everything before lsn is confirmed
        self._dropped: frozenset[str] = frozenset()

    def look(self, confirmed_lsn: int, before_snapshot: Callable[[], None] | None = None) -> None:
        """Every ``WATCH_EVERY`` seconds: the tables' identities and partitions (module docstring).
        ``confirmed_lsn``: the slot's confirmed position (a halt waits for it); ``before_snapshot``
        sends what was read of the stream before a partition's rows (the snapshot is newer)."""
        if self._halt is not None and confirmed_lsn >= self._halt[1]:
            raise PrerequisiteError(self._halt[0])
        now = time.monotonic()
        if now - self._watched_at < WATCH_EVERY:
            return
        self._watched_at = now
        names, record = self.names, self.records.record
        oid_of = record.oid_of
        tables = [t for t in self.tables if t.qualified in oid_of]
        with self._statement(f"looking up the tables of slot {names.slot}"):
            found = pubs.relations_now(self.conn, names.publication, [(t, oid_of[t.qualified]) for t in tables])
        for table in tables:
            problem = table_identity_problem(names.slot, names.publication, table.qualified, oid_of[table.qualified],
                                             found[table.qualified])
            if problem is not None:
                self._noticed(table, oid_of[table.qualified], *problem)
        if record.partitions:
            self._deliver_partitions(before_snapshot)

    def _noticed(self, table: TableConfig, oid: int, kind: str, line: str) -> None:
        """A dropped table: a WARNING once, the stream goes on. Replaced or unpublished: stop once
        every change before now is confirmed (``look`` raises then)."""
        if kind == "dropped" and table.qualified not in self._dropped:
            self._dropped |= {table.qualified}
            log.warning("%s: table %s (oid %d) was dropped; its changes up to the DROP are delivered, the stream"
                        " goes on; remove it from source.tables before the next start", self.names.worker,
                        table.qualified, oid)
        elif kind in ("replaced", "unpublished") and self._halt is None:
            lsn = rep.current_insert_lsn(self.conn)  # after every commit so far, the swap's included
            self._halt = (line, lsn)
            log.error("%s: %s; stopping once every change before %s is delivered", self.names.worker, line,
                      format_lsn(lsn))

    def partition_trees(self) -> dict[str, dict[int, pubs.Partition]]:
        """The partitions of the configured partitioned tables now, by table (read before any snapshot
        of them: a partition attached after this look is snapshotted again, never missed)."""
        roots = {oid: name for name, oid in self.oids.items()}
        partitioned = pubs.published_partitioned(self.conn, list(roots))
        trees = pubs.partition_trees(self.conn, partitioned)
        return {roots[root]: {p.oid: p for p in parts} for root, parts in trees.items()}

    def settle(self, trees: dict[str, dict[int, pubs.Partition]]) -> bool:
        """At start, once the slot is prepared: partitions attached while stopped get their snapshot;
        tables without a list (first start, a join, an older record) take ``trees``, read before
        their snapshot. False when stopped before those rows were all acknowledged."""
        known = self.records.record.partitions_of
        fresh = {name: tuple(sorted(tree)) for name, tree in trees.items() if name not in known}
        if fresh:
            self.records.save(dataclasses.replace(self.records.record,
                                                  partitions=tuple(sorted({**known, **fresh}.items()))))
        return self._deliver_partitions(None, trees)

    def _deliver_partitions(self, before_snapshot, trees=None) -> bool:
        """Snapshot every partition attached since the record's list; False when stopped before its
        rows were all acknowledged (the list is not updated: the next start sends them again)."""
        trees = self.partition_trees() if trees is None else trees
        known = self.records.record.partitions_of
        by_name = {t.qualified: t for t in self.tables}
        for name, tree in trees.items():
            if name not in known or set(tree) == set(known[name]):
                continue
            new = {oid: part for oid, part in tree.items() if oid not in known[name]}
            for part in _to_snapshot(new):
                log.warning("%s: partition %s was attached to %s while captured; sending its rows as %s (SELECT)",
                            self.names.worker, _name(part), name, name)
                if before_snapshot is not None:
                    before_snapshot()  # what was read of the stream goes first: the snapshot is newer
                generation = rep.current_flush_lsn(self.conn)
                work = SnapshotWork([by_name[name]], {name: generation}, relations={name: (part.schema, part.name)})
                if not self.snapshots.deliver([work]):
                    return False
            partitions = {**known, name: tuple(sorted(tree))}
            record = self.records.save(dataclasses.replace(self.records.record,
                                                           partitions=tuple(sorted(partitions.items()))))
            known = record.partitions_of
        return True

def _to_snapshot(new: dict[int, pubs.Partition]) -> list[pubs.Partition]:
    """The new partitions whose rows are not in any change: those attached (not created as a
    partition), except below another one read anyway (reading a partition reads its own)."""
    attached = {oid for oid, part in new.items() if part.attached}
    out = []
    for oid in sorted(attached):
        parent, covered = new[oid].parent, False
        while parent in new:
            covered = covered or parent in attached
            parent = new[parent].parent
        if not covered:
            out.append(new[oid])
    return out


def _name(part: pubs.Partition) -> str:
    from pgsource.config.names import message_name

    return message_name(part.schema, part.name)
