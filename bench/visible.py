"""When a change becomes readable by a consumer: a tail reader polling a topic as fast as Iggy answers.

The latency figure (``bench/latency.py``) compares a change's commit time with the message's
server timestamp. On a replicated Iggy that timestamp is taken by the primary when it prepares
the batch (``VsrConsensus::next_monotonic_timestamp``, core/consensus/src/impls.rs), before a
quorum holds it: it leaves out the replication an acknowledgement waits for. This reader measures
what a consumer sees instead: the local time a message first comes back from a poll, for the
single server and the cluster alike (``--latency-visible``). It costs some CPU of its own
(a poll every ``PAUSE`` seconds while nothing is new), the same in both runs.
"""

from __future__ import annotations

import asyncio
import threading
import time

PAUSE = 0.002  # between empty polls
PAGE = 1000


class Tail(threading.Thread):
    """Reads partition 0 of ``stream``/``topic`` from offset 0 until stopped; (arrival, payload) per message."""

    def __init__(self, target, stream: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.target, self.stream, self.topic = target, stream, topic
        self.arrivals: list[tuple[float, bytes]] = []
        self.halt = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._tail())
        except Exception as exc:  # reported with the figures, not raised in a thread nobody joins on
            self.error = f"{exc.__class__.__name__}: {exc}"

    async def _tail(self) -> None:
        import apache_iggy as iggy

        from bench.iggy_target import _connect_client

        client = await _connect_client(self.target.address, self.target.username, self.target.password)
        consumer = iggy.Consumer.Single("bench-tail")
        offset = 0
        while not self.halt.is_set():
            try:
                polled = await client.poll_messages(
                    self.stream, self.topic, consumer=consumer, polling_strategy=iggy.PollingStrategy.Offset(offset),
                    count=PAGE, auto_commit=False, partition_id=0,
                )
            except RuntimeError:  # the stream or topic is not there yet
                polled = []
            now = time.time()
            if not polled:
                await asyncio.sleep(PAUSE)
                continue
            self.arrivals.extend((now, message.payload()) for message in polled)
            offset = polled[-1].offset() + 1

    def stop(self) -> list[tuple[float, bytes]]:
        self.halt.set()
        self.join(30)
        return self.arrivals
