"""``PublisherWorker``: the one process that holds an Iggy client.

It takes batches off the shared queue in order, sends each with the real SDK, and only
when Iggy confirmed the whole batch puts an ``AckEvent`` on the ack queue of the worker
that made it. A failed send is retried with capped exponential back-off, forever (an
Iggy outage must neither lose data nor skip it): the batch that failed is sent again
before anything after it, so per-worker order and acks stay in sequence.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from pgsource.config.model import Config
from pgsource.errors import SinkError
from pgsource.events import AckEvent, BatchEvent, StopEvent, WorkerStatus
from pgsource.sink import IggySink
from workers.channel import Empty, ParentWatch, get_event, keep_freed_memory, put_event
from workers.logs import setup_logging

log = logging.getLogger("pgsource.publisher")

BACKOFF_START = 0.1
BACKOFF_MAX = 5.0


class PublisherWorker:
    """The constructor runs in the parent and touches nothing; ``run()`` runs in the child."""

    def __init__(self, config: Config, batch_queue, ack_queues: dict, status_queue) -> None:
        self.config = config
        self.batch_queue = batch_queue
        self.ack_queues = ack_queues
        self.status_queue = status_queue

    def run(self) -> None:
        setup_logging(config=self.config)
        keep_freed_memory()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # it stops when the StopEvent arrives
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from pgsource.metrics import Metrics

        self.metrics = Metrics.get()
        self.watch = ParentWatch()
        put_event(self.status_queue, WorkerStatus("publisher", "ready"))
        asyncio.run(self._main())

    async def _main(self) -> None:
        sink = IggySink(self.config.iggy)
        loop = asyncio.get_running_loop()
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-reader")
        pending = loop.run_in_executor(reader, self._next_event)
        try:  # connect while the workers start, not when the first batch is already waiting
            await sink.connect()
        except SinkError as exc:
            log.debug("publisher: %s; connecting again with the first batch", exc)
        while True:
            event = await pending
            if event is None:
                if self.watch.orphaned():
                    log.error("publisher: supervisor is gone, exiting")
                    return
                pending = loop.run_in_executor(reader, self._next_event)
                continue
            if isinstance(event, StopEvent):
                log.info("publisher: stop requested, queue drained")
                return
            pending = loop.run_in_executor(reader, self._next_event)  # read ahead while sending
            await self._deliver(sink, event)

    def _next_event(self):
        try:
            return get_event(self.batch_queue, timeout=0.5)
        except Empty:
            return None

    async def _deliver(self, sink: IggySink, event: BatchEvent) -> None:
        delay = BACKOFF_START
        failures = 0
        while True:
            started = time.monotonic()
            try:
                if not sink.connected:
                    await sink.connect()
                    if failures:
                        log.info("publisher: connected to Iggy at %s again", self.config.iggy.address)
                await sink.send_frames(event.stream, event.topic, event.parts)
                break
            except SinkError as exc:
                failures += 1
                self.metrics.send_errors.inc()
                level = logging.WARNING if failures == 1 or failures % 10 == 0 else logging.DEBUG
                log.log(level, "publisher: %s; retrying in %.1fs (attempt %d)", exc, delay, failures)
                sink.disconnect()
                if self.watch.orphaned():
                    raise SystemExit(1) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        now = time.time()
        self.metrics.send_seconds.observe(time.monotonic() - started)
        self.metrics.messages_sent.labels(event.table).inc(len(event))
        if event.commit_time:
            self.metrics.lag_seconds.labels(event.worker).set(now - event.commit_time)
        ack_queue = self.ack_queues.get(event.worker)
        if ack_queue is not None:
            put_event(ack_queue, AckEvent(event.worker, event.seq, len(event), now))


def run_publisher(config: Config, batch_queue, ack_queues: dict, status_queue) -> None:
    """Process target (module-level so the spawn start method can import it)."""
    PublisherWorker(config, batch_queue, ack_queues, status_queue).run()
