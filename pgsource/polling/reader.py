"""``PollingReader``: a table read for polling; ``open_reader`` picks it or the custom-query reader.

On top of the keyset reading it shares with CDC snapshots (``pgsource/rows/keyset.py``),
polling needs to know its tracking column's kind (``pgsource/pg/horizon.py``), to read a
batch with the snapshot it saw (late commits) or cut by snapshots (xid8), to re-read a
range for rows that committed late, and, after Iggy's ack, to delete or mark exactly the
row versions it sent. It holds no offsets: the worker decides which offset to read after
and which to commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgsource.config.model import Config, SourceConfig, TableConfig
from pgsource.errors import PrerequisiteError
from pgsource.pg.catalog import TableInfo
from pgsource.pg.horizon import TrackingInfo, TrackingKind, describe_tracking
from pgsource.pg.plan import PollPlan
from pgsource.pg.select import (
    Reading,
    build_acknowledged_rows,
    build_rows_by_key,
    by_key_params,
    position_params,
    snapshot_params,
)
from pgsource.pg.statements import render
from pgsource.rows.encoder import EncodeSettings
from pgsource.rows.keyset import KeysetReader, ReadBatch, ReadSettings, fetch_rows, plan_table, read_params
from pgsource.state import PollingOffset


@dataclass(frozen=True)
class PollSettings:
    """What polling a table takes of ``source.*`` besides reading it."""

    tracking_column: str | None = None  # the default; a table's own tracking_column wins
    tracking_filled_by: str | None = None  # the default; a table's own tracking_filled_by wins
    processed_column: str | None = None  # mark acknowledged rows (True) instead of leaving them
    delete_after_read: bool = False  # delete acknowledged rows
    primary_key_column: str | None = None  # what delete/mark name rows by, instead of the table's key
    late_commits: bool = True  # source.late_commits: auto
    lag: float = 0.0  # seconds; a table's own lag wins
    initial_offset: bool = False  # source.initial_offset is set (no meaning for xid8)

    @classmethod
    def of(cls, source: SourceConfig) -> PollSettings:
        return cls(source.tracking_column, source.tracking_filled_by, source.processed_column, source.delete_after_read,
                   source.primary_key_column, source.late_commits == "auto", source.lag, source.initial_offset is not None)

    @property
    def ack_action(self) -> str | None:
        """What happens to a row once Iggy has it: ``delete``, ``mark``, or nothing (None)."""
        return "delete" if self.delete_after_read else ("mark" if self.processed_column else None)


def plan_polling_table(conn, table: TableConfig, read: ReadSettings, poll: PollSettings,
                       info: TableInfo | None = None) -> tuple[TableInfo, PollPlan]:
    """The plan polling reads ``table`` with: the service's reader, and ``check`` before it starts."""
    acts = poll.ack_action is not None
    return plan_table(conn, table, read, table.tracking_column or poll.tracking_column, info,
                      processed_column=poll.processed_column, need_identity=acts, versioned=acts,
                      primary_key_column=poll.primary_key_column)


def open_reader(conn, config: Config, table: TableConfig | None):
    """The reader of one polling unit: a table, or the custom query (once, or once per table with $table)."""
    read, encode = ReadSettings.of(config.source), EncodeSettings.of(config)
    if config.source.custom_query:
        from pgsource.polling.custom_query import CustomQueryReader

        return CustomQueryReader.open(conn, config, table, read, encode)
    return PollingReader(conn, table, config.iggy.topic_for(table), read, PollSettings.of(config.source), encode)


