"""The SQL transport's read: a slot peek as ``COPY (...) TO STDOUT (FORMAT binary)``, split into messages.

psycopg2 hands the COPY stream to a ``BufferedWriter`` whose raw sink (``BinaryCopyRows``)
gets chunks of ``chunk`` bytes; each chunk is split by the binary COPY framing into the
rows' one ``data`` value (a pgoutput message) without a per-row Python object from
psycopg2, and without bytea's hex text. Memory stays bounded: one chunk and the
unfinished message at its end.

Binary COPY: an 11-byte signature, int32 flags, int32 header extension length and the
extension; then per row int16 field count (1 here), int32 length, the ``data`` bytes;
finally int16 -1.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

from pgsource.errors import PgSourceError

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
COPY_CHUNK = 1 << 20  # bytes of the peek's COPY output handed over at a time
PEEK_CHANGES = 200_000  # changes per peek at least: each peek decodes again from the slot's restart LSN
_COPY_ROW = struct.Struct("!hi").unpack_from  # field count, data length
_I32 = struct.Struct("!i").unpack_from

# on_chunk(buffer, its latin-1 text or None, [(start, end) of each message in it])
ChunkHandler = Callable[[bytes, "str | None", list], None]


def peek_limit(batch_size: int, max_in_flight: int) -> int:
    """Changes one peek reads at most: what may be in flight, and at least PEEK_CHANGES (each peek
    decodes again from the slot's restart LSN)."""
    return max(batch_size * max_in_flight, PEEK_CHANGES)


def build_peek_copy(conn, query, params) -> bytes:
    """The peek query (``replication.build_peek``) as a binary COPY statement, values bound."""
    with conn.cursor() as cur:
        return b"COPY (" + cur.mogrify(query, params) + b") TO STDOUT WITH (FORMAT binary)"


def copy_out(conn, statement: bytes, sink: io.RawIOBase, chunk: int) -> None:
    """Run the COPY into ``sink`` through a buffer of ``chunk`` bytes; after a failure the
    buffered rest goes to the (failed) sink, which drops it."""
    buffered = io.BufferedWriter(sink, buffer_size=chunk)
    try:
        with conn.cursor() as cur:
            cur.copy_expert(statement, buffered)
        buffered.flush()
    finally:
        buffered.close()


class BinaryCopyRows(io.RawIOBase):
    """The raw sink of a one-column binary COPY: hands each chunk's complete rows to ``on_chunk``.

    ``needs_text``: also give the chunk as one latin-1 str (the pure-Python row functions
    slice values out of it). ``where`` names the reader in errors. ``rows``: the rows seen.
    """

    def __init__(self, on_chunk: ChunkHandler, *, needs_text: bool, where: str) -> None:
        super().__init__()
        self.on_chunk = on_chunk
        self.needs_text = needs_text
        self.where = where
        self.rows = 0
        self._tail = b""
        self._header = True
        self._done = False
        self._failed = False  # after an exception, nothing more is handed over (the writer's last flush)

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        if self._failed:
            return len(chunk)
        try:
            return self._write(chunk)
        except BaseException:
            self._failed = True
            raise

    def _write(self, chunk) -> int:
        size = len(chunk)
        buf = self._tail + chunk if self._tail else bytes(chunk)
        pos = 0
        if self._header:
            if len(buf) < 19:
                self._tail = buf
                return size
            if buf[:11] != COPY_SIGNATURE:
                raise PgSourceError(f"{self.where}: the peek's COPY output has no binary COPY signature")
            pos = 19 + _I32(buf, 15)[0]  # skip the header extension
            self._header = False
        spans = []
        total = len(buf)
        while pos + 2 <= total:
            if buf[pos] == 0xFF and buf[pos + 1] == 0xFF:  # the trailer: field count -1
                self._done = True
                pos = total
                break
            if pos + 6 > total:
                break
            fields, length = _COPY_ROW(buf, pos)
            if fields != 1:
                raise PgSourceError(f"{self.where}: unexpected binary COPY row of {fields} fields")
            start = pos + 6
            end = start + length
            if end > total:
                break
            pos = end
            spans.append((start, end))
        self._tail = buf[pos:]
        self.rows += len(spans)
        # One str for the chunk, for the pure-Python row functions: a value is a slice of it.
        self.on_chunk(buf, buf.decode("latin-1") if self.needs_text and spans else None, spans)
        return size

    def finish(self) -> None:
        if self._tail or not self._done:
            raise PgSourceError(f"{self.where}: the peek's COPY output ended in the middle of a row")
