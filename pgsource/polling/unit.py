"""``PollUnit``: the runtime state of one polled table or chunk, opened from its stored offset.

A unit has one reader and one ``ProgressTracker``: where reads stand (``read_after``, the
*read frontier*, which never waits for acks), what holds its committed offset (batches in
flight, ranges not yet sealed against late commits), and what was committed. A chunk of a
bulk load reads ``[lo, hi)`` of its table's key, cut once per table and stored
(``chunk_range``).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from pgsource.config.model import Config, TableConfig
from pgsource.pg.horizon import TrackingKind
from pgsource.pipeline.block import BlockHead
from pgsource.pipeline.progress import ProgressTracker
from pgsource.polling.batches import BatchReader
from pgsource.polling.guard import check_late_commit_guard
from pgsource.polling.late_commits import Horizon, HorizonTracker
from pgsource.polling.reader import open_reader
from pgsource.state import ChunkCuts, FileStateStore, PollingOffset

log = logging.getLogger("pgsource.poller")


class PlannedUnit(Protocol):
    """What the plan says of a unit (``pgsource/plan/assignment.py``'s ``WorkUnit``)."""

    key: str  # where its offset is stored
    table: TableConfig
    chunk: int  # its index among the table's chunks
    chunks: int  # how many chunks the table is cut into (1: not cut)


@dataclass(eq=False)
class PollUnit:
    """One table or chunk: its reader, where reads stand, what holds its offset."""

    key: str  # where its offset is stored
    reader: object  # PollingReader or CustomQueryReader
    read_after: PollingOffset | None
    progress: ProgressTracker
    head: BlockHead  # the names its batches carry to the publisher
    batches: BatchReader | None = None  # reads and frames its batches (by COPY where it can)
    rows: int = 0
    next_poll: float = 0.0
    pending: deque = field(default_factory=deque)  # Batch: read by one COPY, not sent yet (in read order)
    ahead: Future | None = None  # the read of the batches after ``read_after``, already under way
    ahead_horizon: Horizon | None = None  # the horizon observed before that read started
    horizon_tracker: HorizonTracker | None = None
    horizon: Horizon | None = None
    time_zone: str | None = "UTC"  # the zone of a timestamp/date tracking column's values (None: unknown)
    observed_at: float = 0.0
    below_horizon: bool = False  # the last read was a full batch sealed at once: a backlog below the horizon
    unsealed: deque = field(default_factory=deque)  # ReadRange, in read order
    committed: PollingOffset | None = None
    held_by: str = ""  # the horizon's holder last logged
    warned_sequence: bool = False  # rows above the sequence were reported
    beyond_sequence: tuple | None = None  # (key, observations): a read above the sequence, judged at the next one
    hidden: set = field(default_factory=set)  # (pid, backend_start) of sessions with track_activities off, reported


def open_unit(conn, config: Config, store: FileStateStore, unit: PlannedUnit | None, worker: str) -> PollUnit:
    """The unit from its stored offset (or ``initial_offset``); None: the custom query without tables."""
    source = config.source
    reader = open_reader(conn, config, unit.table if unit else None)
    key = unit.key if unit else "polling/custom_query"
    stored = store.load(key, PollingOffset)
    if unit is not None and unit.chunks > 1:
        reader.restrict_to_chunk(*chunk_range(store, unit, reader, stored))
    start = stored
    if start is None and source.initial_offset is not None:
        start = PollingOffset((str(source.initial_offset),), chunk=reader.chunk)
    batches = BatchReader(reader)
    log.info("%s: %s from %s, read by %s", worker, reader.table_name, start.position if start else "the start",
             "COPY" if batches.copy is not None else "rows")
    head = BlockHead(worker, config.iggy.stream, reader.topic, reader.table_name)
    state = PollUnit(key, reader, start, ProgressTracker(start), head, batches, rows=start.rows if start else 0,
                     committed=stored)
    if reader.late_commits:
        state.time_zone = check_late_commit_guard(conn, config, reader.table_name, reader.tracking, reader.lag)
        if reader.tracking.kind in (TrackingKind.TIME, TrackingKind.SEQUENCE) and state.time_zone:
            state.horizon_tracker = HorizonTracker(reader.tracking.kind, reader.tracking.type_oid, state.time_zone,
                                                   reader.tracking.rounding)
    if reader.plan is not None and not reader.late_commits and not reader.exact:
        log.warning("%s: %s: late_commits is off: rows that commit after later rows were read are missed",
                    worker, reader.table_name)
    elif reader.plan is None:
        log.info("%s: custom_query: rows that commit after later rows were read are not re-read", worker)
    return state


def chunk_range(store: FileStateStore, unit: PlannedUnit, reader, stored: PollingOffset | None) -> tuple[int | None, int | None]:
    """``[lo, hi)`` of one chunk: cut points computed once per table, stored, reused on restart.

    The first worker to get here (under a file lock in ``state.dir``) cuts ``[min, max]`` of
    the key into equal ranges and stores the cuts; every chunk then reads the same ones.
    The first chunk is unbounded below and the last unbounded above, so the chunks cover
    every key exactly once, and the last one goes on reading new rows incrementally.
    """
    if stored is not None and stored.chunk is not None:
        return stored.chunk
    cuts_key = f"polling/{unit.table.qualified}#cuts{unit.chunks}"
    os.makedirs(store.directory, exist_ok=True)
    with open(os.path.join(store.directory, ".chunks.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = store.load(cuts_key, ChunkCuts)
        if found is None:
            low, high = reader.key_bounds() or (0, 0)
            span = high - low + 1
            found = ChunkCuts(tuple(low + span * index // unit.chunks for index in range(1, unit.chunks)), low, high)
            store.commit(cuts_key, found)
        cuts = found.cuts
    lo = cuts[unit.chunk - 1] if unit.chunk > 0 else None
    hi = cuts[unit.chunk] if unit.chunk < unit.chunks - 1 else None
    return lo, hi
