"""Which captured tables changed shape: the columns a Relation message brings against the last announced.

pgoutput sends a Relation message before a relation's first change after a start, and again
after anything invalidates it (an ALTER TABLE of any kind). ``SchemaWatch.seen`` compares its
columns (as messages name them, with ``format_type`` types) with the shape consumers were last
told of: the same, or the first ever seen, is nothing to say; another is a change to announce
before the first change of the new shape.

The baseline is durable (``cdc-shapes/<slot>``) so that a change made while pgsource was
stopped is announced at the next start. A new shape becomes the baseline only once the slot
is confirmed past the transaction that first used it (``confirmed``): until then the slot
would replay that transaction after a crash, and the announcement is made again (same id).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pgsource.state.records import ShapeRecord, TableShape

Columns = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ShapeChange:
    table: str
    old: Columns
    new: Columns


class SchemaWatch:
    """The announced shapes, and the ones waiting for the slot to move past them."""

    def __init__(self, record: ShapeRecord | None, commit: Callable[[ShapeRecord], None] | None = None) -> None:
        self.record = record or ShapeRecord()
        self.commit_record = commit  # makes the baseline durable (the CDC worker's state store)
        self._current: dict[str, Columns] = {shape.table: shape.columns for shape in self.record.tables}
        self._pending: list[tuple[int, TableShape]] = []  # (end LSN it needs confirmed, shape)

    def seen(self, table: str, columns: Columns, commit_lsn: int) -> ShapeChange | None:
        """A Relation of ``table`` in the transaction committing at ``commit_lsn``: the change to
        announce, if its columns are not the ones announced last (or pending)."""
        old = self._current.get(table)
        self._current[table] = columns
        if old == columns:
            return None
        # confirmed past the commit record's start: the slot is only confirmed at transactions' ends
        self._pending.append((commit_lsn + 1, TableShape(table, columns, commit_lsn)))
        if old is None:
            return None  # the first shape ever seen of the table: the baseline, not a change
        return ShapeChange(table, old, columns)

    def confirmed(self, lsn: int) -> ShapeRecord | None:
        """The slot is confirmed up to ``lsn``: the record (committed) when shapes became the baseline."""
        ready = [shape for needed, shape in self._pending if needed <= lsn]
        if not ready:
            return None
        self._pending = [(needed, shape) for needed, shape in self._pending if needed > lsn]
        for shape in ready:
            self.record = self.record.with_shape(shape)
        if self.commit_record is not None:
            self.commit_record(self.record)
        return self.record
