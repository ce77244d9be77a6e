"""The service-wide stop request, shared by every process."""

from __future__ import annotations

import time


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
