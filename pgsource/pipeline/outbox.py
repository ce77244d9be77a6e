"""``Outbox``: a worker's batches on their way to Iggy, and the acknowledgements that come back.

Both modes send through it. It numbers each batch as it sends it (a sequence that a
restarted worker never repeats: ``generation * GENERATION_STRIDE`` onwards), writes the
block to the publisher's channel, takes the publisher's ``AckEvent``s and tells the
worker's committer (``pgsource/pipeline/committer.py``), which alone decides what becomes
durable. It shows what is in flight: the batches-in-flight gauge, and since when the
oldest unacknowledged batch has been the oldest (readiness: "a batch unacknowledged for
Ns"). On stop it waits, bounded, for the acks of what it already sent.

The publisher acknowledges a worker's batches in the order they were sent, so the first
batch in flight is always the oldest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pgsource.pipeline.block import set_block_seq
from pgsource.pipeline.channel import BlockChannel, Empty, get_event, get_event_nowait
from pgsource.pipeline.committer import Committer
from pgsource.pipeline.events import AckEvent

GENERATION_STRIDE = 1 << 40  # seq numbers of a restarted worker never collide with old acks
ACK_WAIT = 0.2  # seconds one wait for acks lasts at most before the caller's ``waiting`` is asked again


class Waiting(Protocol):
    """Where a worker shows readiness since when its oldest batch waits (``workers/liveness.py``)."""

    def waiting(self, since: float | None) -> None: ...


@dataclass(frozen=True)
class OutboxSettings:
    worker: str
    generation: int  # the worker's start count: where its sequence numbers begin
    stop_timeout: float  # seconds a stopping worker waits for the acks of what it sent


class Outbox:
    """One per worker process; see the module docstring."""

    def __init__(self, settings: OutboxSettings, channel: BlockChannel, acks, committer: Committer, *,
                 waiting: Callable[[], bool], shown: Waiting | None = None, metrics=None) -> None:
        self.settings = settings
        self.channel = channel
        self.acks = acks  # the worker's ack queue (AckEvents from the publisher)
        self.committer = committer
        self.waiting = waiting  # while the channel is full: keep alive; True = stop trying to send
        self.shown = shown
        self._seq = settings.generation * GENERATION_STRIDE
        self._sent: dict[int, None] = {}  # seqs in flight, oldest first
        self._oldest: int | None = None
        self._oldest_since = 0.0
        self._gauge = metrics.in_flight.labels(settings.worker) if metrics is not None else None
        self._queued = metrics.batches_queued.labels(settings.worker) if metrics is not None else None

    @property
    def in_flight(self) -> int:
        """Batches sent and not acknowledged yet."""
        return len(self._sent)

    def oldest_since(self) -> float | None:
        """Since when (monotonic) the oldest unacknowledged batch has been the oldest; None: none waits."""
        return self._oldest_since if self._sent else None

    def send(self, block: bytearray, waiting: Callable[[], bool] | None = None) -> int | None:
        """Number ``block`` and send it; its seq, or None when ``waiting()`` said stop while the
        channel was full (nothing was sent). ``waiting`` replaces the outbox's own for this send."""
        seq = self._seq + 1
        set_block_seq(block, seq)
        if not self.channel.put(block, waiting or self.waiting):
            return None
        self._seq = seq
        self._sent[seq] = None
        if self._queued is not None:
            self._queued.inc()
        self._changed()
        return seq

    def take_acks(self, timeout: float = 0.0) -> int:
        """Hand every ack that arrived to the committer; wait up to ``timeout`` for the first one.
        Returns how many of this worker's batches were acknowledged."""
        taken = 0
        wait = timeout
        while self._sent:
            try:
                ack: AckEvent = get_event(self.acks, timeout=wait) if wait > 0 else get_event_nowait(self.acks)
            except Empty:
                break
            wait = 0
            if ack.seq not in self._sent:
                continue  # an ack of an earlier generation of this worker
            del self._sent[ack.seq]
            taken += 1
            self.committer.acked(ack.seq)  # may send again (a polling re-send): ``_sent`` grows meanwhile
        if taken:
            self._changed()
        return taken

    def wait_for_acks(self, deadline: float | None = None, waiting: Callable[[], bool] | None = None) -> bool:
        """Until every batch sent is acknowledged (True), or ``deadline`` (monotonic) passed (False).

        Without a deadline it waits until ``waiting()`` asks to stop, then ``stop_timeout`` more.
        ``waiting`` (the outbox's own unless given) is called between waits either way: it keeps
        the worker alive.
        """
        waiting = waiting or self.waiting
        while self._sent:
            stop = waiting()
            now = time.monotonic()
            if deadline is None and stop:
                deadline = now + self.settings.stop_timeout
            if deadline is not None and now >= deadline:
                return False
            left = ACK_WAIT if deadline is None else min(ACK_WAIT, deadline - now)
            self.take_acks(timeout=max(left, 0.0))
        return True

    def _changed(self) -> None:
        """The gauge, and since when the oldest batch waits (for readiness)."""
        if self._gauge is not None:
            self._gauge.set(len(self._sent))
        oldest = next(iter(self._sent), None)
        if oldest != self._oldest:
            self._oldest, self._oldest_since = oldest, time.monotonic()
        if self.shown is not None:
            self.shown.waiting(self._oldest_since if oldest is not None else None)
