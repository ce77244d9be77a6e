"""``pgsource reset``: move a polling table's stored offset on purpose — the one deliberate
exception to "progress never moves backward".

- Polling only: a replication slot cannot move back (PostgreSQL has discarded what it
  confirmed); for CDC the way to send a table again is ``drop-slot`` and a restart with
  ``snapshot: initial``, which ``plan_reset`` says.
- It takes the ``state.dir`` lock first: it refuses while the service runs, and the service
  cannot start in the middle of it.
- ``--to VALUE``: the next run reads the rows *after* VALUE (like ``initial_offset``), which
  PostgreSQL first checks and normalizes for the tracking column's type. ``--to-start``: the
  next run starts where a first start would (``initial_offset``, else the first row).
- A table read in chunks has one offset per chunk: each is moved to VALUE clamped into its
  chunk (a chunk wholly before VALUE stays done, one wholly after starts over).
- Written with ``FileStateStore.commit(..., force=True)`` and logged (WARNING) with the old
  and new offset of every key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pgsource.config.model import Config
from pgsource.errors import ConfigError, PrerequisiteError
from pgsource.ops.admin.common import connection, find_table, units_of
from pgsource.pg import connect as pg
from pgsource.pg.horizon import TrackingKind
from pgsource.pg.positions import normalize_value
from pgsource.state import ChunkCuts, FileStateStore, PollingOffset
from pgsource.state.lock import StateLock

log = logging.getLogger("pgsource.reset")


@dataclass(frozen=True)
class OffsetMove:
    key: str
    before: PollingOffset | None
    after: PollingOffset

    def describe(self) -> str:
        return f"{self.key}: {_text(self.before)} -> {_text(self.after)}"


def _text(offset: PollingOffset | None) -> str:
    if offset is None:
        return "(nothing committed)"
    return ", ".join(offset.position) if offset.position else "(the start)"


def plan_reset(config: Config, table_name: str, to: str | None) -> list[OffsetMove]:
    """What ``reset`` would write (nothing is written): one move per stored offset of the table."""
    if config.source.cdc:
        raise ConfigError(
            "reset: a CDC replication slot cannot move backward (PostgreSQL discarded what it confirmed). To send"
            " the table again: stop pgsource, run `pgsource drop-slot --config FILE`, set source.snapshot: initial,"
            " and start it again"
        )
    store = FileStateStore(config.state.dir)
    if table_name == "custom_query" and config.source.custom_query:
        before = store.load("polling/custom_query", PollingOffset)
        start = (str(config.source.initial_offset),)
        return [OffsetMove("polling/custom_query", before, PollingOffset((to,) if to is not None else start))]
    table = find_table(config, table_name)
    from pgsource.polling.reader import open_reader

    with connection(config, "reset") as conn:
        reader = open_reader(conn, config, table)
        exact = reader.tracking is not None and reader.tracking.kind is TrackingKind.XID8
        if to is not None and exact:
            raise ConfigError(f"reset --to: table {table.qualified} is read by xid8 snapshots; only --to-start applies")
        if to is not None:
            try:
                to = normalize_value(conn, reader.plan.position_types[0], to)
            except pg.Error as exc:
                raise ConfigError(f"reset --to {to!r}: not a value of {table.qualified}.{reader.tracking_column}"
                                  f" ({reader.plan.position_types[0]}): {str(exc).strip().splitlines()[0]}") from None
    initial = config.source.initial_offset
    start = (str(initial),) if initial is not None else ()
    moves = []
    for unit in units_of(config, table):
        before = store.load(unit.key, PollingOffset)
        rows = 0 if to is None else (before.rows if before else 0)
        if unit.chunks == 1:
            moves.append(OffsetMove(unit.key, before, PollingOffset((to,) if to is not None else start, rows)))
            continue
        chunk = before.chunk if before is not None else _chunk(store, unit)
        if chunk is None:
            continue  # not cut yet: the chunks start from where a first start would anyway
        moves.append(OffsetMove(unit.key, before, PollingOffset(_clamped(to, chunk, start), rows, chunk)))
    return moves


def _chunk(store: FileStateStore, unit) -> tuple[int | None, int | None] | None:
    cuts = store.load(f"polling/{unit.table.qualified}#cuts{unit.chunks}", ChunkCuts)
    if cuts is None:
        return None
    lo = cuts.cuts[unit.chunk - 1] if unit.chunk > 0 else None
    hi = cuts.cuts[unit.chunk] if unit.chunk < unit.chunks - 1 else None
    return lo, hi


def _clamped(to: str | None, chunk: tuple[int | None, int | None], start: tuple[str, ...]) -> tuple[str, ...]:
    """Where a chunk ``[lo, hi)`` starts after a reset to ``to`` (integers: chunks need them)."""
    if to is None:
        return ()
    lo, hi = chunk
    value = int(to)
    if lo is not None and value < lo:
        return ()
    if hi is not None and value >= hi:
        return (str(hi - 1),)
    return (to,)


def apply_reset(config: Config, moves: list[OffsetMove]) -> None:
    """Write the moves under the state.dir lock (StateLockedError while the service runs), logging each."""
    if not moves:
        raise PrerequisiteError("reset: nothing to move (no offset stored for that table)")
    with StateLock(config.state.dir, "reset"):
        store = FileStateStore(config.state.dir)
        for move in moves:
            store.commit(move.key, move.after, force=True)
            log.warning("reset: %s (moved on purpose by pgsource reset; the next run reads from there)", move.describe())


def check_not_running(config: Config) -> None:
    """Fail early (before asking anything) when the service holds the lock."""
    with StateLock(config.state.dir, "reset"):
        pass
