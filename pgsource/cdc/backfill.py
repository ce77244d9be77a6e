"""``BackfillRunner``: a slot's backfills, from the request in the stream to the last acknowledged chunk.

The CDC worker tells it what the stream brings (backfill requests, watermarks, the keys of
the changes of a table being backfilled) and what Iggy acknowledged; it tells the worker
when a chunk is due, which rows of a chunk to send at its high watermark
(``pgsource/cdc/watermarks.py``), and when the backfills' record changed. It does no I/O.

- One chunk per slot is open at a time (memory: one chunk; the stream waits for at most one
  chunk's SELECT). Backfills of several tables take turns, oldest request first.
- Progress is the key of the last row of the last chunk whose messages Iggy acknowledged
  (``Backfill.last_key``); a restart reads on after it. The next chunk may be read before the
  previous one is acknowledged (``last_read``), as the stream goes on meanwhile.
- A request the slot replays (after a crash, before the slot was confirmed past it) is
  recognised by its id and not started twice; finished ones are kept (the last ``KEEP_DONE``).
- A cancel stops the table's running backfill: the chunk in flight is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pgsource.cdc.backfill_request import BadRequest, decode_request
from pgsource.cdc.watermarks import ChunkWindow, Watermark
from pgsource.state.records import Backfill, BackfillPhase, BackfillRecord

log = logging.getLogger("pgsource.cdc")

KEEP_DONE = 20
Row = TypeVar("Row")
Key = tuple[str, ...]


@dataclass
class _Open(Generic[Row]):
    backfill_id: str
    window: ChunkWindow[Row]
    last_key: Key | None  # the chunk's last key as read (the next chunk starts after it)
    read: int  # rows the chunk's SELECT returned


@dataclass(frozen=True)
class ChunkOut(Generic[Row]):
    """The rows of a chunk to send now, at its high watermark."""

    backfill: Backfill
    rows: list[Row]
    last_key: Key | None
    finished: bool  # the chunk was the table's last (fewer rows than asked)


class BackfillRunner(Generic[Row]):
    def __init__(self, slot: str, tables: set[str], record: BackfillRecord | None, default_chunk_size: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.slot = slot
        self.tables = tables  # the references of the tables this slot captures
        self.record = record or BackfillRecord(slot)
        self.default_chunk_size = default_chunk_size
        self.clock = clock
        self.open: _Open[Row] | None = None
        self._last_read: dict[str, Key | None] = {b.id: b.last_key for b in self.record.running}
        self._pending: list[tuple[int, str, Key | None, int, bool]] = []  # (seq, id, last key, rows, finished)
        self._turn = 0

    # -- requests --------------------------------------------------------------------------

    def request(self, content: bytes, lsn: int) -> str | None:
        """A ``pgsource.backfill`` message; returns a line to log (None: not for this slot)."""
        try:
            request = decode_request(content, lsn)
        except BadRequest as exc:
            return f"backfill request at lsn {lsn:X} ignored: {exc}"
        if request.slot not in (None, self.slot) or request.table not in self.tables:
            return None
        if request.action == "cancel":
            return self._cancel(request.table)
        if any(b.id == request.id for b in self.record.backfills):
            return None  # replayed: started already (and maybe finished)
        backfill = Backfill(request.id, request.table, lsn, request.chunk_size or self.default_chunk_size,
                            request.where, started_at=self.clock())
        self._replace(backfill)
        self._last_read[backfill.id] = None
        return f"backfill {backfill.id} of {backfill.table} started (chunks of {backfill.chunk_size} rows)"

    def estimated(self, backfill_id: str, rows: int) -> None:
        """The planner's estimate of the rows to send (progress and ETA)."""
        backfill = self._get(backfill_id)
        if backfill is not None:
            self._replace(dataclasses.replace(backfill, estimated_rows=rows))

    def failed(self, backfill_id: str) -> None:
        """The backfill cannot go on (its chunk's SELECT was refused): it stops, the stream does not."""
        backfill = self._get(backfill_id)
        if backfill is not None:
            self._replace(dataclasses.replace(backfill, phase=BackfillPhase.FAILED))
        if self.open is not None and self.open.backfill_id == backfill_id:
            self.open = None

    def _cancel(self, table: str) -> str:
        running = [b for b in self.record.running if b.table == table]
        for backfill in running:
            self._replace(dataclasses.replace(backfill, phase=BackfillPhase.CANCELLED))
            if self.open is not None and self.open.backfill_id == backfill.id:
                self.open = None
        return f"backfill of {table} cancelled" if running else f"backfill of {table}: none runs, nothing to cancel"

    # -- chunks ----------------------------------------------------------------------------

    def due(self) -> tuple[Backfill, Key | None] | None:
        """The backfill whose chunk should be read now, and the key to read after; None: none."""
        if self.open is not None:
            return None
        running = [b for b in self.record.running if self._last_read.get(b.id, b.last_key) != _END]
        if not running:
            return None
        self._turn = (self._turn + 1) % len(running)
        backfill = running[self._turn]
        return backfill, self._last_read.get(backfill.id, backfill.last_key)

    def opened(self, backfill: Backfill, token: str, rows: dict[Key, Row], read: int) -> None:
        """The chunk was read between its watermarks (written: low before the SELECT, high after)."""
        last = next(reversed(rows)) if rows else None
        self.open = _Open(backfill.id, ChunkWindow(token, dict(rows)), last, read)

    def watermark(self, content: bytes) -> ChunkOut[Row] | None:
        """A ``pgsource.watermark`` message: at the open chunk's high one, the rows to send."""
        mark = Watermark.from_content(content)
        if mark is None or mark.slot != self.slot or self.open is None:
            return None
        opened = self.open
        rows = opened.window.watermark(mark)
        if rows is None:
            return None
        self.open = None
        backfill = self._get(opened.backfill_id)
        if backfill is None or backfill.phase is not BackfillPhase.RUNNING:
            return None
        finished = opened.read < backfill.chunk_size
        self._last_read[backfill.id] = _END if finished else opened.last_key
        return ChunkOut(backfill, rows, opened.last_key, finished)

    def changed(self, table: str, key: Key, unseen: bool = False) -> None:
        """A change of ``table`` for ``key`` came in the stream (``unseen``: by a transaction the open
        chunk's snapshot did not see)."""
        if self.open is not None and self._table_of_open() == table:
            self.open.window.changed(key, unseen)

    def truncated(self, table: str) -> None:
        if self.open is not None and self._table_of_open() == table:
            self.open.window.truncated()

    @property
    def watched(self) -> set[str]:
        """The tables whose changes' keys the encoder must report now."""
        return {self._table_of_open()} if self.open is not None else set()

    # -- progress --------------------------------------------------------------------------

    def sent(self, out: ChunkOut[Row], seq: int, rows: int) -> None:
        """The chunk's rows went out; ``seq``: the last batch holding them (acks come in order)."""
        key = out.last_key if out.last_key is not None else out.backfill.last_key
        self._pending.append((seq, out.backfill.id, key, rows, out.finished))

    def acked_through(self, seq: int) -> BackfillRecord | None:
        """Every batch up to ``seq`` is acknowledged: the record to commit, when it changed."""
        done = [entry for entry in self._pending if entry[0] <= seq]
        if not done:
            return None
        self._pending = [entry for entry in self._pending if entry[0] > seq]
        for _, backfill_id, last_key, rows, finished in done:
            backfill = self._get(backfill_id)
            if backfill is None or backfill.phase is not BackfillPhase.RUNNING:
                continue
            backfill = dataclasses.replace(backfill, last_key=last_key, rows=backfill.rows + rows,
                                           phase=BackfillPhase.DONE if finished else BackfillPhase.RUNNING)
            self._replace(backfill)
            if finished:
                log.info("backfill %s of %s done: %d row(s)", backfill.id, backfill.table, backfill.rows)
        return self.record

    # -- internals -------------------------------------------------------------------------

    def _table_of_open(self) -> str | None:
        backfill = self._get(self.open.backfill_id) if self.open is not None else None
        return backfill.table if backfill is not None else None

    def _get(self, backfill_id: str) -> Backfill | None:
        return next((b for b in self.record.backfills if b.id == backfill_id), None)

    def _replace(self, backfill: Backfill) -> None:
        others = [b for b in self.record.backfills if b.id != backfill.id]
        finished = [b for b in others if b.phase is not BackfillPhase.RUNNING][-KEEP_DONE:]
        kept = [b for b in others if b.phase is BackfillPhase.RUNNING or b in finished]
        self.record = BackfillRecord(self.slot, tuple(kept) + (backfill,))


_END = ("\x00end",)  # a backfill whose last chunk was read: no chunk is due for it
