"""``ReplicationStream``: one slot's pgoutput stream, confirmed only where pgsource says.

Reading goes through psycopg2's ``ReplicationCursor.read_message`` (C, fast). Confirming
does not: psycopg2 2.9 keeps a flush position of its own and moves it by itself
(``pq_read_replication_message`` in psycopg/pqpath.c). On every keepalive it sets
``flush_lsn = wal_end`` when the last explicit flush is at or past the last data message's
``data_start``, and it sends that position when the server asks for a reply and every
``status_interval`` from ``read_message``; ``send_feedback`` only ever raises it. A
message's ``data_start`` can be below a flush already confirmed (with interleaved
transactions, the next transaction's first change was written before the previous one
committed; Relation and Type messages carry 0), so after an explicit flush psycopg2 may
confirm a keepalive's ``wal_end``: past changes Iggy has not acknowledged. PostgreSQL 15
also lets ``confirmed_flush`` move backward, so its stale position must not go out later.

So this class never hands psycopg2 a flush position: its own stays 0 (InvalidXLogRecPtr,
which the walsender ignores) except after a keepalive read before the first data message
or right after a Relation/Type message (``data_start`` 0). It sends its own Standby Status
Update ('r', write, flush, apply, client time, reply requested) with libpq's
``PQputCopyData``/``PQflush`` on the same connection (``connection.pgconn_ptr``), with
write = flush = apply = the position pgsource may confirm, at least every
``feedback_interval`` seconds even when unchanged (the worker calls ``confirm`` in every
wait, back-pressure included), so the walsender never asks for a reply: it asks only when
it heard nothing for ``wal_sender_timeout / 2``, and psycopg2 would answer with its own
position. ``start_replication`` gets a status interval of ~31 years, so psycopg2's periodic
feedback never goes out (its one automatic feedback, at the first read, carries zeros). What
is left: a process stalled for ``wal_sender_timeout / 2`` (frozen, swapped out) whose stream
holds a reply-requesting keepalive right after a Relation message. Reporting write = flush (not what was received) also keeps the
walsender sending keepalives with its WAL end while pgsource is behind it: that is what lets
an idle stream confirm the server's position (see ``workers/cdc_worker.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import time

import psycopg2

from pgsource.pg import connect as pg

PSYCOPG_STATUS_INTERVAL = 1e9  # seconds: psycopg2's own feedback (stale flush position) never goes out
MIN_SPACING = 0.01  # a changed position is sent at most this often
_EPOCH_2000 = 946_684_800  # PostgreSQL's epoch, in Unix seconds
_STATUS = struct.Struct("!cQQQqB")  # 'r', write, flush, apply, client time (µs since 2000), reply requested

_LIBPQ: ctypes.CDLL | None = None


def libpq() -> ctypes.CDLL:
    """The libpq psycopg2 itself runs on (psycopg2-binary bundles its own), with typed functions."""
    global _LIBPQ
    if _LIBPQ is None:
        path = _loaded_libpq() or ctypes.util.find_library("pq")
        if path is None:
            raise RuntimeError("cannot find the libpq psycopg2 uses (not in /proc/self/maps, no libpq on the system)")
        lib = ctypes.CDLL(path)
        lib.PQputCopyData.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.PQputCopyData.restype = ctypes.c_int
        lib.PQflush.argtypes = [ctypes.c_void_p]
        lib.PQflush.restype = ctypes.c_int
        lib.PQerrorMessage.argtypes = [ctypes.c_void_p]
        lib.PQerrorMessage.restype = ctypes.c_char_p
        _LIBPQ = lib
    return _LIBPQ


def _loaded_libpq() -> str | None:
    """The path of the libpq mapped into this process (psycopg2 is imported above)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6:
                    path = fields[5].strip()
                    if os.path.basename(path).startswith("libpq") and ".so" in path:
                        return path
    except OSError:
        return None
    return None


class ReplicationStream:
    """Streams ``slot`` (pgoutput, protocol 1) from its confirmed position; ``confirm`` says how far."""

    def __init__(self, dsn: str, slot: str, publication: str, *, application_name: str,
                 feedback_interval: float = 1.0) -> None:
        self.connection = pg.connect_replication(dsn, application_name=application_name)
        self.cursor = self.connection.cursor()
        self.cursor.start_replication(
            slot_name=slot, decode=False, status_interval=PSYCOPG_STATUS_INTERVAL,
            options={"proto_version": "1", "publication_names": publication, "messages": "true"},
        )
        # The hot path: psycopg2's own method, no wrapper. A message or None (nothing complete yet).
        self.read_message = self.cursor.read_message
        self._lib = libpq()
        self._pgconn = ctypes.c_void_p(self.connection.pgconn_ptr)
        self.feedback_interval = feedback_interval
        self._position = 0  # what the next feedback says
        self._sent_position = -1
        self._sent_at = 0.0

    @property
    def wal_end(self) -> int:
        """The server's WAL position as of the last message or keepalive read (0 after a Relation)."""
        return self.cursor.wal_end

    def confirm(self, lsn: int, *, force: bool = False) -> bool:
        """``confirm_*``: everything before ``lsn`` is delivered. Sent now if it moved (at most every
        10 ms), if ``feedback_interval`` passed since the last feedback, or if ``force``; True if sent."""
        if lsn > self._position:
            self._position = lsn
        now = time.monotonic()
        due = now - self._sent_at >= self.feedback_interval
        moved = self._position != self._sent_position and now - self._sent_at >= MIN_SPACING
        if not (force or due or moved):
            return False
        self._send_status(self._position)
        self._sent_position = self._position
        self._sent_at = now
        return True

    def wait(self, timeout: float) -> None:
        """Until the socket has something to read, or ``timeout`` seconds."""
        select.select([self.connection], [], [], timeout)

    def close(self) -> None:
        self.connection.close()

    def _send_status(self, lsn: int) -> None:
        client_time = int((time.time() - _EPOCH_2000) * 1_000_000)
        message = _STATUS.pack(b"r", lsn, lsn, lsn, client_time, 0)
        lib = self._lib
        if lib.PQputCopyData(self._pgconn, message, len(message)) != 1:
            raise psycopg2.OperationalError(f"sending replication feedback failed: {self._error()}")
        while True:
            flushed = lib.PQflush(self._pgconn)
            if flushed == 0:
                return
            if flushed < 0:
                raise psycopg2.OperationalError(f"sending replication feedback failed: {self._error()}")
            select.select([], [self.connection], [], 1.0)  # a non-blocking connection with a full socket

    def _error(self) -> str:
        text = self._lib.PQerrorMessage(self._pgconn)
        return (text or b"").decode("utf-8", "replace").strip() or "connection lost"
