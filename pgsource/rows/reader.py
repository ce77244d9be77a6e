"""Reading one table (or one custom query) in keyset batches, and turning a batch into messages.

``TableReader`` is the library half of a poll worker: it plans the table against the
catalog, builds the SQL, fetches a batch after an offset and encodes it. It holds no
offsets of its own: the worker decides which offset to read after and which to commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from pgsource.config.model import Config, TableConfig
from pgsource.errors import PrerequisiteError, SourceError, TableChanged
from pgsource.pg import connect as pg
from pgsource.pg.catalog import describe_table
from pgsource.pg.horizon import TrackingInfo, TrackingKind, describe_tracking
from pgsource.pg.query import (
    INTEGER_TYPES,
    PollPlan,
    Reading,
    build_acknowledged_rows,
    build_custom_query,
    build_custom_select,
    build_key_bounds,
    build_poll_plan,
    build_rows_by_key,
    build_select_batch,
    build_table_definition,
    position_params,
    snapshot_params,
    table_definition,
)
from pgsource.pg.retry import is_transient, with_retries
from pgsource.pg.statements import fetch_all, fetch_one, fetch_value, render
from pgsource.pg.types import load_column_types
from pgsource.rows.encoder import RowEncoder
from pgsource.state import PollingOffset


@dataclass
class ReadBatch:
    """One read: its rows, the snapshot it saw (when asked for), and where the next read starts."""

    rows: list[tuple]
    snapshot: str | None
    after: PollingOffset | None
    horizon: object = None  # the late-commit horizon observed before this read (set by the worker)


class TableReader:
    """Plans and reads one table for polling; its ``encoder`` (``pgsource/rows/encoder.py``) makes the messages."""

    chunk: tuple[int | None, int | None] | None = None  # [lo, hi) of the tracking column, when chunked
    _custom_text: str | None = None  # the wrapped custom_query, composed on first use
    _definition: tuple[int, str] | None = None  # (oid, columns) of the table as planned; None: custom_query
    _named_columns = False  # the plan names the columns one by one (not row_to_json(t))

    def __init__(self, conn, config: Config, table: TableConfig | None, *, by_identity: bool = False,
                 guard: Callable[..., str | None] | None = None) -> None:
        """``guard``: polling's check of what no late-commit horizon protects
        (``pgsource/polling/guard.py``), returning the zone of a local-time tracking column; the
        poll worker passes it, readers that only look at offsets (status, verify...) do not."""
        source = config.source
        self.conn = conn
        self.config = config
        self.table = table
        self.batch_size = source.batch_size
        self.partitions = config.iggy.partitions
        self.partitioning = config.iggy.partitioning
        self.tracking: TrackingInfo | None = None
        self.late_commits = False  # whether reads are held behind a horizon or a lag (see late_commits.py)
        self.lag = 0.0
        self.time_zone: str | None = "UTC"  # the zone of a timestamp/date tracking column's values (None: unknown)
        self._ack_action: str | None = None
        if source.custom_query and not by_identity:  # once, or once per table with $table
            self.table_name = table.qualified if table is not None else "custom_query"
            self.topic = config.iggy.topic_for(table) if table is not None else config.iggy.topic.format(
                table="custom_query", schema="public")
            self.plan: PollPlan | None = None
            self.tracking_column = (table.tracking_column if table is not None else None) or source.tracking_column
            self._custom = build_custom_query(source.custom_query, (table.schema_, table.name) if table else None, conn)
            self._json_at = 1
            self.encoder = RowEncoder(config, self.table_name, None, self.tracking_column, 1, acts_on_rows=False)
            return
        self._custom = None
        self.table_name = table.message_name  # as messages name it (CDC builds the same from the relation)
        self.topic = config.iggy.topic_for(table)
        info = describe_table(conn, table.schema_, table.name)
        if by_identity and not info.identity:
            raise SourceError(f"table {table.qualified}: an initial snapshot needs a primary key or unique NOT NULL key")
        self._ack_action = None if by_identity else (
            "delete" if source.delete_after_read else ("mark" if source.processed_column else None))
        self.plan = build_poll_plan(
            info,
            info.identity[0] if by_identity else (table.tracking_column or source.tracking_column),
            snake_case=source.snake_case_columns,
            allow_non_unique=source.allow_non_unique_tracking,
            processed_column=None if by_identity else source.processed_column,
            need_identity=self._ack_action is not None,
            catalog=load_column_types(conn, [column.type_oid for column in info.columns]),
            versioned=self._ack_action is not None,
            columns=table.columns,
            exclude_columns=table.exclude_columns,
            row_filter=table.predicate,
            payload=(source.payload_column, source.payload_format.value) if source.payload_column else None,
            primary_key_column=None if by_identity else source.primary_key_column,
        )
        self.tracking_column = self.plan.tracking_column
        # The table's columns as planned. A plan that names them one by one would miss a column added
        # later: its reads check them after every statement. Any plan checks them when a statement
        # fails (a column renamed or dropped), so that a change is followed, not taken for bad input.
        self._definition = (info.oid, table_definition(info))
        self._named_columns = not self.plan.whole_row
        # The columns messages carry, (name in ``data``, format_type): what a schema change announces.
        # With schema_change_events a plan reading whole rows checks the definition after reads too.
        types = {column.name: column.type_sql for column in info.columns}
        self.shape = tuple((key, types[name]) for name, key, _ in self.plan.json_columns)
        self._named_columns |= source.schema_change_events and self.plan.payload is None
        self._json_at = len(self.plan.select_columns)
        self._bounds = (False, False)
        self._chunk_params: dict[str, object] = {}
        self._sql: dict[Reading, str] = {}
        if not by_identity:
            self.tracking = describe_tracking(conn, info, info.column(self.tracking_column),
                                              table.tracking_filled_by or source.tracking_filled_by)
            self.lag = table.lag if table.lag is not None else source.lag
            self.late_commits = source.late_commits == "auto" and self.tracking.kind is not TrackingKind.XID8
            if self.late_commits and guard is not None:
                self.time_zone = guard(conn, config, self.table_name, self.tracking, self.lag)
            if self.tracking.kind is TrackingKind.XID8 and source.initial_offset is not None:
                raise PrerequisiteError(f"table {self.table_name}: initial_offset does not apply to an xid8 tracking_column")
        self.encoder = RowEncoder(config, self.table_name, self.plan, self.tracking_column, self._json_at,
                                  acts_on_rows=self._ack_action is not None)
        if self._ack_action:
            self._ack_query = render(build_acknowledged_rows(self.plan, self._ack_action), conn)
            self._by_key_query = render(build_rows_by_key(self.plan), conn)

    @property
    def exact(self) -> bool:
        """An xid8 tracking column: rows are cut by snapshots, no horizon needed."""
        return self.tracking is not None and self.tracking.kind is TrackingKind.XID8

    def read_from(self, schema: str, name: str) -> None:
        """Read the rows of another relation with this table's plan and names: a partition of it
        (attached while captured), whose rows go out as the table's."""
        self.plan = replace(self.plan, schema=schema, table=name)
        self._sql.clear()

    def chunk_column(self) -> str:
        """The column a bulk load can be split on; raises naming the table when there is none."""
        plan = self.plan
        if plan is None or len(plan.position_columns) != 1 or plan.position_types[0] not in INTEGER_TYPES:
            raise PrerequisiteError(
                f"table {self.table_name}: chunks need a unique NOT NULL integer tracking_column"
                " (e.g. a serial primary key); remove `chunks` for this table"
            )
        return plan.tracking_column

    def key_bounds(self) -> tuple[int, int] | None:
        """(min, max) of the chunk column now; None for an empty table."""
        self.chunk_column()
        low, high = fetch_one(self.conn, build_key_bounds(self.plan))
        return None if low is None else (int(low), int(high))

    def restrict_to_chunk(self, lo: int | None, hi: int | None) -> None:
        """Read only tracking values in ``[lo, hi)`` (None = unbounded on that side)."""
        self.chunk_column()
        self.chunk = (lo, hi)
        self._bounds = (lo is not None, hi is not None)
        self._chunk_params = {name: value for name, value in (("lo", lo), ("hi", hi)) if value is not None}

    # -- reading ---------------------------------------------------------------------------

    def fetch_batch(self, offset: PollingOffset | None) -> list[tuple]:
        """Rows after ``offset``, at most batch_size, in position order."""
        return self.read_batch(offset).rows

    def read_batch(self, offset: PollingOffset | None) -> ReadBatch:
        """The batch after ``offset``, the snapshot it was read in (late commits, xid8) and the next offset."""
        if self._custom is not None:
            now = datetime.now(timezone.utc)
            params = {"offset": offset.position[0] if offset else None, "limit": self.batch_size,
                      "now": now, "now_unix": int(now.timestamp())}
            rows = self._execute(self._custom_sql(), params)
            return ReadBatch(rows, None, self.offset_after(rows) if rows else offset)
        position = offset.position if offset else ()
        params: dict[str, object] = {**position_params("o", position), **self._chunk_params, "limit": self.batch_size}
        if self.exact:
            tick = offset.tick if offset else None
            params |= {"after": offset.snapshot if offset else None, "tick": tick}
            reading = self._reading(len(position), exact=2 if tick else 1, snapshot=True)
            rows = self._execute(self._query(reading), params)
            tick = tick or (rows[0][-1] if rows else None)
            return ReadBatch(rows, tick, self._exact_after(offset, rows, tick))
        reading = self._reading(len(position), snapshot=self.late_commits)
        rows = self._execute(self._query(reading), params)
        return ReadBatch(rows, rows[0][-1] if rows and self.late_commits else None, self.offset_after(rows) if rows else offset)

    def read_late_rows(self, lo: tuple | None, hi: tuple, snapshot: str, after: tuple | None = None) -> list[tuple]:
        """Row versions in ``(lo, hi]`` that ``snapshot`` (the range's first read) may not have seen.

        Through the tracking column's index, never a scan on xmin: the rows whose xmin is not
        older than the snapshot's xmin (the caller drops those the first read sent, by id);
        ``after`` continues a range larger than one batch.
        """
        start = after if after is not None else (lo or ())
        params = {**position_params("o", start), **position_params("u", hi), **self._chunk_params,
                  **snapshot_params(snapshot), "limit": self.batch_size}
        return self._execute(self._query(self._reading(len(start), upto=True, invisible=True)), params, "re-reading late rows")

    def read_rows_by_key(self, keys: list[tuple], hi: tuple) -> list[tuple]:
        """The current versions of ``keys`` up to ``hi`` (rows updated between a read and its ack)."""
        columns = list(zip(*keys))
        params = {**{f"k{i}": list(values) for i, values in enumerate(columns)}, **position_params("u", hi)}
        return self._execute(self._by_key_query, params, "reading rows updated since they were sent")

    def offset_after(self, rows: list[tuple], rows_before: int = 0) -> PollingOffset:
        """Where the read after ``rows`` starts (the position values of the last row); ``rows_before``:
        the rows read before them from this offset's start."""
        width = 1 if self.plan is None else len(self.plan.position_columns)
        return PollingOffset(tuple(rows[-1][:width]), rows_before + len(rows), self.chunk)

    def _exact_after(self, offset: PollingOffset | None, rows: list[tuple], tick: str | None) -> PollingOffset | None:
        """xid8: inside a tick, after the last row; a short batch ends the tick (the next cuts after it)."""
        rows_before = offset.rows if offset else 0
        if len(rows) < self.batch_size:
            return PollingOffset((), rows_before + len(rows), self.chunk, snapshot=tick) if tick else offset
        width = len(self.plan.position_columns)
        return PollingOffset(tuple(rows[-1][:width]), rows_before + len(rows), self.chunk,
                             snapshot=offset.snapshot if offset else None, tick=tick)

    def _reading(self, width: int, **options) -> Reading:
        return Reading(width, *self._bounds, **options)

    def _query(self, reading: Reading) -> str:
        text = self._sql.get(reading)
        if text is None:
            text = self._sql[reading] = render(build_select_batch(self.plan, reading), self.conn)
        return text

    def _execute(self, statement: str, params, what: str = "reading a batch", rows_json: bool = True) -> list[tuple]:
        """Run one statement; a transient failure is retried (``source.max_retries``), any other is a
        ``SourceError`` naming the table and the statement; a lost connection is raised as it is.

        ``rows_json``: the rows carry their JSON; with a plan that names the columns, the table's
        columns are read again after the statement, and ``TableChanged`` raised if they changed
        (the rows may have been built without a column added meanwhile)."""

        def run() -> list[tuple]:
            rows = fetch_all(self.conn, statement, params)
            if rows and rows_json and self._named_columns:
                self._check_definition()
            return rows

        source = self.config.source
        try:
            return with_retries(run, retries=source.max_retries, delay=source.retry_delay, what=f"{self.table_name}: {what}")
        except pg.DatabaseError as exc:
            if isinstance(exc, (pg.OperationalError, pg.InterfaceError)) and not is_transient(exc):
                raise
            if not is_transient(exc):
                try:
                    self._check_definition()
                except (pg.OperationalError, pg.InterfaceError):
                    raise
                except pg.DatabaseError:  # cannot be asked (an aborted transaction): the error stands
                    pass
            tries = f" after {source.max_retries} retries" if is_transient(exc) else ""
            raise SourceError(f"{self.table_name}: {what} failed{tries}: {str(exc).strip()}") from None

    def check_definition(self) -> None:
        """``TableChanged`` when the table's columns are no longer those the plan was made for."""
        self._check_definition()

    def _check_definition(self) -> None:
        """``TableChanged`` when the table's columns are no longer those the plan was made for."""
        if self._definition is None:
            return
        oid, planned = self._definition
        now = fetch_value(self.conn, build_table_definition(), (oid,))
        if now != planned:
            raise TableChanged(
                f"table {self.table_name}: its columns changed while running ({planned or 'none'} ->"
                f" {now or 'none'}: name and type); reading it again with its new columns"
            )

    def _custom_sql(self) -> str:
        """The user's query wrapped (``build_custom_select``), composed once."""
        if self._custom_text is None:
            self._custom_text = render(build_custom_select(self._custom, self.tracking_column), self.conn)
        return self._custom_text

    # -- after the acknowledgement ---------------------------------------------------------

    @property
    def acts_on_rows(self) -> bool:
        return self._ack_action is not None

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
        acted = {tuple(row) for row in self._execute(self._ack_query, params, f"{self._ack_action} of acknowledged rows",
                                                     rows_json=False)}
        return [identity[:-1] for identity in identities if tuple(identity[:-1]) not in acted]
