"""``QueueWorker``: what a poll worker and a CDC worker share as processes.

The constructor runs in the parent and touches nothing; ``run()`` runs in the child: it
sets up logging and signals, ``boot()``s (connections, plans, slots), reports ``ready``,
then ``serve()``s until asked to stop. How it ends tells the supervisor what to do:

- a ``PgSourceError`` (bad table, bad row, lost slot) is reported as ``fatal`` and stops
  the service with that error: restarting would fail the same way, or skip data;
- a lost or refused PostgreSQL connection exits with code 75 (EX_TEMPFAIL); the supervisor
  restarts the worker with back-off for as long as it takes (an outage of the database is
  not a crash loop) and the worker resumes from its committed offsets;
- a stop request returns normally once in-flight batches are acknowledged or the
  deadline passed.
"""

from __future__ import annotations

import logging
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass

from pgsource.config.model import Config
from pgsource.errors import PgSourceError, SourceUnavailable, TableChanged
from pgsource.pg import connect as pg
from pgsource.pg.statements import backend_pid
from pgsource.pipeline.channel import put_event
from pgsource.pipeline.events import WorkerState, WorkerStatus
from pgsource.plan.assignment import WorkUnit
from workers.liveness import Liveness
from workers.logs import setup_logging
from workers.parent import ParentWatch
from workers.tuning import keep_freed_memory

log = logging.getLogger("pgsource.worker")

GENERATION_STRIDE = 1 << 40  # seq numbers of a restarted worker never collide with old acks
PARENT_CHECK_EVERY = 0.5  # seconds between looks at whether the supervisor still exists


@dataclass
class WorkerSpec:
    """Everything a worker process needs, pickled into the child at spawn."""

    name: str
    generation: int
    config: Config
    units: list[WorkUnit]
    workers_total: int = 1
    liveness: Liveness | None = None  # shared with the supervisor: heartbeat, statement, backends

    def beat(self) -> None:
        """Prove liveness to the supervisor (a silent worker is killed and replaced)."""
        if self.liveness is not None:
            self.liveness.beat()

    def statement(self, label: str):
        """Mark a statement that may run longer than the heartbeat allows (see ``Liveness``)."""
        return self.liveness.statement(label) if self.liveness is not None else nullcontext()

    def progressed(self) -> None:
        """Progress was committed (a worker dying again in one statement after this is not looping)."""
        if self.liveness is not None:
            self.liveness.progressed()

    def backends(self, *connections) -> None:
        """Tell the supervisor which PostgreSQL backends are ours (to check, or end when orphaned)."""
        if self.liveness is not None:
            for connection in connections:
                self.liveness.add_backend(backend_pid(connection))


class QueueWorker:
    def __init__(self, spec: WorkerSpec, batch_queue, ack_queue, status_queue, stop_event) -> None:
        self.spec = spec
        self.batch_queue = batch_queue
        self.ack_queue = ack_queue
        self.status_queue = status_queue
        self.stop_event = stop_event
        self._stopping = False
        self.orphaned = False  # the supervisor died: nothing we send can be acknowledged any more
        self._parent_checked = 0.0
        self._seq = spec.generation * GENERATION_STRIDE

    def boot(self) -> None:
        """Open connections and check what the work needs (in the child)."""
        raise NotImplementedError

    def serve(self) -> None:
        """Do the work until a stop is requested."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (always called after ``boot`` succeeded)."""

    def run(self) -> None:
        self.notify()  # the imports of the spawned child are done
        setup_logging(config=self.spec.config)
        keep_freed_memory()  # batches of hundreds of KB: reuse freed heap instead of page-faulting anew
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
        signal.signal(signal.SIGTERM, self._handle_term)
        self.watch = ParentWatch()
        from pgsource.metrics import Metrics

        self.metrics = Metrics.get()
        try:
            self.boot()
        except (PgSourceError, pg.OperationalError, pg.InterfaceError) as exc:
            self._exit(exc, "while starting")
        put_event(self.status_queue, WorkerStatus(self.spec.name, WorkerState.READY))
        try:
            self.serve()
        except (PgSourceError, pg.OperationalError, pg.InterfaceError) as exc:
            self._exit(exc, "while running")
        finally:
            self.close()

    def _exit(self, exc: BaseException, when: str) -> None:
        """Leave the process the way the module docstring says this kind of failure must."""
        name = self.spec.name
        if isinstance(exc, TableChanged):
            log.warning("%s: %s; the supervisor will restart this worker", name, exc)
            raise SystemExit(SourceUnavailable.exit_code) from None
        if isinstance(exc, (SourceUnavailable, pg.OperationalError, pg.InterfaceError)):
            log.warning("%s: PostgreSQL unavailable %s (%s); the supervisor will restart this worker",
                        name, when, str(exc).strip())
            raise SystemExit(SourceUnavailable.exit_code) from None
        log.error("%s", exc)
        put_event(self.status_queue, WorkerStatus(name, WorkerState.FATAL, exc))
        raise SystemExit(exc.exit_code) from None

    def _handle_term(self, signum, frame) -> None:
        self._stopping = True

    def notify(self) -> None:
        """Prove liveness to the supervisor, as gunicorn's workers ``notify()`` their arbiter: every
        loop that turns or waits calls it (a silent worker is killed and replaced)."""
        self.spec.beat()

    def _waiting(self) -> bool:
        """``put_event``'s question while the batch queue is full: alive, and should it give up?"""
        self.notify()
        return self._should_stop()

    def _should_stop(self) -> bool:
        """Stop asked (SIGTERM, the shared stop flag), or the supervisor died (kill -9): a worker
        then stops instead of holding its slot and connections as an orphan."""
        now = time.monotonic()
        if not self.orphaned and now - self._parent_checked >= PARENT_CHECK_EVERY:
            self._parent_checked = now
            if self.watch.orphaned():
                log.error("%s: supervisor is gone, exiting", self.spec.name)
                self.orphaned = True
        return self._stopping or self.orphaned or self.stop_event.is_set()
