"""The typed records kept in ``state.dir``: what each kind of progress is, not a dict of extras.

Every record knows its ``kind`` (the file says which record it holds) and, where positions
can be compared, its ``position_key``: the store refuses to replace a record by one whose
key is lower (progress never moves backward, except through ``pgsource reset``).

Files written before these records existed (``{"cursor", "rows", "done", "extra"}``)
are read as the record their key implies (``upgrade_legacy``).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar


class SnapshotPhase(str, Enum):
    """Where the initial snapshot of a CDC slot stands."""

    IN_PROGRESS = "in_progress"  # the slot was created for it; rows are being sent
    DONE = "done"  # every snapshot message was acknowledged: stream from the consistent point
    NONE = "none"  # no snapshot was asked for when the slot was created


@dataclass(frozen=True)
class PollingOffset:
    """A polling position: the text of the position columns of the last committed row.

    ``position`` holds one value (the tracking value, e.g. from ``initial_offset``) or all
    position columns (tracking value, then tie-breakers). The next read starts after it.
    On disk it is still written under the key ``cursor`` (files stay readable both ways).
    ``rows`` counts the rows read up to it (balanced partitioning continues from there).
    ``chunk`` is ``[lo, hi)`` of the tracking column when the table is read in chunks.
    ``snapshot`` (xid8 tracking) is the ``pg_snapshot`` that ends the rows committed so far;
    ``tick`` the one that ends the rows being read now (``position`` is the place inside it).
    """

    kind: ClassVar[str] = "polling"

    position: tuple[str, ...]
    rows: int = 0
    chunk: tuple[int | None, int | None] | None = None
    snapshot: str | None = None
    tick: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "cursor": list(self.position),
            "rows": self.rows,
            "chunk": list(self.chunk) if self.chunk is not None else None,
            "snapshot": self.snapshot,
            "tick": self.tick,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PollingOffset:
        chunk = raw.get("chunk")
        return cls(
            tuple(str(v) for v in raw["cursor"]),
            int(raw.get("rows", 0)),
            (chunk[0], chunk[1]) if chunk is not None else None,
            raw.get("snapshot"),
            raw.get("tick"),
        )

    def position_key(self) -> tuple | None:
        """A key ordered like PostgreSQL orders the position, when every value's order is known."""
        if self.snapshot is not None or self.tick is not None:
            return None  # xid8: snapshots are not totally ordered; the tracker keeps their order
        keys = tuple(_order_key(value) for value in self.position)
        return None if not keys or any(k is None for k in keys) else keys


@dataclass(frozen=True)
class ChunkCuts:
    """Where a table read in ``chunks`` is cut: computed once, reused by every chunk and restart."""

    kind: ClassVar[str] = "chunk_cuts"

    cuts: tuple[int, ...]
    low: int
    high: int

    def to_json(self) -> dict[str, Any]:
        return {"cuts": list(self.cuts), "low": self.low, "high": self.high}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ChunkCuts:
        return cls(tuple(int(c) for c in raw["cuts"]), int(raw["low"]), int(raw["high"]))

    def position_key(self) -> None:
        return None


@dataclass(frozen=True)
class TableJoin:
    """A table that joined a slot already streaming (added to the configuration later).

    ``start_lsn`` is the cut: changes of the table in transactions committing before it are
    covered by the table's snapshot (or were never wanted, with ``snapshot: never``) and are
    not sent; changes committing at or after it are streamed. ``generation`` goes into the
    ids of the table's snapshot messages (the cut of the first attempt, kept by a redo).
    ``done``: every snapshot message of the table was acknowledged (or none was needed).
    """

    table: str
    start_lsn: int
    generation: int
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "start_lsn": self.start_lsn, "generation": self.generation, "done": self.done}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TableJoin:
        return cls(str(raw["table"]), int(raw["start_lsn"]), int(raw["generation"]), bool(raw.get("done", False)))


