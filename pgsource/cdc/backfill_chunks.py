"""Reading one backfill chunk between its watermarks, and the chunk's rows as messages.

``read_chunk``: the low watermark (``pg_logical_emit_message(false, …)``: written at once,
decoded where it stands in the WAL), one keyset SELECT of ``chunk_size`` rows after the last
key read — the table's own row filter and column list, AND-ed with the backfill's ``--where``,
the same reader as the initial snapshot, so the rows look like snapshot rows — then the high
watermark. The SELECT is one statement in its own transaction: no lock beyond its own, and
the stream waits only while it runs. The rows are encoded at once (the chunk is all a backfill
holds in memory) and kept by key until the high watermark comes back in the stream.

A row's id is ``backfill_message_id(table, generation, key)``; its headers name the backfill
(``backfill``: the request id, ``generation``) beside ``table`` and ``operation``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pgsource.cdc.backfill_request import WATERMARK_PREFIX
from pgsource.cdc.watermarks import Watermark, new_token
from pgsource.config.model import Config, TableConfig
from pgsource.config.predicate import conjunction
from pgsource.encode.ids import backfill_message_id
from pgsource.pg.messages import emit_flushed_message, emit_logical_message
from pgsource.pg.positions import estimated_rows
from pgsource.pg.visibility import begin_snapshot, end_snapshot
from pgsource.rows.encoder import EncodeSettings
from pgsource.rows.keyset import KeysetReader, ReadSettings
from pgsource.state import Backfill, PollingOffset

Key = tuple[str, ...]
log = logging.getLogger("pgsource.cdc")


@dataclass(frozen=True)
class ChunkRow:
    """One row of a chunk, ready to send: its topic, id, partition, payload and headers."""

    topic: str
    message_id: int
    partition: int
    payload: bytes
    headers: dict


class ChunkReader:
    """One per CDC worker; its connection is the worker's own (never during a peek's COPY)."""

    def __init__(self, conn, config: Config, slot: str, tables: dict[str, TableConfig]) -> None:
        self.conn = conn
        self.config = config
        self.slot = slot
        self.tables = tables  # by reference
        self._readers: dict[str, KeysetReader] = {}  # per backfill id
        self.streamed: dict[int, None] = {}  # xids of the last transactions streamed, oldest first
        self.running: set[int] = set()  # xids running for the last chunk's snapshot

    def estimate(self, backfill: Backfill) -> int:
        table = self.tables[backfill.table]
        return estimated_rows(self.conn, table.schema_, table.name) or 0

    def read_chunk(self, backfill: Backfill, after: Key | None) -> tuple[str, dict[Key, ChunkRow], int] | None:
        """(the chunk's token, its rows by key in key order, how many the SELECT returned); None: not now
        (its watermarks, written, match no open chunk)."""
        reader = self._reader(backfill)
        token = new_token()
        self._watermark(token, "low")
        rows: list[tuple] = []
        offset = PollingOffset(after) if after is not None else None
        if not self._read_in_one_snapshot(lambda: rows.extend(reader.fetch_batch(offset, backfill.chunk_size))):
            return None  # a transaction committed but not yet visible: the chunk is read again later
        self._watermark(token, "high")
        width = len(reader.plan.position_columns)
        encoded = reader.encoder.encode_batch(rows, 0)
        headers = {"table": reader.table_name, "operation": "SELECT", "backfill": backfill.id,
                   "generation": str(backfill.generation)}
        out: dict[Key, ChunkRow] = {}
        for row, partition, payload in zip(rows, encoded.messages.partitions, encoded.messages.payloads):
            key = tuple(row[:width])
            out[key] = ChunkRow(reader.topic, backfill_message_id(reader.table_name, backfill.generation, key),
                                partition, payload.encode() if isinstance(payload, str) else payload, headers)
        return token, out, len(rows)

    def _read_in_one_snapshot(self, read: Callable[[], None]) -> bool:
        """``read`` in a snapshot taken after the low watermark; False (nothing read): the snapshot misses a
        transaction the stream brought already (``pgsource/pg/visibility.py``): a chunk read now would hold
        a row older than that change. ``running``: the snapshot's running transactions."""
        ok = False
        try:
            self.running = begin_snapshot(self.conn)
            unseen = self.running & self.streamed.keys()
            if unseen:
                log.info("backfill chunk put off: transaction(s) %s streamed, not yet visible",
                         ", ".join(map(str, sorted(unseen))))
                return False
            read()
            ok = True
            return True
        finally:
            end_snapshot(self.conn, ok)

    def forget(self, backfill_id: str) -> None:
        self._readers.pop(backfill_id, None)

    def _reader(self, backfill: Backfill) -> KeysetReader:
        reader = self._readers.get(backfill.id)
        if reader is None:
            table = self.tables[backfill.table]
            if backfill.where is not None:
                predicate = conjunction(table.predicate, backfill.where)
                table = table.model_copy(update={"row_filter": predicate, "where": None})
            reader = self._readers[backfill.id] = KeysetReader.for_snapshot(
                self.conn, table, self.config.iggy.topic_for(table), ReadSettings.of(self.config.source),
                EncodeSettings.of(self.config))
        return reader

    def _watermark(self, token: str, mark: str) -> None:
        content = Watermark(self.slot, token, mark).to_json()
        if mark == "high":  # back in the stream (the chunk's rows out) now, not at the WAL writer's next round
            emit_flushed_message(self.conn, WATERMARK_PREFIX, content)
        else:
            emit_logical_message(self.conn, False, WATERMARK_PREFIX, content)
