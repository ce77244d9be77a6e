"""``PublisherWorker``: the one process that holds an Iggy client.

It takes batches off the shared queue in order, sends each with the real SDK, and only
when Iggy confirmed the whole batch puts an ``AckEvent`` on the ack queue of the worker
that made it. A failed send is retried with capped exponential back-off, forever (an
Iggy outage must neither lose data nor skip it): the batch that failed is sent again
before anything after it, so per-worker order and acks stay in sequence. Every SDK call
is bounded (``iggy.send_timeout``), so a server that stops answering ends in a retry,
not a hang.

A refusal no retry can fix (``SinkRefused``: wrong password, missing topic with
``create_missing: false``, too few partitions...) is reported to the supervisor as
``fatal`` and stops the service with exit code 5.

Liveness: the publisher beats its ``Liveness`` (workers/liveness.py) whenever its
queue reader comes back (at least every 0.5 s) and while it waits on Iggy, so a
publisher wedged on the queue (a worker killed inside a ``put``) is killed and the
pipeline restarted by the supervisor, like a silent worker.

The process ends with ``os._exit`` once its queues are flushed: apache-iggy 0.9.0 may
complete a future from a tokio thread while the interpreter finalizes, which aborts the
process (SIGABRT) after its work is done.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pgsource.config.model import PUBLISHER, Config
from pgsource.errors import SinkError, SinkRefused
from pgsource.pipeline.channel import Empty, get_event, put_event
from pgsource.pipeline.events import AckEvent, BatchEvent, StopEvent, WorkerState, WorkerStatus
from pgsource.sink import IggySink
from workers.logs import setup_logging
from workers.parent import ParentWatch
from workers.tuning import keep_freed_memory

log = logging.getLogger("pgsource.publisher")

BACKOFF_START = 0.1
BACKOFF_MAX = 2.0  # a recovered Iggy is used again within 2 s (and /readyz is 200 again within ~3 s)
ORPHANED_EXIT_CODE = 1
FLUSH_SECONDS = 5.0
RECONNECT_IDLE = 1.0  # seconds between connection attempts while disconnected with nothing to send


class PublisherWorker:
    """The constructor runs in the parent and touches nothing; ``run()`` runs in the child."""

    def __init__(self, config: Config, batch_queue, ack_queues: dict, status_queue, heartbeat=None, shown=None,
                 liveness=None) -> None:
        self.config = config
        self.batch_queue = batch_queue
        self.ack_queues = ack_queues
        self.status_queue = status_queue
        self.heartbeat = heartbeat  # the publisher's Liveness (workers/liveness.py), or None
        self.shown = shown  # PublisherLiveness: connected, the send in progress (readiness)
        self.liveness = liveness or {}  # worker -> Liveness: when Iggy last acknowledged its batch

    def run(self) -> None:
        setup_logging(config=self.config)
        keep_freed_memory()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # it stops when the StopEvent arrives
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from pgsource.metrics import Metrics

        self.metrics = Metrics.get()
        self._last_attempt = 0.0
        self.watch = ParentWatch()
        self.beat()
        put_event(self.status_queue, WorkerStatus(PUBLISHER, WorkerState.READY))
        code = 1
        try:
            code = asyncio.run(self._main())
        except SinkRefused as exc:
            log.error("publisher: %s", exc)
            put_event(self.status_queue, WorkerStatus(PUBLISHER, WorkerState.FATAL, exc))
            code = exc.exit_code
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:
            log.exception("publisher: unexpected error")
        finally:
            self._exit(code)

    def beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()
        if self.shown is not None:
            self.shown.beat()

    def _exit(self, code: int) -> None:
        """Flush what this process put on its queues (for at most FLUSH_SECONDS: a queue
        nobody reads any more must not hold the exit), then leave without finalizing the
        interpreter."""
        channels = [*self.ack_queues.values(), self.status_queue]

        def flush() -> None:
            for channel in channels:
                try:
                    channel.close()
                    channel.join_thread()
                except (OSError, ValueError, AssertionError):
                    pass

        flusher = threading.Thread(target=flush, name="queue-flush", daemon=True)
        flusher.start()
        flusher.join(FLUSH_SECONDS)
        atexit._run_exitfuncs()  # what exit handlers there are (a profiler's dump) run before teardown would
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    async def _main(self) -> int:
        sink = IggySink(self.config.iggy, on_wait=self.beat)
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-reader")
        pending = loop.run_in_executor(reader, self._next_event)
        try:  # connect while the workers start, not when the first batch is already waiting
            await self._connect(sink)
        except SinkRefused:
            raise
        except SinkError as exc:
            log.debug("publisher: %s; connecting again with the first batch", exc)
        while True:
            event = await pending
            self.beat()
            if event is None:
                if self.watch.orphaned():
                    log.error("publisher: supervisor is gone, exiting")
                    return ORPHANED_EXIT_CODE
                pending = loop.run_in_executor(reader, self._next_event)
                await self._reconnect_when_idle(sink)
                continue
            if isinstance(event, StopEvent):
                log.info("publisher: stop requested, queue drained")
                sink.disconnect()
                return 0
            pending = loop.run_in_executor(reader, self._next_event)  # read ahead while sending
            await self._deliver(sink, event)

    async def _sleep(self, seconds: float) -> None:
        """The back-off, beating meanwhile: waiting out an Iggy outage is not being wedged."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.beat()
            await asyncio.sleep(min(left, 1.0))
        self.beat()

    # -- what readiness and the metrics see (workers/health_monitor.py) --------------------------------

    async def _connect(self, sink: IggySink) -> None:
        try:
            await sink.connect()
        except SinkError as exc:
            self._connected(False, str(exc))
            raise
        self._connected(True)

    async def _reconnect_when_idle(self, sink: IggySink) -> None:
        """With nothing to send, still find out (every RECONNECT_IDLE s) whether Iggy is back:
        readiness says "not connected to Iggy" until the publisher is."""
        if sink.connected or time.monotonic() - self._last_attempt < RECONNECT_IDLE:
            return
        self._last_attempt = time.monotonic()
        try:
            await self._connect(sink)
            log.info("publisher: connected to Iggy at %s", self.config.iggy.address)
        except SinkError as exc:
            log.debug("publisher: %s", exc)

    def _connected(self, connected: bool, error: str = "") -> None:
        self._last_attempt = time.monotonic()
        if self.shown is not None:
            self.shown.connected(connected, error)

    def _sending(self, worker: str | None) -> None:
        if self.shown is not None:
            self.shown.sending(worker)

    def _acknowledged(self, event: BatchEvent, now: float) -> None:
        self._sending(None)
        size = sum(len(part.frames) for part in event.parts)
        if event.tables is None:
            self.metrics.bytes_sent.labels(event.table).inc(size)
        else:  # CDC, a topic several tables share
            for table, (_, frame_bytes) in event.tables.items():
                self.metrics.bytes_sent.labels(table).inc(frame_bytes)
        self.metrics.batch_messages.labels(event.worker).observe(len(event))
        self.metrics.batch_bytes.labels(event.worker).observe(size)
        if event.created:
            self.metrics.ack_seconds.labels(event.worker).observe(max(0.0, now - event.created))
        if event.commit_time:
            self.metrics.commit_to_ack.labels(event.worker).observe(max(0.0, now - event.commit_time))
        liveness = self.liveness.get(event.worker)
        if liveness is not None:
            liveness.acknowledged()

    def _next_event(self):
        try:
            return get_event(self.batch_queue, timeout=0.5)
        except Empty:
            return None

    async def _deliver(self, sink: IggySink, event: BatchEvent) -> None:
        delay = BACKOFF_START
        failures = 0
        confirmed: set[int] = set()  # requests of this batch Iggy already confirmed: not re-sent
        reason = ""
        self._sending(event.worker)
        while True:
            started = time.monotonic()
            connecting = not sink.connected
            try:
                if failures:
                    self.metrics.send_retries.labels(reason).inc()
                if connecting:
                    await self._connect(sink)
                    if failures:
                        log.info("publisher: connected to Iggy at %s again", self.config.iggy.address)
                await sink.send_frames(event.stream, event.topic, event.parts, confirmed)
                break
            except SinkRefused:
                raise
            except SinkError as exc:
                failures += 1
                reason = _failure_reason(exc, connecting)
                self.metrics.send_errors.labels(reason).inc()
                level = logging.WARNING if failures == 1 or failures % 10 == 0 else logging.DEBUG
                log.log(level, "publisher: %s; retrying in %.1fs (attempt %d)", exc, delay, failures)
                sink.disconnect()
                self._connected(False, str(exc))
                if self.watch.orphaned():
                    raise SystemExit(ORPHANED_EXIT_CODE) from None
                await self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        now = time.time()
        self.metrics.send_seconds.observe(time.monotonic() - started)
        if event.tables is None:
            self.metrics.messages_sent.labels(event.table).inc(len(event))
        else:
            for table, (messages, _) in event.tables.items():
                self.metrics.messages_sent.labels(table).inc(messages)
        if event.commit_time:
            self.metrics.lag_seconds.labels(event.worker).set(now - event.commit_time)
        self._acknowledged(event, now)
        ack_queue = self.ack_queues.get(event.worker)
        if ack_queue is not None:
            put_event(ack_queue, AckEvent(event.worker, event.seq, len(event), now))


def _failure_reason(exc: SinkError, connecting: bool) -> str:
    """A small fixed set of reasons (a label value): connect, timeout, send."""
    if connecting:
        return "connect"
    return "timeout" if "timed out" in str(exc) else "send"


def run_publisher(config: Config, batch_queue, ack_queues: dict, status_queue, heartbeat=None, shown=None,
                  liveness=None) -> None:
    """Process target (module-level so the spawn start method can import it)."""
    PublisherWorker(config, batch_queue, ack_queues, status_queue, heartbeat, shown, liveness).run()
