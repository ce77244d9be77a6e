"""``ChildProcess``: what the supervisor's three kinds of children share; ``SourceWorker``: what the two
that read PostgreSQL (``PollWorker``, ``CdcWorker``) share on top of it.

The constructor runs in the parent and touches nothing; ``run()`` runs in the child: it
sets up logging and signals, ``boot()``s (connections, plans, slots), reports ``ready``,
then ``serve()``s until asked to stop, and ``close()``s. The base owns the three things
the supervisor watches in every child:

- the heartbeat (``notify``): every loop that turns or waits calls it; a silent child is
  killed and replaced (``workers/liveness.py``, ``workers/watchdog.py``);
- the stop (``_should_stop``): SIGTERM or the shared stop flag, or the supervisor gone
  (kill -9): a child then stops instead of running on as an orphan;
- the status (``report``): ``ready`` once booted, ``fatal`` with the error that must stop
  the service.

How a child ends tells the supervisor what to do:

- a ``PgSourceError`` (bad table, bad row, lost slot, Iggy refusing the credentials) is
  reported as ``fatal`` and stops the service with that error's exit code: restarting
  would fail the same way, or skip data;
- (workers) a lost or refused PostgreSQL connection exits with code 75 (EX_TEMPFAIL); the
  supervisor restarts the worker with back-off for as long as it takes (an outage of the
  database is not a crash loop) and the worker resumes from its committed offsets;
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
from pgsource.pipeline.channel import BlockChannel, ChannelClosed, put_event
from pgsource.pipeline.committer import Committer
from pgsource.pipeline.events import WorkerState, WorkerStatus
from pgsource.pipeline.outbox import Outbox, OutboxSettings
from pgsource.plan.assignment import WorkUnit
from workers.liveness import Liveness
from workers.logs import setup_logging
from workers.parent import ParentWatch
from workers.tuning import keep_freed_memory

log = logging.getLogger("pgsource.worker")

PARENT_CHECK_EVERY = 0.5  # seconds between looks at whether the supervisor still exists


class ChildProcess:
    """Heartbeat, stop and status of one child; subclasses fill in ``boot``, ``serve``, ``close``."""

    FAILURES: tuple[type[BaseException], ...] = (PgSourceError,)  # what ends the process through ``failed``
    TERM_STOPS = True  # SIGTERM asks for a stop; False keeps its default action (the publisher's)

    def __init__(self, name: str, config: Config, status_queue, liveness: Liveness | None = None,
                 stop_event=None) -> None:
        self.name = name
        self.config = config
        self.status_queue = status_queue
        self.liveness = liveness
        self.stop_event = stop_event
        self._stopping = False
        self.orphaned = False  # the supervisor died: nothing we send can be acknowledged any more
        self._parent_checked = 0.0

    def boot(self) -> None:
        """Open connections and check what the work needs (in the child)."""

    def serve(self) -> None:
        """Do the work until a stop is requested."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (always called after ``boot`` succeeded)."""

    def run(self) -> None:
        self.notify()  # the imports of the spawned child are done
        setup_logging(config=self.config)
        keep_freed_memory()  # batches of hundreds of KB: reuse freed heap instead of page-faulting anew
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
        signal.signal(signal.SIGTERM, self._handle_term if self.TERM_STOPS else signal.SIG_DFL)
        self.watch = ParentWatch()
        from pgsource.metrics import Metrics

        self.metrics = Metrics.get()
        code = 0
        try:
            self._boot_and_serve()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        self.leave(code)

    def _boot_and_serve(self) -> None:
        try:
            self.boot()
        except self.FAILURES as exc:
            self.failed(exc, "while starting")
        self.report(WorkerState.READY)
        try:
            self.serve()
        except self.FAILURES as exc:
            self.failed(exc, "while running")
        except ChannelClosed as exc:
            log.error("%s: %s, exiting", self.name, exc)
            raise SystemExit(1) from None
        finally:
            self.close()

    def failed(self, exc: BaseException, when: str) -> None:
        """Leave the process the way the module docstring says this kind of failure must."""
        log.error("%s", exc)
        self.report(WorkerState.FATAL, exc)
        raise SystemExit(getattr(exc, "exit_code", 1)) from None

    def leave(self, code: int) -> None:
        """The process's end (the exit code for the supervisor)."""
        if code:
            raise SystemExit(code)

    # -- heartbeat, stop, status -----------------------------------------------------------

    def notify(self) -> None:
        """Prove liveness to the supervisor, as gunicorn's workers ``notify()`` their arbiter: every
        loop that turns or waits calls it (a silent child is killed and replaced)."""
        if self.liveness is not None:
            self.liveness.beat()

    def _should_stop(self) -> bool:
        """Stop asked (SIGTERM, the shared stop flag), or the supervisor died (kill -9): a child then
        stops instead of holding its slot and connections as an orphan."""
        now = time.monotonic()
        if not self.orphaned and now - self._parent_checked >= PARENT_CHECK_EVERY:
            self._parent_checked = now
            if self.watch.orphaned():
                log.error("%s: supervisor is gone, exiting", self.name)
                self.orphaned = True
        return self._stopping or self.orphaned or (self.stop_event is not None and self.stop_event.is_set())

    def report(self, state: WorkerState, error: BaseException | None = None) -> None:
        """Tell the supervisor: ready, or failed for good."""
        put_event(self.status_queue, WorkerStatus(self.name, state, error))

    def _handle_term(self, signum, frame) -> None:
        self._stopping = True


@dataclass
class WorkerSpec:
    """Everything a worker process needs, pickled into the child at spawn."""

    name: str
    generation: int
    config: Config
    units: list[WorkUnit]
    workers_total: int = 1
    liveness: Liveness | None = None  # shared with the supervisor: heartbeat, statement, backends

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


class SourceWorker(ChildProcess):
    """A child that reads PostgreSQL and sends batches through its ``Outbox``."""

    FAILURES = (PgSourceError, pg.OperationalError, pg.InterfaceError)

    def __init__(self, spec: WorkerSpec, channel: BlockChannel, ack_queue, status_queue, stop_event) -> None:
        super().__init__(spec.name, spec.config, status_queue, spec.liveness, stop_event)
        self.spec = spec
        self.channel = channel
        self.ack_queue = ack_queue

    def open_outbox(self, committer: Committer) -> Outbox:
        """The outbox of this worker's batches, acknowledgements going to ``committer``."""
        settings = OutboxSettings(self.name, self.spec.generation, self.config.supervisor.stop_timeout)
        return Outbox(settings, self.channel, self.ack_queue, committer, waiting=self._waiting,
                      shown=self.spec.liveness, metrics=self.metrics)

    def failed(self, exc: BaseException, when: str) -> None:
        if isinstance(exc, TableChanged):
            log.warning("%s: %s; the supervisor will restart this worker", self.name, exc)
            raise SystemExit(SourceUnavailable.exit_code) from None
        if isinstance(exc, (SourceUnavailable, pg.OperationalError, pg.InterfaceError)):
            log.warning("%s: PostgreSQL unavailable %s (%s); the supervisor will restart this worker",
                        self.name, when, str(exc).strip())
            raise SystemExit(SourceUnavailable.exit_code) from None
        super().failed(exc, when)

    def _waiting(self) -> bool:
        """The outbox's question while the channel is full: alive, and should it give up?"""
        self.notify()
        return self._should_stop()
