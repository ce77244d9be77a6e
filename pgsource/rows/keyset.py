"""``KeysetReader``: one table read in keyset batches after an offset; polling and CDC snapshots share it.

It plans the table against the catalog once (``pgsource/pg/plan.py``), composes each
SELECT once (``pgsource/pg/select.py``) and fetches ``batch_size`` rows at a time after an
offset, each with its JSON. It holds neither offsets nor a batch size of its own: its
caller decides which offset to read after, how many rows a read takes (``batch_size``,
passed down to the SELECT's LIMIT), and which offset to commit. Its ``encoder`` (``pgsource/rows/encoder.py``)
makes the messages.

The polling reader (``pgsource/polling/reader.py``) adds what only polling needs: the
tracking column's kind, late commits, xid8 snapshots, delete/mark after the ack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from pgsource.config.model import SourceConfig, TableConfig
from pgsource.errors import PrerequisiteError, SourceError, TableChanged
from pgsource.pg import connect as pg
from pgsource.pg.catalog import TableInfo, describe_table
from pgsource.pg.plan import INTEGER_TYPES, PollPlan, build_poll_plan
from pgsource.pg.retry import is_transient, with_retries
from pgsource.pg.select import (
    Reading,
    build_key_bounds,
    build_select_batch,
    build_table_definition,
    position_params,
    table_definition,
)
from pgsource.pg.statements import fetch_all, fetch_one, fetch_value, render
from pgsource.pg.types import load_column_types
from pgsource.rows.encoder import EncodeSettings, RowEncoder
from pgsource.state import PollingOffset

T = TypeVar("T")

@dataclass(frozen=True)
class ReadSettings:
    """What reading a table in batches takes of ``source.*``."""

    max_retries: int = 0  # transient failures retried per statement
    retry_delay: float = 0.0
    snake_case: bool = False  # the JSON's keys in snake_case
    allow_non_unique: bool = False  # ties of a non-unique tracking column broken by ctid
    payload: tuple[str, str] | None = None  # (payload_column, payload_format): the column is the message
    watch_shape: bool = False  # schema_change_events: every read checks the table's columns (a plan of whole rows too)

    @classmethod
    def of(cls, source: SourceConfig) -> ReadSettings:
        payload = (source.payload_column, source.payload_format.value) if source.payload_column else None
        return cls(source.max_retries, source.retry_delay, source.snake_case_columns, source.allow_non_unique_tracking,
                   payload, source.schema_change_events and payload is None)


@dataclass
class ReadBatch:
    """One read: its rows, the snapshot it saw (when asked for), and where the next read starts."""

    rows: list[tuple]
    snapshot: str | None
    after: PollingOffset | None
    horizon: object = None  # the late-commit horizon observed before this read (set by the worker)


def plan_table(conn, table: TableConfig, settings: ReadSettings, tracking_column: str, info: TableInfo | None = None,
               **options) -> tuple[TableInfo, PollPlan]:
    """The table described (unless ``info`` is given) and planned (``build_poll_plan``'s ``options``
    for the mode's needs)."""
    info = info or describe_table(conn, table.schema_, table.name)
    plan = build_poll_plan(
        info, tracking_column, snake_case=settings.snake_case, allow_non_unique=settings.allow_non_unique,
        catalog=load_column_types(conn, [column.type_oid for column in info.columns]), columns=table.columns,
        exclude_columns=table.exclude_columns, row_filter=table.predicate, payload=settings.payload, **options,
    )
    return info, plan


def read_params(position: tuple, batch_size: int, chunk_params: dict[str, object], **more) -> dict[str, object]:
    """A read's parameters: the offset (``o0..``), the chunk (``lo``, ``hi``), ``more``, and ``batch_size``
    as the SELECT's LIMIT."""
    return {**position_params("o", position), **chunk_params, **more, "limit": batch_size}


def fetch_rows(conn, statement: str, params, settings: ReadSettings, where: str, what: str, *,
               check_rows: Callable[[], None] | None = None,
               check_failure: Callable[[], None] | None = None) -> list[tuple]:
    """Run one read; a transient failure is retried (``max_retries``), any other is a ``SourceError``
    naming ``where`` (the table) and ``what``; a lost connection is raised as it is.

    ``check_rows`` runs after a statement that returned rows, ``check_failure`` when one failed
    (both: the table's columns are still those planned), so that a change of the table is
    followed (``TableChanged``), not taken for bad input.
    """

    def run() -> list[tuple]:
        rows = fetch_all(conn, statement, params)
        if rows and check_rows is not None:
            check_rows()
        return rows

    return run_guarded(run, settings, where, what, check_failure)


def run_guarded(run: Callable[[], T], settings: ReadSettings, where: str, what: str,
                check_failure: Callable[[], None] | None = None) -> T:
    """``run()`` (one statement, e.g. a COPY) as ``fetch_rows`` runs its own: retried, errors named."""
    try:
        return with_retries(run, retries=settings.max_retries, delay=settings.retry_delay, what=f"{where}: {what}")
    except pg.DatabaseError as exc:
        if isinstance(exc, (pg.OperationalError, pg.InterfaceError)) and not is_transient(exc):
            raise
        if not is_transient(exc) and check_failure is not None:
            try:
                check_failure()
            except (pg.OperationalError, pg.InterfaceError):
                raise
            except pg.DatabaseError:  # cannot be asked (an aborted transaction): the error stands
                pass
        tries = f" after {settings.max_retries} retries" if is_transient(exc) else ""
        raise SourceError(f"{where}: {what} failed{tries}: {str(exc).strip()}") from None


class KeysetReader:
    """Reads one planned table in position order, ``batch_size`` rows after an offset."""

    chunk: tuple[int | None, int | None] | None = None  # [lo, hi) of the tracking column, when chunked

    def __init__(self, conn, table: TableConfig, topic: str, info: TableInfo, plan: PollPlan, settings: ReadSettings,
                 encode: EncodeSettings, *, acts_on_rows: bool = False) -> None:
        self.conn = conn
        self.table = table
        self.table_name = table.message_name  # as messages name it (CDC builds the same from the relation)
        self.topic = topic
        self.plan = plan
        self.settings = settings
        self.tracking_column = plan.tracking_column
        # The table's columns as planned. A plan that names them one by one would miss a column added
        # later: its reads check them after every statement. Any plan checks them when a statement
        # fails (a column renamed or dropped), so that a change is followed, not taken for bad input.
        self._definition = (info.oid, table_definition(info))
        self.column_types = {column.name: column.type_oid for column in info.columns}
        self._named_columns = not plan.whole_row or settings.watch_shape
        # The columns messages carry, (name in ``data``, format_type): what a schema change announces.
        types = {column.name: column.type_sql for column in info.columns}
        self.shape = tuple((key, types[name]) for name, key, _ in plan.json_columns)
        self._bounds = (False, False)
        self._chunk_params: dict[str, object] = {}
        self._sql: dict[Reading, str] = {}
        self.encoder = RowEncoder(encode, self.table_name, plan, self.tracking_column, len(plan.select_columns),
                                  acts_on_rows=acts_on_rows)

    @classmethod
    def for_snapshot(cls, conn, table: TableConfig, topic: str, settings: ReadSettings,
                     encode: EncodeSettings) -> KeysetReader:
        """A CDC snapshot's reader: the table's key is its position (its rows are read once, in key order)."""
        info = describe_table(conn, table.schema_, table.name)
        if not info.identity:
            raise SourceError(f"table {table.qualified}: an initial snapshot needs a primary key or unique NOT NULL key")
        info, plan = plan_table(conn, table, settings, info.identity[0], info)
        return cls(conn, table, topic, info, plan, settings, encode)

    def read_from(self, schema: str, name: str) -> None:
        """Read the rows of another relation with this table's plan and names: a partition of it
        (attached while captured), whose rows go out as the table's."""
        self.plan = replace(self.plan, schema=schema, table=name)
        self._sql.clear()

    # -- chunks of a bulk load ---------------------------------------------------------------

    def chunk_column(self) -> str:
        """The column a bulk load can be split on; raises naming the table when there is none."""
        plan = self.plan
        if len(plan.position_columns) != 1 or plan.position_types[0] not in INTEGER_TYPES:
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

    # -- reading -----------------------------------------------------------------------------

    def fetch_batch(self, offset: PollingOffset | None, batch_size: int) -> list[tuple]:
        """Rows after ``offset``, at most ``batch_size``, in position order."""
        return self.read_batch(offset, batch_size).rows

    def read_batch(self, offset: PollingOffset | None, batch_size: int) -> ReadBatch:
        """The batch after ``offset`` (at most ``batch_size`` rows) and where the next read starts."""
        reading, params = self.batch_reading(offset, batch_size)
        rows = fetch_rows(self.conn, self._query(reading), params, self.settings, self.table_name,
                          "reading a batch", **self._checks())
        return ReadBatch(rows, None, self.offset_after(rows) if rows else offset)

    def batch_reading(self, offset: PollingOffset | None, batch_size: int) -> tuple[Reading, dict[str, object]]:
        """What the read of the batch after ``offset`` is (the row read and the COPY read share it):
        its ``Reading`` and bound values."""
        position = offset.position if offset else ()
        return self._reading(len(position)), read_params(position, batch_size, self._chunk_params)

    def next_offset(self, offset: PollingOffset | None, reading: Reading, count: int, last: tuple | None,
                    snapshot: str | None, batch_size: int) -> tuple[str | None, PollingOffset | None]:
        """(the snapshot to report, where the next read starts) after a read of ``count`` rows, ``last``
        the position values of the last one, ``snapshot`` the snapshot column of the first."""
        return snapshot, PollingOffset(last, count, self.chunk) if count else offset

    def guarded(self, run: Callable[[], T], what: str) -> T:
        """``run()``, one statement of this table's (a COPY), retried and its errors named as ``fetch_rows``'s."""
        return run_guarded(run, self.settings, self.table_name, what, self._check_definition)

    def offset_after(self, rows: list[tuple], rows_before: int = 0) -> PollingOffset:
        """Where the read after ``rows`` starts (the position values of the last row); ``rows_before``:
        the rows read before them from this offset's start."""
        return PollingOffset(tuple(rows[-1][:len(self.plan.position_columns)]), rows_before + len(rows), self.chunk)

    def _reading(self, width: int, **options) -> Reading:
        return Reading(width, *self._bounds, **options)

    def _query(self, reading: Reading) -> str:
        text = self._sql.get(reading)
        if text is None:
            text = self._sql[reading] = render(build_select_batch(self.plan, reading), self.conn)
        return text

    def _checks(self, rows_json: bool = True) -> dict:
        """``fetch_rows``'s checks of the table's columns; ``rows_json``: the rows carry their JSON, so a plan
        that names the columns checks them after the statement too."""
        check = self._check_definition
        return {"check_rows": check if rows_json and self._named_columns else None, "check_failure": check}

    def check_definition(self) -> None:
        """``TableChanged`` when the table's columns are no longer those the plan was made for."""
        self._check_definition()

    def _check_definition(self) -> None:
        """``TableChanged`` when the table's columns are no longer those the plan was made for."""
        oid, planned = self._definition
        now = fetch_value(self.conn, build_table_definition(), (oid,))
        if now != planned:
            raise TableChanged(
                f"table {self.table_name}: its columns changed while running ({planned or 'none'} ->"
                f" {now or 'none'}: name and type oid); reading it again with its new columns"
            )
