"""Events on multiprocessing queues, pickled once by the C pickler.

The design card's ``multiprocess`` package pickles with dill, a pure-Python pickler; a
batch of a thousand messages would cost milliseconds that way. Each event is therefore
put on the queue as one ``bytes`` blob made by the standard pickle, which dill passes
through untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import pickle
import queue
import time
from typing import Any

Empty = queue.Empty
Full = queue.Full


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


def keep_freed_memory(mmap_threshold: int = 16 << 20, trim_threshold: int = 32 << 20) -> bool:
    """Let glibc reuse freed memory instead of handing it back to the kernel after every batch.

    A batch crosses the queue as one pickled blob of a few hundred KB, written by the
    worker and read back by the publisher. By default glibc serves blocks that size with
    fresh ``mmap``s, or trims them off the heap once freed, so every batch page-faults its
    memory in again (about 120 faults per 1,000-row batch, kernel time in both processes).
    Raising both thresholds keeps up to ``trim_threshold`` of freed heap for the next
    batch; a process holds at most that much more RSS. No-op (False) without glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def widen_pipe(channel, size: int = 1 << 20) -> bool:
    """Give a queue's pipe ``size`` bytes of kernel buffer (Linux ``F_SETPIPE_SZ``).

    With the default 64 KB, a batch of ~430 KB crosses in seven write/read rounds, each a
    context switch in both processes: 0.2 ms of CPU per batch on each side, half of it
    saved by a pipe that holds a whole batch (bench: 230 → 115 µs). Best effort: False
    where the kernel refuses (``/proc/sys/fs/pipe-max-size``) or is not Linux.
    """
    try:
        fcntl.fcntl(channel._writer.fileno(), _F_SETPIPE_SZ, size)
    except (AttributeError, OSError, ValueError):
        return False
    return True


_F_SETPIPE_SZ = 1031


class ParentWatch:
    """Notices that the supervisor died (our parent pid changed), as gunicorn's workers do."""

    def __init__(self) -> None:
        self.parent = os.getppid()

    def orphaned(self) -> bool:
        return os.getppid() != self.parent


class StopFlag:
    """A lock-free stop request shared by every process.

    ``multiprocessing.Event`` is built on a condition variable: a process killed (kill -9,
    or by the supervisor) while waiting on it leaves the condition waiting for a wake-up
    that never comes, and the next ``set()`` hangs. A shared byte, polled, cannot break.
    """

    def __init__(self, ctx) -> None:
        self._flag = ctx.RawValue("b", 0)

    def set(self) -> None:
        self._flag.value = 1

    def is_set(self) -> bool:
        return bool(self._flag.value)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._flag.value:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, 0.01))
        return True
