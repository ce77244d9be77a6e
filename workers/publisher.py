"""``PublisherWorker``: the one process that holds an Iggy client.

It takes batch blocks off the shared channel in order (``pgsource/pipeline/channel.py``):
each arrives as the workers built it, its SendMessages request bodies ready
(``pgsource/pipeline/block.py``), so the publisher only hands them to the SDK, which adds
the request header. Only when Iggy confirmed the whole batch does it put an ``AckEvent``
on the ack queue of the worker that made it. A failed send is retried with capped exponential back-off, forever (an
Iggy outage must neither lose data nor skip it): the batch that failed is sent again
before anything after it, so per-worker order and acks stay in sequence. Every SDK call
is bounded (``iggy.send_timeout``), so a server that stops answering ends in a retry,
not a hang.

A refusal no retry can fix (``SinkRefused``: wrong password, missing topic with
``create_missing: false``, too few partitions...) is reported to the supervisor as
``fatal`` and stops the service with exit code 5.

Liveness: the publisher beats its ``Liveness`` (workers/liveness.py) whenever its
channel reader comes back (at least every 0.5 s) and while it waits on Iggy; a worker
killed halfway through writing a block leaves a block the publisher never completes (so
never sends), and the supervisor restarts the whole pipeline on fresh channels.

The process ends with ``os._exit`` once its queues are flushed: apache-iggy 0.9.0 may
complete a future from a tokio thread while the interpreter finalizes, which aborts the
process (SIGABRT) after its work is done.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pgsource.config.model import PUBLISHER, Config
from pgsource.errors import SinkError, SinkRefused
from pgsource.pipeline.block import Block, decode_block
from pgsource.pipeline.channel import BlockChannel, put_event
from pgsource.pipeline.events import AckEvent, WorkerState
from pgsource.sink import IggySink
from workers.base import ChildProcess

log = logging.getLogger("pgsource.publisher")

BACKOFF_START = 0.1
BACKOFF_MAX = 2.0  # a recovered Iggy is used again within 2 s (and /readyz is 200 again within ~3 s)
ORPHANED_EXIT_CODE = 1
FLUSH_SECONDS = 5.0
RECONNECT_IDLE = 1.0  # seconds between connection attempts while disconnected with nothing to send
READ_WAIT = 0.5  # seconds the channel reader waits for a block before it reports back (heartbeat)


class PublisherWorker(ChildProcess):
    """The constructor runs in the parent and touches nothing; ``run()`` runs in the child."""

    FAILURES = (SinkRefused,)
    TERM_STOPS = False  # it stops on the supervisor's stop block, after what came before it

    def __init__(self, config: Config, channel: BlockChannel, ack_queues: dict, status_queue, heartbeat=None, shown=None,
                 liveness=None) -> None:
        super().__init__(PUBLISHER, config, status_queue, heartbeat)
        self.channel = channel
        self.ack_queues = ack_queues
        self.shown = shown  # PublisherLiveness: connected, the send in progress (readiness)
        self.acked_shown = liveness or {}  # worker -> Liveness: when Iggy last acknowledged its batch

    def serve(self) -> None:
        self._last_attempt = 0.0
        try:
            code = asyncio.run(self._main())
        except (SinkRefused, SystemExit):
            raise
        except Exception:  # noqa: BLE001 - the supervisor restarts the pipeline; say why first
            log.exception("publisher: unexpected error")
            code = 1
        raise SystemExit(code)

    def notify(self) -> None:
        super().notify()
        if self.shown is not None:
            self.shown.beat()

    def failed(self, exc: BaseException, when: str) -> None:
        log.error("publisher: %s", exc)
        self.report(WorkerState.FATAL, exc)
        raise SystemExit(exc.exit_code) from None

    def leave(self, code: int) -> None:
        """Flush what this process put on its queues (for at most FLUSH_SECONDS: a queue nobody
        reads any more must not hold the exit), then leave without finalizing the interpreter."""
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
        sink = IggySink(self.config.iggy, on_wait=self.notify)
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="channel-reader")
        pending = loop.run_in_executor(reader, self._next_block)
        try:  # connect while the workers start, not when the first batch is already waiting
            await self._connect(sink)
        except SinkRefused:
            raise
        except SinkError as exc:
            log.debug("publisher: %s; connecting again with the first batch", exc)
        while True:
            block = await pending
            self.notify()
            if block is None:
                if self._should_stop():
                    return ORPHANED_EXIT_CODE
                pending = loop.run_in_executor(reader, self._next_block)
                await self._reconnect_when_idle(sink)
                continue
            if block.stop:
                log.info("publisher: stop requested, queue drained")
                sink.disconnect()
                return 0
            pending = loop.run_in_executor(reader, self._next_block)  # read ahead while sending
            await self._deliver(sink, block)

    def _next_block(self) -> Block | None:
        return self.channel.get(READ_WAIT, decode_block)

    async def _sleep(self, seconds: float) -> None:
        """The back-off, beating meanwhile: waiting out an Iggy outage is not being wedged."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.notify()
            await asyncio.sleep(min(left, 1.0))
        self.notify()

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
            log.info("publisher: connected to Iggy at %s", sink.address)
        except SinkError as exc:
            log.debug("publisher: %s", exc)

    def _connected(self, connected: bool, error: str = "") -> None:
        self._last_attempt = time.monotonic()
        if self.shown is not None:
            self.shown.connected(connected, error)

    def _sending(self, worker: str | None) -> None:
        if self.shown is not None:
            self.shown.sending(worker)

    def _acknowledged(self, block: Block, started: float) -> None:
        """Iggy has the whole batch: the metrics, the worker's readiness, and its ack."""
        now = time.time()
        metrics, head = self.metrics, block.head
        self._sending(None)
        metrics.send_seconds.observe(time.monotonic() - started)
        if head.tables is None:
            metrics.messages_sent.labels(head.table).inc(block.count)
            metrics.bytes_sent.labels(head.table).inc(block.frame_bytes)
        else:  # CDC, a topic several tables share
            for table, (messages, frame_bytes) in head.tables.items():
                metrics.messages_sent.labels(table).inc(messages)
                metrics.bytes_sent.labels(table).inc(frame_bytes)
        metrics.batch_messages.labels(head.worker).observe(block.count)
        metrics.batch_bytes.labels(head.worker).observe(block.frame_bytes)
        if block.created:
            metrics.ack_seconds.labels(head.worker).observe(max(0.0, now - block.created))
        if head.commit_time:
            metrics.lag_seconds.labels(head.worker).set(now - head.commit_time)
            metrics.commit_to_ack.labels(head.worker).observe(max(0.0, now - head.commit_time))
        shown = self.acked_shown.get(head.worker)
        if shown is not None:
            shown.acknowledged()
        ack_queue = self.ack_queues.get(head.worker)
        if ack_queue is not None:
            put_event(ack_queue, AckEvent(head.worker, block.seq, block.count, now))

    async def _deliver(self, sink: IggySink, block: Block) -> None:
        """Send ``block`` until Iggy confirmed all of it: retried with capped back-off, for ever."""
        delay = BACKOFF_START
        failures = 0
        confirmed: set[int] = set()  # requests of this batch Iggy already confirmed: not re-sent
        reason = ""
        head = block.head
        self._sending(head.worker)
        while True:
            started = time.monotonic()
            connecting = not sink.connected
            try:
                if failures:
                    self.metrics.send_retries.labels(reason).inc()
                if connecting:
                    await self._connect(sink)
                    if failures:
                        log.info("publisher: connected to Iggy at %s again", sink.address)
                await sink.send_requests(head.stream, head.topic, block.requests, confirmed)
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
                if self._should_stop():
                    raise SystemExit(ORPHANED_EXIT_CODE) from None
                await self._sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        self._acknowledged(block, started)


def _failure_reason(exc: SinkError, connecting: bool) -> str:
    """A small fixed set of reasons (a label value): connect, timeout, send."""
    if connecting:
        return "connect"
    return "timeout" if "timed out" in str(exc) else "send"


def run_publisher(config: Config, channel: BlockChannel, ack_queues: dict, status_queue, heartbeat=None, shown=None,
                  liveness=None) -> None:
    """Process target (module-level so the spawn start method can import it)."""
    PublisherWorker(config, channel, ack_queues, status_queue, heartbeat, shown, liveness).run()
