"""``SlotCommitter``: CDC's acknowledged batches into the slot's confirmed position, by either transport.

One ``ProgressTracker`` per worker, for the snapshot and both transports: every batch sent
is ``sent`` (no position of its own), the end LSN of every transaction read completely is
``mark``ed after the batches holding its changes, and acks come back as ``acked``. The slot
is only ever confirmed up to ``committable()``: the end of a transaction whose every
message, and every message before it, Iggy acknowledged. Idle periods move the slot
through the same tracker: the server's WAL end is marked only when nothing is half-read
and nothing read is left unsent, so it counts only once everything before it was
acknowledged.

How the slot is told depends on the transport (``SqlSlotConfirmer``: advance it;
``StreamSlotConfirmer``: status updates on the stream). Now and then the confirmed LSN is
copied into the slot's record in ``state.dir`` (it names the gap if the slot vanishes),
through ``SlotRecords`` (``slot_record.py``), the record's one owner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from pgsource.cdc.slot_record import SlotRecords
from pgsource.pg import replication as rep
from pgsource.pipeline.committer import Committer
from pgsource.pipeline.progress import ProgressTracker

REMEMBER_EVERY = 10.0  # seconds between copies of the confirmed LSN into the slot's record


class SlotConfirmer(Protocol):
    def confirm(self, lsn: int, moved: bool, force: bool) -> bool:
        """Tell PostgreSQL that everything before ``lsn`` was delivered; True if it was told now.
        ``moved``: ``lsn`` is past what was confirmed before."""


class SqlSlotConfirmer:
    """The SQL transport: ``pg_replication_slot_advance``, between peeks (never during one's COPY)."""

    def __init__(self, conn, slot: str, statement: Callable[[str], AbstractContextManager]) -> None:
        self.conn = conn
        self.slot = slot
        self._statement = statement

    def confirm(self, lsn: int, moved: bool, force: bool) -> bool:
        if not moved:
            return False
        with self._statement(f"advancing slot {self.slot}"):
            rep.confirm_slot(self.conn, self.slot, lsn)
        return True


class StreamSlotConfirmer:
    """The streaming transport: standby status updates, which also keep the walsender from timing out."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def confirm(self, lsn: int, moved: bool, force: bool) -> bool:
        return self.stream.confirm(lsn, force=force)


class SlotCommitter(Committer):
    """See the module docstring; ``confirmer`` is set once the slot streams (snapshots only send)."""

    def __init__(self, records: SlotRecords | None, *, counter=None, confirmed_gauge=None,
                 progressed: Callable[[], None] | None = None) -> None:
        super().__init__(counter=counter, progressed=progressed)
        self.records = records  # the slot's record, which ``remember`` keeps up with the confirmed LSN
        self.progress: ProgressTracker[int] = ProgressTracker(0, order=int)
        self.recorded_lsn = 0  # the newest position recorded in ``progress``
        self.confirmed_lsn = 0  # the newest position confirmed to the slot
        self.confirmer: SlotConfirmer | None = None
        self.on_confirmed: Callable[[int], None] | None = None  # told each position the slot is confirmed up to
        self.on_acked: Callable[[int], None] | None = None  # told each batch Iggy acknowledged (backfills)
        self._gauge = confirmed_gauge
        self._remembered_at = time.monotonic()

    def start(self, lsn: int) -> None:
        """The slot stands at ``lsn``: progress starts there."""
        self.progress = ProgressTracker(lsn, order=int)
        self.recorded_lsn = self.confirmed_lsn = lsn
        if self._gauge is not None:
            self._gauge.set(lsn)

    def sent(self, seq: int) -> None:
        self.progress.sent(seq)

    def mark(self, lsn: int) -> None:
        """Everything before ``lsn`` was read and sent: it counts once everything before it is acknowledged."""
        if lsn > self.recorded_lsn:
            self.progress.mark(lsn)
            self.recorded_lsn = lsn

    def acked(self, seq: int) -> None:
        self.progress.acked(seq)
        if self.on_acked is not None:  # acks come in the order batches were sent: every one up to seq
            self.on_acked(seq)

    def commit_acknowledged(self, force: bool = False) -> None:
        """Confirm the slot up to what is committable (the confirmer decides when it speaks)."""
        if self.confirmer is None:
            return
        target = self.progress.committable()
        moved = target > self.confirmed_lsn
        if self.confirmer.confirm(target, moved, force) and moved:
            self.confirmed_lsn = target
            self._counted()
            if self._gauge is not None:
                self._gauge.set(target)
            if self.on_confirmed is not None:
                self.on_confirmed(target)
        self.remember(force)

    def remember(self, force: bool = False) -> None:
        """Copy the confirmed LSN into the slot's record now and then (it names the gap if the slot vanishes)."""
        now = time.monotonic()
        if self.records is None or self.records.record is None or (not force and now - self._remembered_at < REMEMBER_EVERY):
            return
        self._remembered_at = now
        self.records.confirmed(self.confirmed_lsn)
