"""``Liveness``: what a worker shows its supervisor, in shared memory that survives the worker.

- a heartbeat (``time.monotonic()`` of its last sign of life);
- the statement it is running, if any, and since when: a worker blocked in one long
  statement cannot beat, and must not be taken for a hung one (the supervisor then
  checks that its backend is active in ``pg_stat_activity``);
- the PostgreSQL backend pids of its connections, so an orphaned backend can be ended;
- a progress counter (statements completed, commits), so "the same statement failed
  again" can be told from "it failed again after doing work".

The label of a statement that raised is kept: after a worker died, it says where.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

LABEL_BYTES = 240
MAX_BACKENDS = 4


class Liveness:
    """Created by the supervisor (from its multiprocessing context), written by one worker."""

    def __init__(self, ctx) -> None:
        self._beat = ctx.Value("d", 0.0, lock=False)
        self._since = ctx.Value("d", 0.0, lock=False)
        self._label = ctx.Array("c", LABEL_BYTES, lock=False)
        self._pids = ctx.Array("i", MAX_BACKENDS, lock=False)
        self._progress = ctx.Value("L", 0, lock=False)
        self._running = ctx.Value("b", 0, lock=False)  # the worker's own code runs (its imports are done)

    # -- the worker's side -------------------------------------------------------------------

    def beat(self) -> None:
        self._beat.value = time.monotonic()
        self._running.value = 1

    @contextmanager
    def statement(self, label: str) -> Iterator[None]:
        """Mark a statement that may run long; its label stays if it raises."""
        self._label.value = label.encode("utf-8", "replace")[: LABEL_BYTES - 1]
        self._since.value = time.monotonic()
        yield
        self._since.value = 0.0
        self._progress.value += 1  # it completed: whatever fails next is not "the same statement again"
        self.beat()

    def backends(self, pids: list[int]) -> None:
        """The backend pids of the worker's connections (at most MAX_BACKENDS)."""
        for index in range(MAX_BACKENDS):
            self._pids[index] = pids[index] if index < len(pids) else 0

    def add_backend(self, pid: int) -> None:
        current = [p for p in self._pids if p]
        if pid not in current:
            self.backends([*current, pid][-MAX_BACKENDS:])

    def progressed(self) -> None:
        self._progress.value += 1

    # -- the supervisor's side ---------------------------------------------------------------

    def reset(self) -> None:
        """Before a (re)start: a fresh heartbeat, no statement, no backends (progress is kept)."""
        self._beat.value = time.monotonic()
        self._running.value = 0
        self._since.value = 0.0
        self._label.value = b""
        self.backends([])

    def silent_for(self) -> float:
        return time.monotonic() - self._beat.value

    @property
    def started(self) -> bool:
        """Whether the worker's own code has beaten yet (a spawned child first imports for a while)."""
        return bool(self._running.value)

    def running(self) -> tuple[str, float] | None:
        """(label, seconds) of the statement in progress, or None."""
        since = self._since.value
        if not since:
            return None
        return self.label, time.monotonic() - since

    @property
    def label(self) -> str:
        return self._label.value.decode("utf-8", "replace")

    @property
    def pids(self) -> list[int]:
        return [pid for pid in self._pids if pid]

    @property
    def progress(self) -> int:
        return self._progress.value