class PollingReader(KeysetReader):
    """Plans and reads one table for polling; see the module docstring."""

    def __init__(self, conn, table: TableConfig, topic: str, read: ReadSettings, poll: PollSettings,
                 encode: EncodeSettings) -> None:
        info, plan = plan_polling_table(conn, table, read, poll)
        super().__init__(conn, table, topic, info, plan, read, encode, acts_on_rows=poll.ack_action is not None)
        self._ack_action = poll.ack_action
        self.tracking: TrackingInfo = describe_tracking(conn, info, info.column(self.tracking_column),
                                                        table.tracking_filled_by or poll.tracking_filled_by)
        self.lag = table.lag if table.lag is not None else poll.lag
        # whether reads are held behind a horizon or a lag (see late_commits.py; the guard is checked by the caller)
        self.late_commits = poll.late_commits and self.tracking.kind is not TrackingKind.XID8
        if self.tracking.kind is TrackingKind.XID8 and poll.initial_offset:
            raise PrerequisiteError(f"table {self.table_name}: initial_offset does not apply to an xid8 tracking_column")
        if self._ack_action:
            self._ack_query = render(build_acknowledged_rows(plan, self._ack_action), conn)
            self._by_key_query = render(build_rows_by_key(plan), conn)

    @property
    def exact(self) -> bool:
        """An xid8 tracking column: rows are cut by snapshots, no horizon needed."""
        return self.tracking.kind is TrackingKind.XID8

    @property
    def acts_on_rows(self) -> bool:
        return self._ack_action is not None

    # -- reading -----------------------------------------------------------------------------

    def read_batch(self, offset: PollingOffset | None, batch_size: int) -> ReadBatch:
        """The batch after ``offset`` (at most ``batch_size`` rows), the snapshot it was read in (late
        commits, xid8) and the next offset."""
        reading, params = self.batch_reading(offset, batch_size)
        rows = fetch_rows(self.conn, self._query(reading), params, self.settings, self.table_name, "reading a batch",
                          **self._checks())
        last = tuple(rows[-1][:len(self.plan.position_columns)]) if rows else None
        snapshot = rows[0][-1] if rows and reading.snapshot else None
        return ReadBatch(rows, *self.next_offset(offset, reading, len(rows), last, snapshot, batch_size))

    def batch_reading(self, offset: PollingOffset | None, batch_size: int) -> tuple[Reading, dict[str, object]]:
        """The batch read after ``offset``: xid8 cuts by snapshots, late commits ask for the read's snapshot."""
        position = offset.position if offset else ()
        if self.exact:
            tick = offset.tick if offset else None
            params = read_params(position, batch_size, self._chunk_params, after=offset.snapshot if offset else None,
                                 tick=tick)
            return self._reading(len(position), exact=2 if tick else 1, snapshot=True), params
        return (self._reading(len(position), snapshot=self.late_commits),
                read_params(position, batch_size, self._chunk_params))

    def next_offset(self, offset: PollingOffset | None, reading: Reading, count: int, last: tuple | None,
                    snapshot: str | None, batch_size: int) -> tuple[str | None, PollingOffset | None]:
        if reading.exact:
            tick = offset.tick if offset and offset.tick else snapshot
            return tick, self._exact_after(offset, count, last, tick, batch_size)
        return snapshot, PollingOffset(last, count, self.chunk) if count else offset

    def late_reading(self, lo: tuple | None, hi: tuple, snapshot: str, batch_size: int,
                     after: tuple | None = None) -> tuple[Reading, dict[str, object]]:
        """The ``Reading`` and bound values of a re-read of ``(lo, hi]`` (see ``read_late_rows``)."""
        start = after if after is not None else (lo or ())
        params = read_params(start, batch_size, self._chunk_params, **position_params("u", hi), **snapshot_params(snapshot))
        return self._reading(len(start), upto=True, invisible=True), params

    def read_late_rows(self, lo: tuple | None, hi: tuple, snapshot: str, batch_size: int,
                       after: tuple | None = None) -> list[tuple]:
        """Row versions in ``(lo, hi]`` that ``snapshot`` (the range's first read) may not have seen.

        Through the tracking column's index, never a scan on xmin: the rows whose xmin is not
        older than the snapshot's xmin (the caller drops those the first read sent, by id);
        ``batch_size`` rows at most, ``after`` continues a range larger than one batch.
        """
        reading, params = self.late_reading(lo, hi, snapshot, batch_size, after)
        return fetch_rows(self.conn, self._query(reading), params, self.settings, self.table_name,
                          "re-reading late rows", **self._checks())

    def _exact_after(self, offset: PollingOffset | None, count: int, last: tuple | None, tick: str | None,
                     batch_size: int) -> PollingOffset | None:
        """xid8: inside a tick, after the last row; a short batch ends the tick (the next cuts after it)."""
        rows_before = offset.rows if offset else 0
        if count < batch_size:
            return PollingOffset((), rows_before + count, self.chunk, snapshot=tick) if tick else offset
        return PollingOffset(last, rows_before + count, self.chunk, snapshot=offset.snapshot if offset else None,
                             tick=tick)

    # -- after the acknowledgement -----------------------------------------------------------

    def apply_acknowledged(self, identities: list[tuple] | None) -> list[tuple]:
        """Delete or mark the row versions of an acknowledged batch (only ever after Iggy confirmed them).

        Returns the keys of the rows it did not act on: updated (or deleted) since they were
        read. Their current version must be published before the batch's range counts as done.
        """
        if not identities or not self._ack_action:
            return []
        columns = list(zip(*identities))
        params = {f"k{i}": list(values) for i, values in enumerate(columns[:-1])}
        params["versions"] = list(columns[-1])
        acted = {tuple(row) for row in fetch_rows(self.conn, self._ack_query, params, self.settings, self.table_name,
                                                  f"{self._ack_action} of acknowledged rows", **self._checks(rows_json=False))}
        return [identity[:-1] for identity in identities if tuple(identity[:-1]) not in acted]

    def read_rows_by_key(self, keys: list[tuple], hi: tuple) -> list[tuple]:
        """The current versions of ``keys`` up to ``hi`` (rows updated between a read and its ack)."""
        return fetch_rows(self.conn, self._by_key_query, by_key_params(keys, hi), self.settings, self.table_name,
                          "reading rows updated since they were sent", **self._checks())

