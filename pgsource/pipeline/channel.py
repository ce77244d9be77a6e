"""The channels between the processes: batches as raw blocks on one pipe, small events on queues.

``BlockChannel`` carries batch blocks (``pgsource/pipeline/block.py``) from every worker to
the one publisher over a single pipe, each block behind its length:

- bounded: a writer first takes one of ``slots`` (given back when the publisher has read
  the block), and the pipe itself holds at most its size; while Iggy is down the
  publisher stops reading, so the workers wait, and no process's memory grows;
- in order per worker: one writer at a time (a lock across processes), each block
  written whole before the lock is let go, so blocks never interleave;
- never torn: the publisher returns a block only once all of it was read. A writer that
  began a block finishes it (its waits only keep it alive, they cannot abandon it); one
  that dies halfway (kill -9, the OOM killer) leaves a block the reader never completes,
  and the lock held. The supervisor restarts the whole pipeline on fresh channels when a
  worker dies by a signal (``workers/supervisor.py``), so the half is never sent.

``put_event``/``get_event`` carry the small events (acks, statuses) on multiprocessing
queues, pickled once by the C pickler.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import struct
import time
from collections.abc import Callable
from typing import Any

Empty = queue.Empty
Full = queue.Full

WAIT_SLICE = 0.2  # seconds between calls of a writer's ``waiting`` while it waits
_LENGTH = struct.Struct("<Q")


class ChannelClosed(Exception):
    """The publisher's end of the channel is gone (the supervisor died): nothing can be sent."""


class BlockChannel:
    """Many writers, one reader; made by the supervisor, handed to the children at spawn."""

    def __init__(self, ctx, slots: int) -> None:
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._lock = ctx.Lock()
        self._slots = ctx.BoundedSemaphore(slots)
        self.capacity = slots
        self._reset_reading()

    def __getstate__(self) -> dict:
        return {"_reader": self._reader, "_writer": self._writer, "_lock": self._lock, "_slots": self._slots,
                "capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_reading()

    def pipe_fd(self) -> int:
        """The pipe's write end (its size is tuned by ``workers/tuning.py``)."""
        return self._writer.fileno()

    def depth(self) -> int | None:
        """Blocks written and not read yet (the queue-depth metric); None where the platform cannot say."""
        try:
            return self.capacity - self._slots.get_value()
        except NotImplementedError:  # sem_getvalue (macOS)
            return None

    # -- writing (the workers, and the supervisor's stop block) --------------------------------

    def put(self, block: bytes | bytearray, waiting: Callable[[], bool] | None = None) -> bool:
        """Write ``block`` whole; False, with nothing written, when ``waiting()`` said stop before it began.

        ``waiting`` is called about every WAIT_SLICE seconds while the channel is full: it keeps
        the writer alive (heartbeat, replication feedback) and, until the block has begun, may
        give up. Once the block has begun it is finished, whatever ``waiting`` says; an error
        ``waiting`` raises meanwhile is raised after the block is complete.
        """
        if not _acquire(self._slots, waiting):
            return False
        if not _acquire(self._lock, waiting):
            self._slots.release()
            return False
        try:
            failure = self._write_whole([memoryview(_LENGTH.pack(len(block))), memoryview(block).cast("B")], waiting)
        finally:
            self._lock.release()
        if failure is not None:
            raise failure
        return True

    def _write_whole(self, views: list[memoryview], waiting: Callable[[], bool] | None) -> BaseException | None:
        fd = self._writer.fileno()
        if not self._writing:
            os.set_blocking(fd, False)  # on the pipe's write end, shared by every writer: all of them write this way
            self._writing = True
        failure = None
        while views:
            try:
                written = os.writev(fd, views)
            except BlockingIOError:
                written = 0
            except BrokenPipeError:
                raise ChannelClosed("the publisher's end of the batch channel is closed") from None
            while written and views:
                step = min(written, len(views[0]))
                views[0] = views[0][step:]
                written -= step
                if not len(views[0]):
                    views.pop(0)
            if views and not _ready(fd, select.POLLOUT, WAIT_SLICE) and waiting is not None and failure is None:
                try:
                    waiting()
                except BaseException as exc:  # noqa: BLE001 - raised once the block is whole (see put)
                    failure = exc
        return failure

    # -- reading (the publisher) ---------------------------------------------------------------

    def get(self, timeout: float) -> bytearray | None:
        """The next whole block, or None when none is complete within ``timeout`` seconds.

        What is read of a block is kept between calls; a block whose writer died halfway is
        never returned.
        """
        fd = self._reader.fileno()
        if not self._nonblocking:
            os.set_blocking(fd, False)
            self._nonblocking = True
        deadline = time.monotonic() + timeout
        while True:
            complete = self._read_available(fd)
            if complete:
                block, self._block = self._block, None
                self._length, self._got = None, 0
                self._slots.release()
                return block
            left = deadline - time.monotonic()
            if complete is None:  # no writer left (the supervisor is gone): nothing more will come
                time.sleep(max(0.0, min(left, WAIT_SLICE)))
                return None
            if left <= 0 or not _ready(fd, select.POLLIN, left):
                return None

    def _read_available(self, fd: int) -> bool | None:
        """Read what the pipe holds of the current block; True once it is complete, None at the
        pipe's end (every write end closed)."""
        while True:
            target = self._head if self._length is None else self._block
            try:
                got = os.readv(fd, [memoryview(target)[self._got:]])
            except BlockingIOError:
                return False
            if got == 0:
                return None
            self._got += got
            if self._got < len(target):
                continue
            if self._length is None:
                (self._length,) = _LENGTH.unpack(self._head)
                self._block, self._got = bytearray(self._length), 0
                if self._length:
                    continue
            return True

    def _reset_reading(self) -> None:
        self._head = bytearray(_LENGTH.size)
        self._length: int | None = None
        self._block: bytearray | None = None
        self._got = 0
        self._nonblocking = False
        self._writing = False


def _acquire(lock, waiting: Callable[[], bool] | None) -> bool:
    """Take ``lock`` (a lock or a semaphore), asking ``waiting()`` every WAIT_SLICE whether to give up."""
    while not lock.acquire(timeout=WAIT_SLICE):
        if waiting is not None and waiting():
            return False
    return True


def _ready(fd: int, event: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def put_event(channel, event: Any, should_stop=None, timeout: float = 0.2) -> bool:
    """Put ``event``, waiting while the queue is full; False if ``should_stop()`` said stop first."""
    blob = pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)
    while True:
        try:
            channel.put(blob, timeout=timeout)
            return True
        except Full:
            if should_stop is not None and should_stop():
                return False


def get_event(channel, timeout: float | None = None) -> Any:
    """The next event; raises ``Empty`` after ``timeout`` seconds."""
    blob = channel.get(timeout=timeout) if timeout is not None else channel.get()
    return pickle.loads(blob)


def get_event_nowait(channel) -> Any:
    """The next event if one is there at once; raises ``Empty`` otherwise."""
    return get_event(channel, timeout=0.000_001)
