"""``OffsetCommitter``: polling's acknowledged batches into committed offsets, deletes and marks first.

Every piece of work that must finish before a unit's offset may pass it is one ``Work``,
one entry of the unit's ``ProgressTracker``:

- a batch read at the read frontier: its entry carries the offset after it;
- a range read while a transaction in progress could still commit a row into it
  (``pgsource/polling/late_commits.py``): its entry, before its batch's, holds the offset
  until the range is sealed and read again once; that re-read may send batches too.

A ``Work`` is done once it is closed (no more batches will be sent for it) and every batch
sent for it was acknowledged by Iggy and had its deletes/marks applied. Deletes and marks
act on exactly the row versions sent: a row updated between the read and the ack is a
newer version, left alone, read again up to the batch's last position and sent as one
more batch of the same ``Work`` (``resend``), so the offset waits for it too. Then the
entry is acknowledged in the tracker, and what became committable is handed to the
``OffsetWriter``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from pgsource.pipeline.committer import Committer
from pgsource.polling.offset_age import OffsetAge
from pgsource.polling.unit import PollUnit
from pgsource.state.writer import OffsetWriter


@dataclass(eq=False)
class Work:
    """One entry of a unit's tracker (the tracker's key is the ``Work`` itself)."""

    unit: PollUnit
    outstanding: int = 0  # its batches sent and not yet acknowledged and acted on
    open: bool = False  # more batches may still be sent for it (a range not yet re-read)


@dataclass
class _Batch:
    """A batch in flight: the work it belongs to, and what its acknowledgement acts on."""

    work: Work
    identities: list | None  # (key..., xmin) per row, for delete/mark
    hi: tuple  # the position of its last row (rows updated meanwhile are read again up to it)


class OffsetCommitter(Committer):
    """See the module docstring. ``resend(work, rows, hi)`` sends rows as one more batch of ``work``
    (its seq, or None when stopping); ``statement(label)`` marks a statement for the supervisor."""

    def __init__(self, units: list[PollUnit], writer: OffsetWriter, *,
                 resend: Callable[[Work, list, tuple], int | None],
                 statement: Callable[[str], AbstractContextManager], offset_age: OffsetAge | None = None,
                 counter=None, progressed: Callable[[], None] | None = None) -> None:
        super().__init__(counter=counter, progressed=progressed)
        self.units = units
        self.writer = writer
        self._resend = resend
        self._statement = statement
        self._offset_age = offset_age
        self._batches: dict[int, _Batch] = {}

    def open_work(self, unit: PollUnit, position=None, *, open: bool = False) -> Work:
        """A new entry in ``unit``'s tracker, after every earlier one; ``position``: the offset it ends at."""
        work = Work(unit, open=open)
        unit.progress.sent(work, position)
        return work

    def sent(self, seq: int, work: Work, identities: list | None, hi: tuple) -> None:
        """Batch ``seq`` of ``work`` went out."""
        work.outstanding += 1
        self._batches[seq] = _Batch(work, identities, hi)

    def close_work(self, work: Work) -> None:
        """No more batches will be sent for ``work`` (its range is re-read)."""
        work.open = False
        self._finish_if_done(work)

    def mark(self, unit: PollUnit, position) -> None:
        """A position that needs no work of its own (an xid8 tick that ended empty)."""
        unit.progress.mark(position)
        self._commit_unit(unit)

    def acked(self, seq: int) -> None:
        batch = self._batches.pop(seq, None)
        if batch is None:
            return
        work = batch.work
        work.outstanding -= 1
        if self._offset_age is not None:
            self._offset_age.acked(work.unit, batch.hi)
        if batch.identities:
            rows = self._act_on_rows(work.unit, batch)
            if rows and self._resend(work, rows, batch.hi) is None:
                return  # stopping: those versions were not sent, so the offset must not pass them
        self._finish_if_done(work)

    def commit_acknowledged(self, force: bool = False) -> None:
        for unit in self.units:
            self._commit_unit(unit)

    def close(self) -> None:
        self.writer.close()

    def _act_on_rows(self, unit: PollUnit, batch: _Batch) -> list[tuple]:
        """Iggy has the batch: delete/mark the versions sent; the current versions of the others."""
        reader = unit.reader
        with self._statement(f"deleting or marking acknowledged rows of {reader.table_name}"):
            survivors = reader.apply_acknowledged(batch.identities)
            return reader.read_rows_by_key(survivors, batch.hi) if survivors else []

    def _finish_if_done(self, work: Work) -> None:
        if not work.open and not work.outstanding:
            work.unit.progress.acked(work)
            self._commit_unit(work.unit)

    def _commit_unit(self, unit: PollUnit) -> None:
        committable = unit.progress.committable()
        if committable is not None and committable is not unit.committed:
            unit.committed = committable
            self.writer.submit(unit.key, committable)
            self._counted()
