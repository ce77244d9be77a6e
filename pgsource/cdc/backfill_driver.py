"""``BackfillDriving``: the CDC worker's side of backfills (mixed into ``CdcWorker``).

It wires ``BackfillRunner`` (what to do) to the worker's stream and outbox (doing it):
requests and watermarks come from the encoder (``on_message``), the keys of a backfilled
table's changes too (``on_key``, while its chunk is open); a chunk is read when one is due
and the worker is between two messages (``_backfill_step``: at most one SELECT, so the
stream waits at most one chunk); the rows left at the high watermark go into the batch being
built, at that point of the stream; and the backfills' record is committed as Iggy
acknowledges the batches that hold their chunks (``_backfills_acked``).
"""

from __future__ import annotations

import logging
import time

from pgsource.cdc.backfill import BackfillRunner
from pgsource.cdc.backfill_chunks import ChunkReader
from pgsource.cdc.backfill_request import BACKFILL_PREFIX, WATERMARK_PREFIX
from pgsource.errors import PrerequisiteError, SourceError
from pgsource.state import BackfillRecord, backfills_key

log = logging.getLogger("pgsource.cdc")

STEP_EVERY = 0.01
STREAMED_KEPT = 100_000  # xids of the last transactions streamed, checked against a chunk's snapshot  # seconds: how often a busy stream is interrupted to see whether a chunk is due


class BackfillDriving:
    """Mixed into ``CdcWorker``: needs ``conn``, ``store``, ``slot``, ``tables``, ``encoder``, ``committer``,
    ``metrics``, ``spec``."""

    def _start_backfills(self) -> None:
        config = self.spec.config
        tables = {table.qualified: table for table in self.tables}
        self.backfills_key = backfills_key(self.slot)
        self.backfills = BackfillRunner(self.slot, set(tables), self.store.load(self.backfills_key, BackfillRecord),
                                        config.source.backfill_chunk_size)
        self.chunk_reader = ChunkReader(self.conn, config, self.slot, tables)
        self._chunk_outs: list = []  # chunks whose rows are in the batch being built
        self._stepped = 0.0
        self.committer.on_acked = self._backfills_acked
        self.encoder.on_message = self._on_message
        self.encoder.on_key = self._on_key
        self.encoder.on_begin = self._on_begin
        self._xid = 0  # the transaction the stream is in
        for backfill in self.backfills.record.running:
            log.info("%s: backfill %s of %s goes on after key %s", self.spec.name, backfill.id, backfill.table,
                     backfill.last_key)

    def _on_message(self, message, out) -> None:
        if message.prefix == BACKFILL_PREFIX:
            before = self.backfills.record
            line = self.backfills.request(message.content, message.lsn)
            if line:
                log.info("%s: %s", self.spec.name, line)
            if self.backfills.record is not before:  # a start or a cancel: durable now, not at the next ack
                self.store.commit(self.backfills_key, self.backfills.record)  # (a replay of it changes nothing)
            self.encoder.watched = self.backfills.watched
        elif message.prefix == WATERMARK_PREFIX:
            chunk = self.backfills.watermark(message.content)
            if chunk is None:
                return
            for row in chunk.rows:
                out.add(row.topic, row.message_id, row.partition, row.payload, row.headers)
            self._chunk_outs.append((chunk, len(chunk.rows)))
            self.encoder.watched = self.backfills.watched

    def _on_begin(self, xid: int) -> None:
        """Every transaction's xid, backfill or not: one streamed before a request may still be unseen."""
        self._xid = xid
        streamed = self.chunk_reader.streamed
        streamed[xid] = None
        if len(streamed) > STREAMED_KEPT:  # a transaction invisible longer than that is not caught
            del streamed[next(iter(streamed))]

    def _on_key(self, table: str, key) -> None:
        if key is None:
            self.backfills.truncated(table)
        else:  # a transaction the chunk's snapshot did not see, streamed before its low watermark: drop too
            self.backfills.changed(table, key, unseen=self._xid in self.chunk_reader.running)

    def _backfill_step(self, force: bool = False) -> None:
        """Read the chunk that is due, if any (never during a peek's COPY: the caller knows)."""
        now = time.monotonic()
        if not force and now - self._stepped < STEP_EVERY:
            return
        self._stepped = now
        due = self.backfills.due()
        if due is None:
            return
        backfill, after = due
        if not backfill.estimated_rows:
            estimate = self.chunk_reader.estimate(backfill)
            self.backfills.estimated(backfill.id, estimate)
            self.metrics.backfill_estimate.labels(backfill.table, self.spec.name).set(estimate)
        try:
            with self.spec.statement(f"reading a backfill chunk of {backfill.table}"):
                chunk = self.chunk_reader.read_chunk(backfill, after)
        except (SourceError, PrerequisiteError) as exc:  # no key, a --where PostgreSQL refuses: this backfill ends
            log.error("%s: backfill %s of %s stops: %s", self.spec.name, backfill.id, backfill.table, exc)
            self.backfills.failed(backfill.id)
            self.chunk_reader.forget(backfill.id)
            self.store.commit(self.backfills_key, self.backfills.record)
            return
        if chunk is None:  # put off (pgsource/pg/visibility.py): due again at a later step
            return
        token, rows, read = chunk
        self.backfills.opened(backfill, token, rows, read)
        self.encoder.watched = self.backfills.watched

    def _chunks_sent(self, seq: int, acknowledged: bool) -> None:
        """The batch that holds the pending chunks' rows went out as ``seq`` (or, with no rows, after it);
        ``acknowledged``: nothing is in flight any more (a chunk with no row left is done at once)."""
        for chunk, rows in self._chunk_outs:
            self.backfills.sent(chunk, seq, rows)
        self._chunk_outs = []
        if acknowledged:
            self._backfills_acked(seq)

    def _backfills_acked(self, seq: int) -> None:
        """Iggy acknowledged every batch up to ``seq``: commit what the backfills reached."""
        before = {b.id: b.rows for b in self.backfills.record.backfills}
        record = self.backfills.acked_through(seq)
        if record is None:
            return
        self.store.commit(self.backfills_key, record)
        now = time.time()
        for backfill in record.backfills:
            sent = backfill.rows - before.get(backfill.id, backfill.rows)
            if sent:
                self.metrics.backfill_rows.labels(backfill.table, self.spec.name).inc(sent)
            running = backfill in record.running
            rate = backfill.rows / max(now - backfill.started_at, 1e-3)
            left = max(backfill.estimated_rows - backfill.rows, 0)
            self.metrics.backfill_eta.labels(backfill.table, self.spec.name).set(left / rate if running and rate else 0)
