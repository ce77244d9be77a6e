"""``pgsource verify``: reconciliation — did every row up to the committed offset reach Iggy?

Polling: the ids of the rows PostgreSQL holds up to each committed offset of the table
(computed exactly as the worker computes them: ``RowEncoder.message_ids``) against the
ids the topic holds, read back through the SDK. Missing ids fail the check (exit 10),
duplicates are reported (at-least-once: a re-send after a crash repeats an id), ids of
other rows (other tables in a shared topic, earlier versions, rows after the offset)
are counted.

What it can and cannot prove:
- It proves *presence by id* of the row versions PostgreSQL holds now, up to the offset.
  Ids derive from the position values (and ``xmin`` with delete/mark), not the contents:
  with a tracking column an UPDATE does not change (``id``), a row updated after it was
  sent keeps its id and verify cannot tell the update was never sent (polling does not
  send it either). With a tracking column UPDATE moves (``updated_at``), the new version
  is after the old offset, or checked under its new id.
- Rows deleted from the table (``delete_after_read``, or by anyone) are gone from
  PostgreSQL: nothing can be compared for them. What remains up to the offset with
  ``delete_after_read`` must not be there: each such row is checked (its id must be in
  Iggy: a version updated between read and ack is sent again before it is deleted).
- ``processed_column``: rows marked true got a new ``xmin`` from the marking, so their ids
  cannot be recomputed; they are counted as "processed, not checkable". Unmarked rows up
  to the offset are checked.
- Messages expired from the topic (retention, ``message_expiry``, a purge) look missing:
  ``--after VALUE`` checks only the rows after a tracking value that the topic still holds.
- ``custom_query`` rows cannot be recomputed without running the query: refused.
- Iggy is read in full (every partition of the topic): the cost is the topic's size.

CDC: the slot's confirmed position against what pgsource recorded as acknowledged (the
``cdc/<slot>`` record) and against the newest commit LSN found in the topic(s) for that
slot (the high 64 bits of the message ids). A slot confirmed *beyond* the recorded
acknowledged position was advanced by someone else (another consumer, a manual
``pg_replication_slot_advance``): changes in between may be lost, and verify fails. A
missing or lost slot fails. What a confirmed slot consumed cannot be re-read: CDC verify
cannot list individual changes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from pgsource.config.model import Config
from pgsource.errors import ConfigError
from pgsource.lsn import format_lsn
from pgsource.ops.admin.common import cdc_slots, connection, find_table, units_of
from pgsource.pg.horizon import TrackingKind
from pgsource.pg.positions import Bounds, count_rows_upto, iter_rows_upto, normalize_value, slot_stats
from pgsource.state import FileStateStore, PollingOffset, SlotProgress
from pgsource.state.lock import holder

SHOWN = 20  # missing ids listed one per line; the rest are counted


@dataclass
class VerifyReport:
    lines: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # one line per missing id (or slot problem)

    @property
    def ok(self) -> bool:
        return not self.missing


def verify(config: Config, table_name: str, after: str | None = None) -> VerifyReport:
    if config.source.cdc:
        return _verify_cdc(config, table_name)
    return _verify_polling(config, table_name, after)


def _read_ids(config: Config, topic: str) -> list[tuple[int, int]] | None:
    """Every (partition, id) of the topic; SinkUnavailable (75) when Iggy cannot be reached."""
    from pgsource.sink.reader import read_message_ids

    return asyncio.run(read_message_ids(config.iggy, config.iggy.stream, topic))


def _verify_polling(config: Config, table_name: str, after: str | None) -> VerifyReport:
    from pgsource.polling.reader import open_reader

    if table_name == "custom_query":
        raise ConfigError("verify: custom_query rows cannot be recomputed without running the query; not supported")
    table = find_table(config, table_name)
    source = config.source
    store = FileStateStore(config.state.dir)
    report = VerifyReport()
    expected: dict[int, str] = {}  # id -> the row's position, to name it
    processed = 0
    with connection(config, "verify", 600.0) as conn:
        reader = open_reader(conn, config, table)
        plan = reader.plan
        exact = reader.tracking is not None and reader.tracking.kind is TrackingKind.XID8
        start = (normalize_value(conn, plan.position_types[0], after),) if after is not None else ()
        for unit in units_of(config, table):
            stored = store.load(unit.key, PollingOffset)
            if stored is None or not (stored.position or stored.snapshot):
                report.lines.append(f"{unit.key}: nothing committed yet")
                continue
            bounds = Bounds(stored.position, stored.chunk, stored.snapshot)
            report.lines.append(f"{unit.key}: committed offset {', '.join(stored.position) or stored.snapshot}")
            only_unmarked = False if source.processed_column else None
            for rows in iter_rows_upto(conn, plan, bounds, exact=exact, processed=only_unmarked, after=start):
                width = len(plan.position_columns)
                for row, message_id in zip(rows, reader.encoder.message_ids(rows)):
                    expected[message_id] = ", ".join("" if v is None else v for v in row[:width])
            if source.processed_column:
                processed += count_rows_upto(conn, plan, bounds, exact=exact, processed=True)
    topic = reader.topic
    present = _read_ids(config, topic)
    if present is None:
        present = []
        report.lines.append(f"Iggy: topic {config.iggy.stream}/{topic} does not exist")
    counts = Counter(message_id for _, message_id in present)
    missing = [message_id for message_id in expected if message_id not in counts]
    duplicated = sum(1 for message_id in expected if counts.get(message_id, 0) > 1)
    other = sum(1 for message_id in counts if message_id not in expected)
    report.lines.append(
        f"{table.qualified}: {len(expected)} row(s) up to the committed offset{f' after {after}' if after else ''};"
        f" topic {config.iggy.stream}/{topic}: {len(present)} message(s); {len(missing)} missing,"
        f" {duplicated} duplicated id(s), {other} other id(s) (other tables, earlier versions, rows after the offset)"
    )
    if processed:
        report.lines.append(f"{processed} row(s) marked in {source.processed_column}: their ids cannot be recomputed (not checked)")
    if source.delete_after_read:
        report.lines.append("delete_after_read: rows already deleted cannot be checked; the rows still up to the offset were")
    for message_id in missing[:SHOWN]:
        report.missing.append(f"missing from Iggy: id {message_id} (0x{message_id:032x}), {table.qualified} row at"
                              f" {plan.tracking_column} position ({expected[message_id]})")
    if len(missing) > SHOWN:
        report.missing.append(f"... and {len(missing) - SHOWN} more missing id(s)")
    return report


def _verify_cdc(config: Config, table_name: str | None) -> VerifyReport:
    import xxhash

    store = FileStateStore(config.state.dir)
    report = VerifyReport()
    running = holder(config.state.dir)  # a pgsource running on this state.dir confirms the slot meanwhile
    with connection(config, "verify") as conn:
        planned = cdc_slots(conn, config)
        workers = {worker: units for worker, (_, units) in planned.items()}
        if table_name:
            table = find_table(config, table_name)
            workers = {w: units for w, units in workers.items() if any(u.table == table for u in units)}
        names = {worker: planned[worker][0] for worker in workers}
        stats = slot_stats(conn, list(names.values()))
    for worker, slot in names.items():
        found = stats.get(slot)
        stored = store.load(f"cdc/{slot}", SlotProgress)
        if found is None:
            report.missing.append(f"slot {slot} ({worker}) does not exist: changes since it was dropped are not captured")
            continue
        if found.wal_status == "lost":
            report.missing.append(f"slot {slot} is lost (wal_status lost): PostgreSQL removed WAL it still needed")
        tag = xxhash.xxh32_intdigest(slot.encode("utf-8")) & 0xFFFF
        newest = 0
        for topic in sorted({config.iggy.topic_for(unit.table) for unit in workers[worker]}):
            for _, message_id in _read_ids(config, topic) or []:
                if (message_id >> 48) & 0xFFFF == tag:
                    newest = max(newest, message_id >> 64)
        acknowledged = stored.lsn if stored is not None else 0
        report.lines.append(
            f"slot {slot}: confirmed {format_lsn(found.confirmed_lsn)}, acknowledged (recorded)"
            f" {format_lsn(acknowledged) if acknowledged else 'not recorded'}, newest commit in Iggy"
            f" {format_lsn(newest) if newest else 'none'}, {found.unconfirmed_bytes} byte(s) of WAL after the confirmed position"
        )
        if acknowledged and found.confirmed_lsn > acknowledged and running:
            acknowledged = _wait_for_record(store, slot, found, acknowledged, report)
        if acknowledged and found.confirmed_lsn > acknowledged:
            report.missing.append(
                f"slot {slot} is confirmed at {format_lsn(found.confirmed_lsn)}, beyond what pgsource recorded as"
                f" acknowledged ({format_lsn(acknowledged)}): something else advanced it; changes in between may be lost"
            )
    return report


RECORD_WAIT = 15.0  # seconds: a running worker copies its confirmed LSN into the record every 10 s


def _wait_for_record(store: FileStateStore, slot: str, found, acknowledged: int, report: VerifyReport) -> int:
    """A running pgsource confirms the slot as Iggy acknowledges and records that position every 10 s:
    a slot ahead of the record is in flight, not lost. Its own walsender holding the slot (streaming)
    is the only one that can have moved it; else (the SQL transport) the record catches up within 10 s."""
    if found.active_pid is not None:
        report.lines.append(f"slot {slot}: in flight: the running pgsource (walsender pid {found.active_pid}) confirmed"
                            f" {format_lsn(found.confirmed_lsn)}; its record is written every 10 s")
        return found.confirmed_lsn
    deadline = time.monotonic() + RECORD_WAIT
    while time.monotonic() < deadline:
        stored = store.load(f"cdc/{slot}", SlotProgress)
        if stored is not None and stored.lsn >= found.confirmed_lsn:
            return stored.lsn
        time.sleep(0.2)
    return acknowledged

