"""The channels between the processes: batches as raw blocks, small events on queues.

``BlockChannel`` carries batch blocks (``pgsource/pipeline/block.py``) from every worker to
the one publisher:

- a block of up to ``RING_SLOT_BYTES`` is copied into a free slot of a shared memory ring
  (``memfd_create``: anonymous, it has no name in ``/dev/shm`` and is freed when the last
  process holding it exits), and only an 8-byte notice (slot, length) crosses the pipe; the
  publisher decodes the block straight from the slot and frees it. A larger block, or one
  that finds every ring slot taken, crosses the pipe itself behind its length. Through the
  pipe a 430 KB block costs ~0.1 ms of CPU per side in partial writes, reads and wake-ups;
  through the ring one copy (bench/RESULTS.md, "the publisher alone");
- bounded: a writer first takes one of ``slots`` (given back when the publisher has read
  the block), and the pipe itself holds at most its size; while Iggy is down the
  publisher stops reading, so the workers wait, and no process's memory grows;
- in order per worker: one writer at a time (a lock across processes), each block
  written whole, and its notice written after it, before the lock is let go, so blocks never interleave;
- never torn: the publisher returns a block only once all of it was read, and a ring block
  is announced only once it is in its slot. A writer that began a block finishes it (its
  waits only keep it alive, they cannot abandon it); one that dies halfway (kill -9, the
  OOM killer) leaves a block the reader never completes (or never hears of), and the lock
  held. The supervisor restarts the whole pipeline on fresh channels when a worker dies by
  a signal (``workers/supervisor.py``), so the half is never sent.

``put_event``/``get_event`` carry the small events (acks, statuses) on multiprocessing
queues, pickled once by the C pickler.
"""

from __future__ import annotations

import mmap
import os
import pickle
import queue
import select
import struct
import time
from collections.abc import Callable
from typing import Any, TypeVar

from multiprocess import reduction

Empty = queue.Empty
Full = queue.Full

WAIT_SLICE = 0.2  # seconds between calls of a writer's ``waiting`` while it waits
RING_SLOTS = 4  # blocks the shared ring holds at once (the publisher frees a slot as soon as it decoded it)
RING_SLOT_BYTES = 2 << 20  # a bigger block crosses the pipe itself
_LENGTH = struct.Struct("<Q")
_IN_RING = 1 << 63  # a length word with this bit: (slot << 32) | length of a block in the ring
T = TypeVar("T")


class ChannelClosed(Exception):
    """The publisher's end of the channel is gone (the supervisor died): nothing can be sent."""


class BlockChannel:
    """Many writers, one reader; made by the supervisor, handed to the children at spawn."""

    def __init__(self, ctx, slots: int, ring: bool = True) -> None:
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._lock = ctx.Lock()
        self._slots = ctx.BoundedSemaphore(slots)
        self.capacity = slots
        self._ring_fd = _ring_fd() if ring else None
        self._ring_free = ctx.BoundedSemaphore(RING_SLOTS) if self._ring_fd is not None else None
        self._reset_reading()

    def __getstate__(self) -> dict:
        ring = reduction.DupFd(self._ring_fd) if self._ring_fd is not None else None  # only while spawning a child
        return {"_reader": self._reader, "_writer": self._writer, "_lock": self._lock, "_slots": self._slots,
                "capacity": self.capacity, "_ring_fd": ring, "_ring_free": self._ring_free}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._ring_fd is not None:
            self._ring_fd = self._ring_fd.detach()
        self._reset_reading()

    def close(self) -> None:
        """Let go of this process's ends (the supervisor, when it replaces the channels)."""
        for end in (self._reader, self._writer):
            end.close()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._ring_fd is not None:
            os.close(self._ring_fd)
            self._ring_fd = None

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
            slot = self._take_ring_slot(len(block))
            if slot is not None:
                start = slot * RING_SLOT_BYTES
                self._ring[start:start + len(block)] = block
                views = [memoryview(_LENGTH.pack(_IN_RING | slot << 32 | len(block)))]
            else:
                views = [memoryview(_LENGTH.pack(len(block))), memoryview(block).cast("B")]
            failure = self._write_whole(views, waiting)
        finally:
            self._lock.release()
        if failure is not None:
            raise failure
        return True

    def _take_ring_slot(self, length: int) -> int | None:
        """A free ring slot for a block of ``length`` bytes (under the write lock), or None: the pipe then."""
        if self._ring_fd is None or length > RING_SLOT_BYTES or not self._ring_free.acquire(False):
            return None
        ring = self._map()
        for slot in range(RING_SLOTS):  # the lowest free one: the same few slots' pages stay in use
            if not ring[_RING_USED + slot]:
                ring[_RING_USED + slot] = 1
                return slot
        self._ring_free.release()  # cannot happen: the semaphore counts the free slots
        return None

    def _map(self) -> mmap.mmap:
        if self._ring is None:
            self._ring = mmap.mmap(self._ring_fd, _RING_BYTES)
        return self._ring

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

    def get(self, timeout: float, decode: Callable[[memoryview], T] | None = None) -> T | bytes | bytearray | None:
        """The next whole block (``decode(view)`` of it when given), or None when none is complete
        within ``timeout`` seconds.

        What is read of a block is kept between calls; a block whose writer died halfway is
        never returned. ``decode`` reads a ring block in place (its slot is freed once it
        returned: it must copy what it keeps); without it a ring block is copied out.
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
                length, self._length, self._got = self._length, None, 0
                try:
                    if length & _IN_RING:
                        return self._from_ring(length, decode)
                    return decode(memoryview(block)) if decode is not None else block
                finally:
                    self._slots.release()
            left = deadline - time.monotonic()
            if complete is None:  # no writer left (the supervisor is gone): nothing more will come
                time.sleep(max(0.0, min(left, WAIT_SLICE)))
                return None
            if left <= 0 or not _ready(fd, select.POLLIN, left):
                return None

    def _from_ring(self, word: int, decode: Callable[[memoryview], T] | None) -> T | bytes:
        slot, length = (word & ~_IN_RING) >> 32, word & 0xFFFFFFFF
        ring = self._map()
        start = slot * RING_SLOT_BYTES
        view = memoryview(ring)[start:start + length]
        try:
            return decode(view) if decode is not None else bytes(view)
        finally:
            view.release()
            ring[_RING_USED + slot] = 0
            self._ring_free.release()

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
                if self._length & _IN_RING:
                    return True
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
        self._ring: mmap.mmap | None = None


_RING_USED = RING_SLOTS * RING_SLOT_BYTES  # one byte per slot after the slots: 1 = holds a block not yet read
_RING_BYTES = _RING_USED + mmap.PAGESIZE


def _ring_fd() -> int | None:
    """An anonymous shared memory file for the ring (Linux ``memfd_create``); None elsewhere: the pipe only."""
    try:
        fd = os.memfd_create("pgsource-batches", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return None
    os.ftruncate(fd, _RING_BYTES)
    return fd


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
