"""``SlotPlan``: what preparing a slot decided, and the rules that decide it (pure: no I/O).

``SlotLifecycle.prepare`` (``pgsource/cdc/slot_lifecycle.py``) asks the database and these
rules, and returns a ``SlotPlan``: the slot's record as it will stand, where streaming
starts, the LSN of each joined table's cut, and the snapshots to send (and how each is
read) before streaming may begin. The CDC worker sends them through its pipeline and,
once Iggy acknowledged every message, the lifecycle's ``finish`` stores the record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pgsource.cdc.slot_history import missing_slot_problem
from pgsource.config.model import SourceConfig, TableConfig
from pgsource.errors import PrerequisiteError
from pgsource.pg.replication import SystemIdentity
from pgsource.state import SlotProgress, TableJoin


@dataclass(frozen=True)
class SlotNames:
    """Whose slot: the worker (as logs name it), its replication slot and the publication it streams."""

    worker: str
    slot: str
    publication: str


@dataclass(frozen=True)
class SlotSettings:
    """What preparing a slot takes of ``source.*``."""

    publication_name: str  # the configured publication: it and its ``_<tag>`` siblings are pgsource's
    snapshot: Literal["initial", "never"] = "never"  # the tables' rows go out before their changes
    on_missing_slot: Literal["fail", "snapshot"] = "fail"  # a used slot gone: stop, or a new slot and a snapshot

    @classmethod
    def of(cls, source: SourceConfig) -> SlotSettings:
        return cls(source.publication_name, source.snapshot, source.on_missing_slot)


@dataclass
class SnapshotWork:
    """Rows to send, every one acknowledged, before the stream goes on: ``tables`` read in one snapshot."""

    tables: list[TableConfig]
    generations: dict[str, int]  # per table: the generation in its messages' ids (``pgsource/cdc/snapshot.py``)
    # A connection already in the snapshot to read: the new slot's exported one, or a join's
    # cut. None: a snapshot of its own, taken when the work's turn comes.
    reader: object | None = None
    relations: dict[str, tuple[str, str]] | None = None  # per table, the relation read instead (a partition)


@dataclass
class SlotPlan:
    """A prepared slot: progress starts at ``start_lsn``, the ``snapshots`` go out in order, and once
    Iggy acknowledged all of them ``record`` is stored (it then says so) and streaming begins."""

    record: SlotProgress
    start_lsn: int  # where the slot stands: its confirmed position, or a new slot's consistent point
    snapshots: list[SnapshotWork] = field(default_factory=list)
    done: str = ""  # what to log once the snapshots are acknowledged

    def starts(self, tables: list[TableConfig]) -> dict[tuple[str, str], int]:
        """Per joined table (schema, name), its cut: its changes committed before it are in its rows
        (or were never wanted), and are dropped from the stream."""
        by_name = {table.qualified: (table.schema_, table.name) for table in tables}
        return {by_name[join.table]: join.start_lsn for join in self.record.joins if join.table in by_name}


@dataclass(frozen=True)
class NewSlot:
    """How a missing slot is created."""

    snapshot: bool  # with an exported snapshot whose rows go out first
    generation: int  # of those rows' ids: an unfinished first attempt's (0: the new slot's consistent point)
    gap: bool  # the slot was used and is gone: ``on_missing_slot: snapshot`` accepted the gap


def new_slot(slot: str, stored: SlotProgress | None, where: str, settings: SlotSettings) -> NewSlot:
    """A missing slot is created without a word on the first start only (``slot_history``); an
    unfinished first attempt keeps its generation, so that its rows keep their ids."""
    problem = missing_slot_problem(slot, stored, where)
    gap = problem is not None
    if gap and settings.on_missing_slot != "snapshot":
        raise PrerequisiteError(problem)
    keep = stored is not None and not stored.streamed and not gap
    return NewSlot(gap or settings.snapshot == "initial", stored.generation if keep else 0, gap)


def captured_and_joining(record: SlotProgress, tables: list[TableConfig],
                         published: Callable[[TableConfig], bool]) -> tuple[list[str], list[TableConfig]]:
    """The configured tables the slot captures already, and those that must join it. A record of an
    older version (no tables, no rejoin) captures everything its publication holds."""
    every = not record.tables and not record.rejoin
    captured = [t.qualified for t in tables if published(t) and (every or t.qualified in record.tables)]
    return captured, [t for t in tables if t.qualified not in captured]


def open_joins(record: SlotProgress, names: list[str], snapshot: str) -> tuple[SlotProgress, set[str]]:
    """The record with a join for each of ``names`` (one that ended, for a table that left and comes
    back, starts anew), and the tables whose rows go out: every one with ``snapshot: initial``,
    those ``pgsource rejoin`` named always."""
    with_rows = set(names) if snapshot == "initial" else set(record.rejoin) & set(names)
    joins = {join.table: join for join in record.joins}
    for name in names:
        if name not in joins or joins[name].done:
            joins[name] = TableJoin(name, 0, 0)
    return dataclasses.replace(record, joins=tuple(joins.values())), with_rows


def cut_joins(record: SlotProgress, names: list[str], lsn: int) -> SlotProgress:
    """The joins of ``names`` cut at ``lsn`` (a redo keeps the generation of its first attempt)."""
    joins = {join.table: join for join in record.joins}
    for name in names:
        joins[name] = TableJoin(name, lsn, joins[name].generation or lsn)
    return dataclasses.replace(record, joins=tuple(joins.values()))


def end_joins(record: SlotProgress, names: list[str]) -> SlotProgress:
    """The joins of ``names`` done: their rows (if any were wanted) are acknowledged."""
    joins = tuple(dataclasses.replace(join, done=True) if join.table in names else join for join in record.joins)
    return dataclasses.replace(record, joins=joins)


def streaming_record(record: SlotProgress, lsn: int, identity: SystemIdentity, tables: list[str]) -> SlotProgress:
    """The record of a slot about to stream ``tables`` from ``lsn`` on the database ``identity`` names."""
    return dataclasses.replace(record, lsn=max(record.lsn, lsn), system_identifier=identity.system_identifier,
                               timeline=identity.timeline, tables=tuple(sorted(set(tables))))
