"""Reading one table (or one custom query) in keyset batches, and turning a batch into messages.

``TableReader`` is the library half of a poll worker: it plans the table against the
catalog, builds the SQL, fetches a batch after an offset and encodes it. It holds no
offsets of its own: the worker decides which offset to read after and which to commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from pgsource.config.model import Config, Partitioning, TableConfig
from pgsource.encode.envelope import envelope_parts, iso_timestamp
from pgsource.encode.ids import key_partition, polling_message_id, polling_message_ids
from pgsource.errors import PrerequisiteError, SourceError
from pgsource.pg import connect as pg
from pgsource.pg.catalog import describe_table
from pgsource.pg.query import (
    INTEGER_TYPES,
    PollPlan,
    build_acknowledged_rows,
    build_custom_query,
    build_key_bounds,
    build_poll_plan,
    build_select_batch,
)
from pgsource.pg.types import load_column_types
from pgsource.state import PollingOffset


@dataclass
class EncodedBatch:
    """A batch ready for the queue, plus what the worker needs once it is acknowledged."""

    ids: list[int]
    partitions: list[int]
    payloads: list[str]
    last_offset: PollingOffset
    identities: list[tuple] | None  # identity values per row, for delete/mark after the ack


class TableReader:
    """Plans, reads and encodes one table for polling."""

    chunk: tuple[int | None, int | None] | None = None  # [lo, hi) of the tracking column, when chunked
    _chunk_params: tuple = ()

    def __init__(self, conn, config: Config, table: TableConfig | None, *, by_identity: bool = False) -> None:
        source = config.source
        self.conn = conn
        self.config = config
        self.table = table
        self.batch_size = source.batch_size
        self.partitions = config.iggy.partitions
        self.partitioning = config.iggy.partitioning
        if table is None:  # custom_query
            self.table_name = "custom_query"
            self.topic = config.iggy.topic.format(table="custom_query", schema="public")
            self.plan: PollPlan | None = None
            self.tracking_column = source.tracking_column
            self._custom = build_custom_query(source.custom_query or "")
            return
        self._custom = None
        self.table_name = table.qualified
        self.topic = config.iggy.topic_for(table)
        info = describe_table(conn, table.schema_, table.name)
        if by_identity and not info.identity:
            raise SourceError(f"table {table.qualified}: an initial snapshot needs a primary key or unique NOT NULL key")
        self.plan = build_poll_plan(
            info,
            info.identity[0] if by_identity else (table.tracking_column or source.tracking_column),
            snake_case=source.snake_case_columns,
            allow_non_unique=source.allow_non_unique_tracking,
            processed_column=source.processed_column,
            need_identity=source.delete_after_read or source.processed_column is not None,
            catalog=load_column_types(conn, [column.type_oid for column in info.columns]),
        )
        self.tracking_column = self.plan.tracking_column
        self._queries = {width: build_select_batch(self.plan, width).as_string(conn) for width in range(len(self.plan.cursor_columns) + 1)}
        self._ack_action = "delete" if source.delete_after_read else ("mark" if source.processed_column else None)
        if self._ack_action:
            self._ack_query = build_acknowledged_rows(self.plan, self._ack_action).as_string(conn)

    def chunk_column(self) -> str:
        """The column a bulk load can be split on; raises naming the table when there is none."""
        plan = self.plan
        if plan is None or len(plan.cursor_columns) != 1 or plan.cursor_types[0] not in INTEGER_TYPES:
            raise PrerequisiteError(
                f"table {self.table_name}: chunks need a unique NOT NULL integer tracking_column"
                " (e.g. a serial primary key); remove `chunks` for this table"
            )
        return plan.tracking_column

    def key_bounds(self) -> tuple[int, int] | None:
        """(min, max) of the chunk column now; None for an empty table."""
        self.chunk_column()
        with self.conn.cursor() as cur:
            cur.execute(build_key_bounds(self.plan))
            low, high = cur.fetchone()
        return None if low is None else (int(low), int(high))

    def restrict_to_chunk(self, lo: int | None, hi: int | None) -> None:
        """Read only tracking values in ``[lo, hi)`` (None = unbounded on that side)."""
        self.chunk_column()
        bounds = (lo is not None, hi is not None)
        self.chunk = (lo, hi)
        self._chunk_params = tuple(v for v in (lo, hi) if v is not None)
        self._queries = {
            width: build_select_batch(self.plan, width, bounds).as_string(self.conn)
            for width in range(len(self.plan.cursor_columns) + 1)
        }

    # -- reading ---------------------------------------------------------------------------

    def fetch_batch(self, offset: PollingOffset | None) -> list[tuple]:
        """Rows after ``offset``, at most batch_size, in cursor order."""
        with self.conn.cursor() as cur:
            try:
                if self._custom is not None:
                    cur.execute(self._custom_sql(), {"offset": offset.cursor[0] if offset else None, "limit": self.batch_size})
                else:
                    width = len(offset.cursor) if offset else 0
                    cursor = offset.cursor if offset else ()
                    cur.execute(self._queries[width], (*cursor, *self._chunk_params, self.batch_size))
            except pg.DatabaseError as exc:
                if isinstance(exc, (pg.OperationalError, pg.InterfaceError)):
                    raise
                raise SourceError(f"{self.table_name}: reading a batch failed: {str(exc).strip()}") from None
            return cur.fetchall()

    def offset_after(self, rows: list[tuple]) -> PollingOffset:
        """Where the read after ``rows`` starts (the cursor values of the last row)."""
        width = 1 if self.plan is None else len(self.plan.cursor_columns)
        return PollingOffset(tuple(rows[-1][:width]))

    def _custom_sql(self) -> str:
        """The user's query, wrapped; ordered again outside, since a subquery's ORDER BY is not
        promised to survive the wrapping, and the last row's value becomes the next offset."""
        tracking = _quote(self.tracking_column)
        return (
            f"SELECT q.{tracking}::text, row_to_json(q)::text"
            f" FROM ({self._custom}) AS q ORDER BY q.{tracking}"
        )

    # -- encoding --------------------------------------------------------------------------

    def encode_batch(self, rows: list[tuple], include_metadata: bool, read_rows: int) -> EncodedBatch:
        """Messages for ``rows``: envelope, deterministic id, partition; and the offset after them."""
        prefix, suffix = envelope_parts(self.table_name, "SELECT", iso_timestamp())
        table_name = self.table_name
        partitions = self.partitions
        by_table = self.partitioning is Partitioning.TABLE
        balanced = self.partitioning is Partitioning.BALANCED
        table_partition = key_partition(table_name, partitions)
        if self.plan is None:
            width, key_of = 1, itemgetter(0)
        else:
            width = len(self.plan.cursor_columns)
            key_of = _key_getter(self.plan)
        count = len(rows)
        if include_metadata:
            payloads = [prefix + row[-1] + suffix for row in rows]
        else:
            payloads = [row[-1] for row in rows]
        if self.plan is None:
            ids = []
            for row in rows:
                if row[0] is None:
                    raise SourceError(f"custom_query: a row has NULL in tracking_column {self.tracking_column!r}: {row[-1][:200]}")
                ids.append(polling_message_id(table_name, (row[0], row[-1])))
        elif width == 1:  # the tracking column is never NULL here (the query excludes it)
            ids = polling_message_ids(table_name, [row[0] for row in rows])
        else:
            ids = [polling_message_id(table_name, row[:width]) for row in rows]
        if by_table:
            parts = [table_partition] * count
        elif balanced:
            parts = [(read_rows + index) % partitions for index in range(count)]
        elif partitions == 1:
            parts = [0] * count
        else:
            parts = [key_partition(key_of(row), partitions) for row in rows]
        last = rows[-1]
        identities = None
        if self.plan is not None and self._ack_action:
            positions = [self.plan.select_columns.index(c) for c in self.plan.identity]
            identities = [tuple(row[p] for p in positions) for row in rows]
        offset = PollingOffset(tuple(last[:width]), read_rows + len(rows), self.chunk)
        return EncodedBatch(ids, parts, payloads, offset, identities)

    # -- after the acknowledgement ---------------------------------------------------------

    def apply_acknowledged(self, identities: list[tuple] | None) -> None:
        """Delete or mark the rows of an acknowledged batch (only ever after Iggy confirmed them)."""
        if not identities or not self._ack_action:
            return
        columns = list(zip(*identities))
        with self.conn.cursor() as cur:
            cur.execute(self._ack_query, [list(values) for values in columns])


def _key_getter(plan: PollPlan):
    """row → the text that picks its partition (its identity, else its cursor values)."""
    positions = [plan.select_columns.index(c) for c in plan.key_columns]
    if len(positions) == 1:
        return itemgetter(positions[0])
    return lambda row: "\x00".join("" if row[p] is None else row[p] for p in positions)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
