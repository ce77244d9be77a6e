"""``Supervisor``: starts the publisher and the workers, restarts the dead, stops them all.

Modelled on gunicorn's arbiter: signal handlers only queue the signal and the main loop
acts on it; a worker that fails while booting for a reason a restart cannot fix (a
missing table, a bad query) stops the service with its error instead of looping; a
worker that keeps dying is restarted with back-off until ``max_restarts`` within
``restart_window``, then the service gives up with a clear error. Children are started
with the spawn method: a libpq connection never crosses a fork.

When the publisher dies, the batches it had taken but not acknowledged are gone, so the
workers are restarted with it: they resume from their committed offsets. The same
happens when a worker is killed by a signal (SIGKILL from the heartbeat check, the OOM
killer, a crash): it may have died halfway through writing a batch block, holding the
channel's write lock and leaving half a block in the pipe, which would wedge every other
writer and the publisher (which never sends half a block, ``pgsource/pipeline/channel.py``). So the whole pipeline restarts on fresh queues; the old ones are dropped. A
worker that exits by itself (an error it reported, PostgreSQL unavailable) flushed its
queue on the way out and is restarted alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time

import multiprocess

from pgsource.config.model import PUBLISHER, Config
from pgsource.errors import PgSourceError, SourceUnavailable
from pgsource.ops.checks import check_prerequisites
from pgsource.pipeline.block import encode_stop_block
from pgsource.pipeline.channel import BlockChannel, Empty, get_event
from pgsource.pipeline.events import WorkerState, WorkerStatus
from pgsource.plan.assignment import WorkUnit, assign_units
from pgsource.plan.sharding import record_shard
from pgsource.state.lock import StateLock
from workers.base import WorkerSpec
from workers.health_monitor import ChildView, HealthMonitor, SupervisorView
from workers.liveness import Liveness, PublisherLiveness
from workers.poll_worker import run_poll_worker
from workers.publisher import run_publisher
from workers.restarts import RestartPolicy, death_cause
from workers.stop import SignalPipe, StopFlag
from workers.tuning import widen_pipe
from workers.watchdog import Watchdog

IDLE_TURN = 1.0  # seconds the loop sleeps at most with nothing happening
DISPLAY_TURN = 0.2  # ... while the bulk-load progress is drawn

log = logging.getLogger("pgsource.supervisor")


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = multiprocess.get_context("spawn")
        self._signals = SignalPipe()  # SIGTERM/SIGINT, queued; they wake the loop's sleep
        self._stopping = False
        self._exit_code = 0
        self._processes: dict[str, object] = {}
        self._generation: dict[str, int] = {}
        self._restart_at: dict[str, float] = {}
        self.restarts = RestartPolicy.from_config(config)  # back-off, crash loop (workers/restarts.py)
        self._killed: set[str] = set()  # workers that died by a signal: their queues cannot be trusted
        self._metrics_server = None
        self._metrics_dir: str | None = None
        self.watchdog = Watchdog(config)
        # health, readiness and the state.dir lock (workers/health_monitor.py, pgsource/state/lock.py)
        self._tick = time.monotonic()  # the main loop's last turn (/healthz)
        self._connected: set[str] = set()  # children that reported "ready" since their last start
        self._started_at: dict[str, float] = {}
        self._causes: dict[str, str] = {}  # child -> why it died (the restarts metric's cause)
        self._health: HealthMonitor | None = None
        self._lock = StateLock(config.state.dir)
        self._display = None
        # set in run(): the plan, the shared memory, the channels, the stop flag
        self.assignment: dict[str, list[WorkUnit]] = {}
        self.liveness: dict[str, Liveness] = {}
        self.publisher_liveness: PublisherLiveness | None = None
        self.stop_event: StopFlag | None = None
        self.batch_channel: BlockChannel | None = None
        self.status_queue = None
        self.ack_queues: dict[str, object] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until a signal or a fatal error; the process exit code."""
        self._signals.catch()  # queued from the first moment: a stop during the checks is a clean stop
        try:
            self._lock.acquire()
        except PgSourceError as exc:
            log.error("%s", exc)
            return exc.exit_code
        try:
            return self._run_locked()
        finally:
            self._lock.release()

    def _run_locked(self) -> int:
        report = check_prerequisites(self.config)
        if not report.ok:
            for problem in report.problems:
                log.error("%s", problem)
            return report.exit_code
        if self._signals.first() is not None:
            log.info("received %s before the workers started, stopping", signal.Signals(self._signals.first()).name)
            return 0
        # CDC: the table → slot map comes from the configuration and the database (the check read it)
        self.assignment = report.assignment if report.assignment is not None else assign_units(self.config, report.sizes)
        for note in report.notes + report.warnings:
            log.warning("%s", note)
        record_shard(self.config)
        if self.config.shard is not None:
            log.info("shard %d of %d: %s", self.config.shard.index, self.config.shard.count,
                     ", ".join(t.qualified for t in self.config.source.tables) or "no tables")
        for name, units in self.assignment.items():
            log.info("%s: %s", name, ", ".join(u.describe() for u in units) or "custom_query")
        self.liveness = {name: Liveness(self.ctx) for name in [PUBLISHER, *self.assignment]}
        self.publisher_liveness = PublisherLiveness(self.ctx)
        self._health = HealthMonitor(self.config, self.assignment, self.view)
        self._setup_metrics()
        self._signals.install()
        self._open_channels()
        self.stop_event = StopFlag(self.ctx)
        self._display = self._bulk_load_display(report)
        try:
            self._start_publisher()
            for name in self.assignment:
                self._start_worker(name)
            if self._metrics_server is not None:  # nobody can ask otherwise: no judging, no queries
                self._health.start()
            while not self._stopping:
                self._tick = time.monotonic()
                if self._display is not None:
                    self._display.refresh()
                self._handle_signals()
                if self._stopping:
                    break
                self._sleep(self._sleep_timeout())
                while self._read_statuses(timeout=0):
                    pass
                self._reap_and_restart()
        except PgSourceError as exc:
            log.error("%s", exc)
            self._exit_code = exc.exit_code
        finally:
            self._shutdown()
        return self._exit_code

    def _setup_metrics(self) -> None:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            directory = self._metrics_dir = tempfile.mkdtemp(prefix="pgsource-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        else:  # wiped at start: files of an earlier run would be summed with ours
            shutil.rmtree(directory, ignore_errors=True)
            os.makedirs(directory, exist_ok=True)
        if self.config.metrics.port is not None:
            from pgsource.metrics import serve_metrics

            self._metrics_server = serve_metrics(self.config.metrics.host, self.config.metrics.port,
                                                 health=self._health, collectors=self._health.collectors())
            log.info("metrics on http://%s:%d/metrics (and /healthz, /readyz)", self.config.metrics.host,
                     self._metrics_server.server_port)

    def _bulk_load_display(self, report):
        """Rows done out of the estimate per table and chunk, when stderr is a terminal (polling)."""
        import sys

        if self.config.source.cdc or not sys.stderr.isatty() or os.environ.get("PGSOURCE_PROGRESS") == "0":
            return None
        from pgsource.ops.display import BulkLoadDisplay

        return BulkLoadDisplay.start(self.config, self.assignment)

    def _sleep_timeout(self) -> float:
        """Until the next restart is due, at most IDLE_TURN (the watchdog and /healthz need turns)."""
        timeout = DISPLAY_TURN if self._display is not None else IDLE_TURN
        if self._restart_at:
            timeout = min(timeout, max(0.0, min(self._restart_at.values()) - time.monotonic()))
        return timeout

    def _sleep(self, timeout: float) -> None:
        """Until a status arrives, a running child dies, a signal comes, or ``timeout``."""
        from multiprocess.connection import wait

        waitables: list = [self.status_queue._reader]
        waitables += [p.sentinel for name, p in self._processes.items() if name not in self._restart_at and p.exitcode is None]
        waitables += self._signals.waitables()
        self._signals.drain(wait(waitables, timeout))

    def _handle_signals(self) -> None:
        for signum in self._signals.take():
            log.info("received %s, stopping", signal.Signals(signum).name)
            self._stopping = True

    def view(self) -> SupervisorView:
        """What the health monitor may see, read-only (it runs on a thread of its own)."""
        children = {
            name: ChildView(name, process.is_alive(), name in self._connected, self._started_at.get(name, 0.0),
                            self.liveness.get(name))
            for name, process in list(self._processes.items())
        }
        channel = self.batch_channel
        return SupervisorView(self._stopping, self._tick, children, self.publisher_liveness,
                              channel.depth() if channel is not None else None)

    # -- children --------------------------------------------------------------------------

    def _open_channels(self) -> None:
        """The channels between the processes: at start, and fresh ones for a restarted pipeline."""
        slots = max(4, len(self.assignment) * self.config.source.max_in_flight_batches + 2)
        if self.batch_channel is not None:
            self.batch_channel.close()  # the old children are gone: its pipe and shared ring go with them
        self.batch_channel = BlockChannel(self.ctx, slots)
        widen_pipe(self.batch_channel.pipe_fd())
        self.status_queue = self.ctx.Queue()
        self.ack_queues = {name: self.ctx.Queue() for name in self.assignment}

    def _start_publisher(self) -> None:
        self.liveness[PUBLISHER].reset()  # silent for heartbeat_timeout: killed, pipeline restarted
        self.publisher_liveness.reset()
        self._connected.discard(PUBLISHER)
        workers = {name: lv for name, lv in self.liveness.items() if name != PUBLISHER}
        process = self.ctx.Process(
            target=run_publisher,
            args=(self.config, self.batch_channel, self.ack_queues, self.status_queue, self.liveness[PUBLISHER],
                  self.publisher_liveness, workers),
            name=PUBLISHER,
            daemon=False,
        )
        process.start()
        self._processes[PUBLISHER] = process

    def _start_worker(self, name: str) -> None:
        generation = self._generation.get(name, -1) + 1
        self._generation[name] = generation
        self.liveness[name].reset()
        self._started_at[name] = time.monotonic()
        self._connected.discard(name)
        spec = WorkerSpec(name, generation, self.config, self.assignment[name], len(self.assignment), self.liveness[name])
        target = self._worker_target()
        process = self.ctx.Process(
            target=target,
            args=(spec, self.batch_channel, self.ack_queues[name], self.status_queue, self.stop_event),
            name=name,
            daemon=False,
        )
        process.start()
        self._processes[name] = process

    def _worker_target(self):
        if self.config.source.cdc:
            from workers.cdc_worker import run_cdc_worker

            return run_cdc_worker
        return run_poll_worker

    def _read_statuses(self, timeout: float) -> bool:
        """Take one status (waiting at most ``timeout``); False when there was none."""
        try:
            status: WorkerStatus = get_event(self.status_queue, timeout=timeout)
        except Empty:
            return False
        if status.state is WorkerState.READY:
            self.restarts.ready(status.worker)
            self._connected.add(status.worker)
        if status.state is WorkerState.FATAL:
            error = status.error or PgSourceError(f"{status.worker} failed")
            raise error if isinstance(error, PgSourceError) else PgSourceError(f"{status.worker}: {error}")
        return True

    def _reap_and_restart(self) -> None:
        from pgsource.metrics.registry import mark_process_dead

        for name, process in list(self._processes.items()):
            if self._stopping:
                return
            if self._processes.get(name) is not process:
                continue  # replaced by a pipeline restart earlier in this pass
            if process.is_alive():
                self._kill_if_silent(name, process)
                continue
            if name in self._restart_at:
                if time.monotonic() < self._restart_at[name]:
                    continue
                del self._restart_at[name]
                self._restart(name)
                continue
            self._read_statuses(timeout=0.05)  # a fatal status explains the death better than the exit code
            mark_process_dead(process.pid)
            if name in self.liveness:
                self.watchdog.after_death(name, self.liveness[name], process.exitcode)
            now = time.monotonic()
            self._connected.discard(name)
            self._causes.setdefault(name, death_cause(process.exitcode))
            if process.exitcode != SourceUnavailable.exit_code:  # an outage is waited out, not logged as a crash
                log.warning("%s exited with code %s", name, process.exitcode)
                if process.exitcode is not None and process.exitcode < 0:
                    self._killed.add(name)
            self._restart_at[name] = self.restarts.died(name, process.exitcode, now)

    def _kill_if_silent(self, name: str, process) -> None:
        liveness = self.liveness.get(name)
        if liveness is not None and self.watchdog.should_kill(name, liveness):
            self._causes[name] = "silent"
            process.kill()
            process.join(5)

    def _restart(self, name: str) -> None:
        from pgsource.metrics import Metrics

        Metrics.get().restarts.labels(name, self._causes.pop(name, "crashed")).inc()
        if name == PUBLISHER or name in self._killed:
            why = "the publisher died" if name == PUBLISHER else f"{name} was killed (its queues cannot be trusted)"
            log.warning("%s: restarting the publisher and every worker on fresh queues", why)
            self._restart_pipeline()
        else:
            log.warning("restarting %s", name)
            self._start_worker(name)

    def _restart_pipeline(self) -> None:
        """Every child stopped (killed: their queues are being dropped), fresh queues, all started again."""
        from pgsource.metrics.registry import mark_process_dead

        for name in list(self._processes):
            self._terminate(name)
            mark_process_dead(self._processes[name].pid)
        self._restart_at.clear()
        self._killed.clear()
        self._open_channels()
        self._start_publisher()
        for worker in self.assignment:
            self._start_worker(worker)

    def _terminate(self, name: str) -> None:
        process = self._processes.get(name)
        if process is not None and process.is_alive():
            process.kill()
            process.join(5)

    # -- stopping --------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Workers first (they wait for their last acks), then the publisher drains and exits."""
        if self.stop_event is None:
            return
        self.stop_event.set()
        deadline = time.monotonic() + self.config.supervisor.stop_timeout + 5
        for name, process in self._processes.items():
            if name != PUBLISHER:
                process.join(max(0.1, deadline - time.monotonic()))
                if process.is_alive():
                    log.warning("%s did not stop in time; killing it", name)
                    process.kill()
                    process.join(5)
        publisher = self._processes.get(PUBLISHER)
        if publisher is not None and publisher.is_alive():
            self.batch_channel.put(encode_stop_block(), lambda: not publisher.is_alive() or time.monotonic() > deadline)
            publisher.join(max(1.0, deadline - time.monotonic()))
            if publisher.is_alive():
                log.warning("publisher did not drain in time; killing it (unacknowledged batches will be re-sent)")
                publisher.kill()
                publisher.join(5)
        self.watchdog.close()
        if self._health is not None:
            self._health.stop()
        if self._display is not None:
            self._display.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        self._signals.close()
        log.info("stopped")