@dataclass(frozen=True)
class SlotProgress:
    """What pgsource knows of a CDC slot it uses, beyond what the slot itself keeps.

    ``lsn`` is the last position confirmed to the slot (the slot is the authority; this
    copy lets a start tell "the slot I used is gone" from "first start").
    ``system_identifier`` and ``timeline`` name the database the slot lived on.
    ``tables`` are the tables the slot streams (empty: not known, a record of an older
    version: every configured table of its publication). ``generation`` goes into the ids of
    the initial snapshot's messages (the consistent point of its first attempt, kept by a
    redo); ``joins`` are the tables added while the slot was already streaming.

    A table is captured by its identity, not its name: ``oids`` holds the relation each of
    ``tables`` was (a start refuses a name that now denotes another one), ``partitions`` the
    partitions of a partitioned table whose rows were delivered (one attached later gets a
    snapshot), ``rejoin`` the tables ``pgsource rejoin`` asked to take anew (joined with a
    snapshot at the next start). Records without them (older versions) are read as empty.
    """

    kind: ClassVar[str] = "slot"

    slot: str
    phase: SnapshotPhase = SnapshotPhase.NONE
    lsn: int = 0
    consistent_lsn: int = 0  # the slot's consistent point (the snapshot's LSN) when it was created
    system_identifier: str = ""
    timeline: int = 0
    tables: tuple[str, ...] = field(default_factory=tuple)
    generation: int = 0
    joins: tuple[TableJoin, ...] = field(default_factory=tuple)
    oids: tuple[tuple[str, int], ...] = field(default_factory=tuple)  # (table, pg_class oid), sorted
    partitions: tuple[tuple[str, tuple[int, ...]], ...] = field(default_factory=tuple)  # (table, partition oids)
    rejoin: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "phase": self.phase.value,
            "lsn": self.lsn,
            "consistent_lsn": self.consistent_lsn,
            "system_identifier": self.system_identifier,
            "timeline": self.timeline,
            "tables": list(self.tables),
            "generation": self.generation,
            "joins": [join.to_json() for join in self.joins],
            "oids": dict(self.oids),
            "partitions": {table: list(oids) for table, oids in self.partitions},
            "rejoin": list(self.rejoin),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SlotProgress:
        return cls(
            raw["slot"],
            SnapshotPhase(raw.get("phase", SnapshotPhase.NONE.value)),
            int(raw.get("lsn", 0)),
            int(raw.get("consistent_lsn", 0)),
            str(raw.get("system_identifier", "")),
            int(raw.get("timeline", 0)),
            tuple(raw.get("tables", ())),
            int(raw.get("generation", 0)),
            tuple(TableJoin.from_json(join) for join in raw.get("joins", ())),
            tuple(sorted((str(table), int(oid)) for table, oid in (raw.get("oids") or {}).items())),
            tuple(sorted((str(table), tuple(sorted(int(o) for o in oids)))
                         for table, oids in (raw.get("partitions") or {}).items())),
            tuple(str(table) for table in raw.get("rejoin", ())),
        )

    @property
    def oid_of(self) -> dict[str, int]:
        return dict(self.oids)

    @property
    def partitions_of(self) -> dict[str, tuple[int, ...]]:
        return dict(self.partitions)

    @property
    def streamed(self) -> bool:
        """The slot was streamed from (its initial snapshot, if any, had finished)."""
        return self.phase is not SnapshotPhase.IN_PROGRESS

    def position_key(self) -> int:
        return self.lsn


@dataclass(frozen=True)
class ShardRecord:
    """The shard this replica's ``state.dir`` belongs to (its offsets and slots are that shard's)."""

    kind: ClassVar[str] = "shard"

    index: int
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ShardRecord:
        return cls(int(raw["index"]), int(raw["count"]))

    def position_key(self) -> None:
        return None


class BackfillPhase(str, Enum):
    RUNNING = "running"
    DONE = "done"  # every row was read and acknowledged
    CANCELLED = "cancelled"
    FAILED = "failed"  # the table cannot be backfilled (no key, a --where PostgreSQL refuses): logged


@dataclass(frozen=True)
class Backfill:
    """One backfill of a table (``pgsource snapshot``) and how far it got.

    ``last_key`` is the key (the key columns' text) of the last row of the last chunk whose
    messages Iggy acknowledged: a restart reads on after it. ``generation`` (the request's
    LSN) goes into the ids of its messages, with the table and the key.
    """

    id: str
    table: str
    generation: int
    chunk_size: int
    where: str | None = None
    last_key: tuple[str, ...] | None = None  # None: nothing acknowledged yet, start at the first key
    rows: int = 0  # rows sent and acknowledged
    estimated_rows: int = 0  # the planner's estimate when it started (progress, ETA)
    started_at: float = 0.0  # epoch seconds
    phase: BackfillPhase = BackfillPhase.RUNNING

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "table": self.table, "generation": self.generation, "chunk_size": self.chunk_size,
                "where": self.where, "last_key": list(self.last_key) if self.last_key is not None else None,
                "rows": self.rows, "estimated_rows": self.estimated_rows, "started_at": self.started_at,
                "phase": self.phase.value}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Backfill:
        key = raw.get("last_key")
        return cls(str(raw["id"]), str(raw["table"]), int(raw["generation"]), int(raw["chunk_size"]), raw.get("where"),
                   tuple(str(v) for v in key) if key is not None else None, int(raw.get("rows", 0)),
                   int(raw.get("estimated_rows", 0)), float(raw.get("started_at", 0.0)),
                   BackfillPhase(raw.get("phase", BackfillPhase.RUNNING.value)))


