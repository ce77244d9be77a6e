"""A unit's batches as the poll worker sends them: read and framed, by COPY where it can, by rows otherwise.

The COPY path (``pgsource/rows/copy_reader.py``) reads up to ``COPY_BATCHES`` batches in one
``COPY (SELECT ...) TO STDOUT`` and frames each while its lines arrive (C, no Python object per
row): PostgreSQL only writes the columns' text, not ``row_to_json``, and the statement's own cost
(planning, the round trip, the column-definition check) is paid once for several batches. The
row path (the reader's ``read_batch`` + ``RowEncoder`` + ``encode_partition_frames``) reads what
the COPY path cannot: without the C build (its Python twin is slower than the row path), before
PostgreSQL 14 (no type catalog), or with a client encoding other than UTF-8. Both give the same
messages, byte for byte (``tests/polling/test_copy_reader.py``).

Rows read again (late commits behind the read frontier, rows updated before their delete/mark)
always take the row path: those statements return few rows, and the worker looks at each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgsource.encode.frames import PartitionFrames, encode_partition_frames
from pgsource.errors import SourceError
from pgsource.polling.late_commits import SentIds
from pgsource.rows import copyjson
from pgsource.rows.copy_reader import CopyReader
from pgsource.state import PollingOffset

COPY_BATCHES = 8  # batches one COPY reads at most (the default max_in_flight_batches: they go out at once)


@dataclass
class Batch:
    """One batch read at the read frontier, framed: what the worker sends, and what it keeps."""

    parts: list[PartitionFrames]  # per partition, ready for the block (``pgsource/pipeline/block.py``)
    rows: int
    snapshot: str | None  # the read's snapshot (late commits) or tick (xid8)
    after: PollingOffset | None  # where the read after it starts
    ids: bytes | list[int]  # the messages' ids: 16-byte big-endian (COPY) or ints (rows)
    identities: list[tuple] | None  # (key values..., xmin) per row, for delete/mark
    horizon: object = None  # the late-commit horizon observed before the read (set by the worker)
    error: SourceError | None = None  # a bad row after the batches before it: raised when its turn comes

    def sent_ids(self) -> SentIds:
        """The ids kept until the batch's range is re-read for late commits."""
        if isinstance(self.ids, bytes):
            return SentIds.from_sorted(copyjson.sort_ids(self.ids))
        return SentIds(self.ids)


def use_copy(reader) -> bool:
    """Whether ``reader``'s batches are read by COPY (see the module docstring)."""
    return copyjson.NATIVE and CopyReader.supports(reader)


class BatchReader:
    """Reads and frames one unit's batches (``copy``: by COPY, else by rows)."""

    def __init__(self, reader, *, copy: bool | None = None) -> None:
        self.reader = reader
        self.copy = CopyReader(reader) if (use_copy(reader) if copy is None else copy) else None
        self.where = f"table {reader.table_name}"

    def read(self, offset: PollingOffset | None, batch_size: int, read_rows: int) -> list[Batch]:
        """The batches after ``offset``: several from one COPY where the read allows it, else one.

        ``read_rows``: the rows read before them (``partitioning: balanced``). A read that found no
        row is one empty batch (its ``after`` may still move: an xid8 tick that ended)."""
        copy = self.copy
        reader = self.reader
        if copy is None:
            read = reader.read_batch(offset, batch_size)
            return [self._framed(read.rows, read_rows, read.snapshot, read.after)]
        if reader.plan is None or reader.exact:
            read = copy.read_batch(offset, batch_size, read_rows=read_rows)
            return [Batch(read.parts, read.rows, read.snapshot, read.after, read.ids, read.identities)]
        reads, error = copy.read_batches(offset, batch_size, COPY_BATCHES, read_rows=read_rows)
        batches = [Batch(read.parts, read.rows, read.snapshot, read.after, read.ids, read.identities) for read in reads]
        if error is not None:
            batches.append(Batch([], 0, None, batches[-1].after if batches else offset, b"", None, error=error))
        elif not batches:
            batches.append(Batch([], 0, None, offset, b"", None))
        return batches

    def frame_rows(self, rows: list[tuple], read_rows: int) -> Batch:
        """Rows read again (the row path), framed as one batch; its ``after`` is not set."""
        return self._framed(rows, read_rows, None, None)

    def _framed(self, rows: list[tuple], read_rows: int, snapshot: str | None, after: PollingOffset | None) -> Batch:
        encoded = self.reader.encoder.encode_batch(rows, read_rows)
        messages = encoded.messages
        parts = encode_partition_frames(messages.ids, messages.partitions, messages.payloads, messages.headers,
                                        where=self.where) if rows else []
        return Batch(parts, len(rows), snapshot, after, messages.ids, encoded.identities)
