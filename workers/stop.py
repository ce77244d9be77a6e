"""Stop requests: the service-wide one shared by every process, and the signals that ask the supervisor."""

from __future__ import annotations

import os
import signal
import time
from collections import deque


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


class SignalPipe:
    """SIGTERM and SIGINT for the supervisor's loop, as gunicorn's arbiter takes them: the handler
    only queues the signal, and a byte on the signal pipe wakes the loop's sleep, so a SIGTERM is
    handled at once, not at the next poll."""

    def __init__(self) -> None:
        self._queued: deque[int] = deque()
        self._pipe: tuple[int, int] | None = None  # (read end, write end)

    def catch(self) -> None:
        """Queue SIGTERM and SIGINT from now on (before the loop exists, a stop is a clean one)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda signum, frame: self._queued.append(signum))

    def first(self) -> int | None:
        """The first signal queued and not taken yet, if any."""
        return self._queued[0] if self._queued else None

    def install(self) -> None:
        """The signal pipe besides the queue: a signal wakes the loop's sleep."""
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        try:
            signal.set_wakeup_fd(write)
            self._pipe = (read, write)
        except ValueError:  # not the main thread (an embedding): the sleep's timeout bounds the delay
            os.close(read)
            os.close(write)
        self.catch()

    def waitables(self) -> list[int]:
        """What the loop's sleep waits on besides its children (the pipe's read end)."""
        return [self._pipe[0]] if self._pipe is not None else []

    def drain(self, ready: list) -> None:
        """Empty the pipe once the sleep woke on it (the signals stay queued)."""
        if self._pipe is None or self._pipe[0] not in ready:
            return
        try:
            while os.read(self._pipe[0], 512):
                pass
        except BlockingIOError:
            pass

    def take(self) -> list[int]:
        """The signals that came since the last look, oldest first."""
        taken = list(self._queued)
        self._queued.clear()
        return taken

    def close(self) -> None:
        if self._pipe is not None:
            signal.set_wakeup_fd(-1)
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None
