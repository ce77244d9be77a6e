"""``CustomQueryReader``: the user's ``custom_query``, read in batches after the last tracking value.

Once for the service, or once per table when the query names ``$table``. The query is the
user's SQL with its placeholders bound (``pgsource/pg/custom_query.py``), wrapped so that
the tracking value and the row's JSON come out in tracking order. It has no plan: no
late-commit horizon, no delete/mark, no chunks; rows that commit late behind the read
frontier are not re-read (the worker says so at start).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import TypeVar

from pgsource.config.model import Config, TableConfig
from pgsource.pg.custom_query import build_custom_query, build_custom_select
from pgsource.pg.statements import render
from pgsource.rows.encoder import EncodeSettings, RowEncoder
from pgsource.rows.keyset import ReadBatch, ReadSettings, fetch_rows, run_guarded
from pgsource.state import PollingOffset

T = TypeVar("T")


class CustomQueryReader:
    """Reads the custom query after an offset; the same face as ``PollingReader`` where the worker looks."""

    plan = None  # no table plan: the query decides what a row is
    tracking = None
    late_commits = False
    exact = False
    acts_on_rows = False
    lag = 0.0
    chunk = None

    def __init__(self, conn, query: str, table: TableConfig | None, topic: str, tracking_column: str,
                 read: ReadSettings, encode: EncodeSettings) -> None:
        self.conn = conn
        self.table = table
        self.table_name = table.qualified if table is not None else "custom_query"
        self.topic = topic
        self.tracking_column = tracking_column
        self.settings = read
        self._custom = build_custom_query(query, (table.schema_, table.name) if table else None, conn)
        self._text: str | None = None  # the wrapped query, composed on first use
        self.encoder = RowEncoder(encode, self.table_name, None, tracking_column, 1, acts_on_rows=False)

    @classmethod
    def open(cls, conn, config: Config, table: TableConfig | None, read: ReadSettings,
             encode: EncodeSettings) -> CustomQueryReader:
        source = config.source
        topic = config.iggy.topic_for(table) if table is not None else config.iggy.topic.format(
            table="custom_query", schema="public")
        tracking = (table.tracking_column if table is not None else None) or source.tracking_column
        return cls(conn, source.custom_query, table, topic, tracking, read, encode)

    def read_batch(self, offset: PollingOffset | None, batch_size: int) -> ReadBatch:
        """The rows after ``offset`` (bound as ``$offset``, ``batch_size`` as ``$limit``) and the next offset."""
        rows = fetch_rows(self.conn, self._sql(), self.custom_params(offset, batch_size), self.settings,
                          self.table_name, "reading a batch")
        return ReadBatch(rows, None, self.offset_after(rows) if rows else offset)

    def custom_params(self, offset: PollingOffset | None, batch_size: int) -> dict[str, object]:
        """The bound values of a read after ``offset`` (the row read and the COPY read share them)."""
        now = datetime.now(timezone.utc)
        return {"offset": offset.position[0] if offset else None, "limit": batch_size, "now": now,
                "now_unix": int(now.timestamp())}

    def guarded(self, run: Callable[[], T], what: str) -> T:
        """``run()``, one statement (a COPY), retried and its errors named as ``fetch_rows``'s."""
        return run_guarded(run, self.settings, self.table_name, what)

    def offset_after(self, rows: list[tuple], rows_before: int = 0) -> PollingOffset:
        """Where the read after ``rows`` starts: the last row's tracking value."""
        return PollingOffset(tuple(rows[-1][:1]), rows_before + len(rows), None)

    def _sql(self) -> str:
        if self._text is None:
            self._text = render(build_custom_select(self._custom, self.tracking_column), self.conn)
        return self._text