@dataclass(frozen=True)
class BackfillRecord:
    """The backfills of one slot (``cdc-backfills/<slot>``, beside the slot's record): the running
    ones, and the last finished ones (so that a request the slot replays is not run twice)."""

    kind: ClassVar[str] = "backfills"

    slot: str
    backfills: tuple[Backfill, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "backfills": [backfill.to_json() for backfill in self.backfills]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BackfillRecord:
        return cls(str(raw["slot"]), tuple(Backfill.from_json(item) for item in raw.get("backfills", ())))

    def position_key(self) -> None:
        return None

    @property
    def running(self) -> list[Backfill]:
        return [backfill for backfill in self.backfills if backfill.phase is BackfillPhase.RUNNING]


def backfills_key(slot: str) -> str:
    """Where a slot's backfills are kept: beside its record (``cdc/<slot>``), under a prefix of their
    own (whatever reads every ``cdc/`` key reads slot records)."""
    return f"cdc-backfills/{slot}"


def shapes_key(slot: str | None = None, table: str | None = None) -> str:
    """Where the announced shapes are kept: a slot's (``cdc-shapes/<slot>``), or a polled table's
    (``polling-shapes/<reference>``)."""
    return f"cdc-shapes/{slot}" if slot is not None else f"polling-shapes/{table}"


@dataclass(frozen=True)
class TableShape:
    """A table's columns as last announced to consumers: (name, type) in order; ``generation``
    counts the changes announced (polling's schema-change ids), or the LSN of the last (CDC)."""

    table: str
    columns: tuple[tuple[str, str], ...]
    generation: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "columns": [list(column) for column in self.columns], "generation": self.generation}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TableShape:
        return cls(str(raw["table"]), tuple((str(n), str(t)) for n, t in raw["columns"]), int(raw.get("generation", 0)))


@dataclass(frozen=True)
class ShapeRecord:
    """The shapes consumers were told of (``cdc-shapes/<slot>``, ``polling-shapes/<table>``): the
    baseline a start compares the table's columns with, so a change made while pgsource was
    stopped is announced too."""

    kind: ClassVar[str] = "shapes"

    tables: tuple[TableShape, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"tables": [shape.to_json() for shape in self.tables]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ShapeRecord:
        return cls(tuple(TableShape.from_json(item) for item in raw.get("tables", ())))

    def position_key(self) -> None:
        return None

    def get(self, table: str) -> TableShape | None:
        return next((shape for shape in self.tables if shape.table == table), None)

    def with_shape(self, shape: TableShape) -> ShapeRecord:
        return ShapeRecord(tuple(s for s in self.tables if s.table != shape.table) + (shape,))


RECORDS: dict[str, type] = {record.kind: record for record in (PollingOffset, ChunkCuts, SlotProgress, ShardRecord,
                                                              BackfillRecord, ShapeRecord)}
Record = PollingOffset | ChunkCuts | SlotProgress | ShardRecord | BackfillRecord | ShapeRecord


def upgrade_legacy(key: str, raw: dict[str, Any]) -> Record:
    """A state file of the first format (``cursor``/``rows``/``done``/``extra``) as its record."""
    extra = raw.get("extra") or {}
    if key.startswith("cdc/"):
        phase = extra.get("snapshot")
        return SlotProgress(key.removeprefix("cdc/"), SnapshotPhase(phase) if phase else SnapshotPhase.NONE)
    if "cuts" in extra:
        return ChunkCuts(tuple(int(c) for c in extra["cuts"]), int(extra.get("min", 0)), int(extra.get("max", 0)))
    chunk = extra.get("chunk")
    return PollingOffset(
        tuple(str(v) for v in raw.get("cursor", ())), int(raw.get("rows", 0)),
        (chunk[0], chunk[1]) if chunk is not None else None,
    )


def snapshot_xmin(snapshot: str) -> int:
    """The xmin of a ``pg_snapshot`` text (``xmin:xmax:xip,...``)."""
    return int(snapshot.split(":", 1)[0])


def _order_key(text: str) -> Any:
    """A Python value ordered like PostgreSQL orders the column's text, where that is certain.

    Integers (and xid8) compare as integers; timestamps as PostgreSQL prints them in UTC
    (``2024-01-15 10:30:00.5+00``) as datetimes; anything else (text under a collation,
    numeric with exponent, BC dates, infinity) as unknown (None), which skips the check.
    """
    if text.lstrip("-").isdigit():
        return (0, int(text))
    try:
        moment = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return (1, moment)
