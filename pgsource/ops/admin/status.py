"""``pgsource status``: per table the committed offset and the rows behind it; per CDC slot its state.

Read-only and safe while the service runs: offsets are read from ``state.dir`` the way a
restart would read them, and every query is bounded (10 s); a count that does not finish
in time is reported as unknown instead of waiting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pgsource.config.model import Config
from pgsource.lsn import format_lsn
from pgsource.ops.admin.common import cdc_slots, committed_at, connection, units_of
from pgsource.pg import connect as pg
from pgsource.pg.horizon import TrackingKind
from pgsource.pg.positions import Bounds, rows_after, slot_stats
from pgsource.state import BackfillRecord, FileStateStore, PollingOffset, SlotProgress, backfills_key
from pgsource.state.lock import holder

COUNT_TIMEOUT = 10.0


@dataclass
class TableStatus:
    table: str
    key: str
    offset: list[str] | None  # the committed position; None = nothing committed yet
    rows_sent: int
    rows_behind: int | None  # None = unknown (timed out, or custom_query)
    committed_at: float | None
    note: str = ""


@dataclass
class SlotStatus:
    worker: str
    slot: str
    exists: bool
    active_pid: int | None = None
    wal_status: str | None = None
    confirmed_lsn: str | None = None
    bytes_behind: int | None = None  # pg_current_wal_lsn() - confirmed_flush_lsn
    retained_wal_bytes: int | None = None  # pg_current_wal_lsn() - restart_lsn
    snapshot: str | None = None  # the stored phase of the initial snapshot
    acknowledged_lsn: str | None = None  # what pgsource recorded as acknowledged (when it records it)
    backfills: list[dict] = field(default_factory=list)  # running backfills (pgsource snapshot): the record's


def backfill_line(backfill: dict) -> str:
    """One running backfill for ``status``'s text: table, id, rows of the estimate, where it stands."""
    where = f", after key ({', '.join(backfill['last_key'])})" if backfill["last_key"] else ", no chunk acknowledged yet"
    return (f"backfill {backfill['id']} of {backfill['table']}: {backfill['rows']} of ~{backfill['estimated_rows']}"
            f" row(s) sent{where}" + (f", where {backfill['where']}" if backfill["where"] else ""))


@dataclass
class Status:
    mode: str
    running: str | None  # "pid 123 (run)" while a pgsource holds state.dir
    tables: list[TableStatus]
    slots: list[SlotStatus]

    def to_json(self) -> dict:
        return asdict(self)


def collect_status(config: Config) -> Status:
    store = FileStateStore(config.state.dir)
    running = holder(config.state.dir)
    with connection(config, "status", COUNT_TIMEOUT) as conn:
        if config.source.cdc:
            return Status("cdc", running, [], _slots(config, store, conn))
        return Status("polling", running, _tables(config, store, conn), [])


def _tables(config: Config, store: FileStateStore, conn) -> list[TableStatus]:
    from pgsource.polling.reader import open_reader

    out = []
    if config.source.custom_query and not config.source.tables:
        stored = store.load("polling/custom_query", PollingOffset)
        return [TableStatus("custom_query", "polling/custom_query", list(stored.position) if stored else None,
                            stored.rows if stored else 0, None, committed_at(store, "polling/custom_query"),
                            "rows behind are unknown for a custom_query")]
    for table in config.source.tables:
        reader = open_reader(conn, config, table)
        exact = reader.tracking is not None and reader.tracking.kind is TrackingKind.XID8
        for unit in units_of(config, table):
            stored = store.load(unit.key, PollingOffset)
            initial = config.source.initial_offset
            if stored is None:
                bounds = Bounds((str(initial),) if initial is not None else ())
            else:
                bounds = Bounds(stored.position, stored.chunk, stored.snapshot)
            note = ""
            if stored is None and unit.chunks > 1:
                note = "chunk not started: rows behind counted over the whole table"
            try:
                behind = rows_after(conn, reader.plan, bounds, exact=exact, count=True)
            except pg.Error as exc:
                behind, note = None, f"rows behind unknown: {str(exc).strip().splitlines()[0]}"
            out.append(TableStatus(table.qualified, unit.key, list(stored.position) if stored else None,
                                   stored.rows if stored else 0, behind, committed_at(store, unit.key), note))
    return out


def _slots(config: Config, store: FileStateStore, conn) -> list[SlotStatus]:
    names = {worker: slot for worker, (slot, _) in cdc_slots(conn, config).items()}
    stats = slot_stats(conn, list(names.values()))
    out = []
    for worker, slot in names.items():
        stored = store.load(f"cdc/{slot}", SlotProgress)
        found = stats.get(slot)
        status = SlotStatus(worker, slot, found is not None, snapshot=stored.phase.value if stored else None,
                            acknowledged_lsn=format_lsn(stored.lsn) if stored and stored.lsn else None)
        backfills = store.load(backfills_key(slot), BackfillRecord)
        status.backfills = [backfill.to_json() for backfill in backfills.running] if backfills else []
        if found is not None:
            status.active_pid = found.active_pid
            status.wal_status = found.wal_status
            status.confirmed_lsn = format_lsn(found.confirmed_lsn)
            status.bytes_behind = found.unconfirmed_bytes
            status.retained_wal_bytes = found.retained_bytes
        out.append(status)
    return out
