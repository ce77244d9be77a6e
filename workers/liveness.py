"""``Liveness``: what a worker shows its supervisor, in shared memory that survives the worker.

- a heartbeat (``time.monotonic()`` of its last sign of life);
- the statement it is running, if any, and since when: a worker blocked in one long
  statement cannot beat, and must not be taken for a hung one (the supervisor then
  checks that its backend is active in ``pg_stat_activity``);
- the PostgreSQL backend pids of its connections, so an orphaned backend can be ended;
- a progress counter (statements completed, commits), so "the same statement failed
  again" can be told from "it failed again after doing work".

The label of a statement that raised is kept: after a worker died, it says where.

For readiness (``workers/health_monitor.py``) it also shows whether work flows: when Iggy last
acknowledged one of the worker's batches (written by the publisher), when a read last
found nothing more to read, and since when its oldest batch waits for an acknowledgement.
``PublisherLiveness`` is the publisher's side: connected to Iggy or not, the batch it is
sending and since when.
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
        # readiness: monotonic times, 0.0 = never / nothing
        self._acked_at = ctx.Value("d", 0.0, lock=False)  # written by the publisher: Iggy acknowledged a batch
        self._caught_up_at = ctx.Value("d", 0.0, lock=False)  # a read found nothing more to read
        self._waiting_since = ctx.Value("d", 0.0, lock=False)  # the oldest unacknowledged batch was queued

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

    def caught_up(self) -> None:
        """A read found nothing more to read: the worker has nothing to do right now."""
        self._caught_up_at.value = time.monotonic()

    def waiting(self, since: float | None) -> None:
        """The oldest batch not acknowledged yet was queued at ``since`` (monotonic); None = none waits."""
        self._waiting_since.value = since or 0.0

    # -- the publisher's side ----------------------------------------------------------------

    def acknowledged(self) -> None:
        """Iggy acknowledged a batch of this worker (the publisher calls it)."""
        self._acked_at.value = time.monotonic()

    # -- the supervisor's side ---------------------------------------------------------------

    def reset(self) -> None:
        """Before a (re)start: a fresh heartbeat, no statement, no backends (progress is kept)."""
        self._beat.value = time.monotonic()
        self._running.value = 0
        self._since.value = 0.0
        self._label.value = b""
        self.backends([])
        self._waiting_since.value = 0.0  # a new generation has nothing in flight yet

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

    @property
    def acked_at(self) -> float:
        return self._acked_at.value

    @property
    def caught_up_at(self) -> float:
        return self._caught_up_at.value

    @property
    def waiting_since(self) -> float:
        return self._waiting_since.value


class PublisherLiveness:
    """The publisher's side, for readiness: connected to Iggy, and the send in progress."""

    def __init__(self, ctx) -> None:
        self._beat = ctx.Value("d", 0.0, lock=False)
        self._connected = ctx.Value("b", 0, lock=False)
        self._sending_since = ctx.Value("d", 0.0, lock=False)  # monotonic; 0.0 = not sending
        self._worker = ctx.Array("c", LABEL_BYTES, lock=False)  # whose batch is being sent
        self._error = ctx.Array("c", LABEL_BYTES, lock=False)  # the last send or connect error

    # -- the publisher's side ----------------------------------------------------------------

    def beat(self) -> None:
        self._beat.value = time.monotonic()

    def connected(self, connected: bool, error: str = "") -> None:
        self._connected.value = 1 if connected else 0
        if error or connected:
            self._error.value = error.encode("utf-8", "replace")[: LABEL_BYTES - 1]

    def sending(self, worker: str | None) -> None:
        """A send of ``worker``'s batch starts (None: it was acknowledged, nothing is being sent)."""
        if worker is None:
            self._sending_since.value = 0.0
        else:
            self._worker.value = worker.encode("utf-8", "replace")[: LABEL_BYTES - 1]
            self._sending_since.value = time.monotonic()
        self.beat()

    # -- the supervisor's side ---------------------------------------------------------------

    def reset(self) -> None:
        self._beat.value = time.monotonic()
        self._connected.value = 0
        self._sending_since.value = 0.0

    def silent_for(self) -> float:
        return time.monotonic() - self._beat.value

    @property
    def is_connected(self) -> bool:
        return bool(self._connected.value)

    @property
    def sending_since(self) -> float:
        return self._sending_since.value

    @property
    def sending_worker(self) -> str:
        return self._worker.value.decode("utf-8", "replace")

    @property
    def error(self) -> str:
        return self._error.value.decode("utf-8", "replace")
