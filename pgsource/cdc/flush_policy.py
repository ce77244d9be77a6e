"""When a partial batch of the replication stream goes out, once the socket is drained.

The streaming transport drains the socket faster than the walsender fills it, so "send what we
have whenever the socket is empty" made batches of a few dozen changes, and every batch costs the
publisher and Iggy a fixed ~0.2 ms. So a partial batch lingers up to ``LINGER`` for more, but only
while that pays: below ``BULK_RATE`` messages/s it goes at once when no batch is in flight
(Nagle's rule; 20,000 changes/s in 10-change transactions: p99 12 -> 7 ms), and a busy stream
gathers while a batch is in flight. Above ``BULK_RATE`` (a bulk drain), batches of a few dozen
changes would cost the publisher more than the walsender leaves it (2 cores: 1.6 -> 2.8 µs per
change), so they always linger.
"""

from __future__ import annotations

from dataclasses import dataclass

LINGER = 0.005  # seconds a partial batch may wait for more
BULK_RATE = 60_000  # messages/s from which a drained stream's partial batches always linger
RATE_WINDOW = 0.05  # seconds over which the stream's rate is taken


@dataclass
class FlushPolicy:
    """The linger clock of the partial batch, and the stream's rate over the last window."""

    since: float  # monotonic start of the rate window
    linger: float = LINGER
    bulk_rate: float = BULK_RATE
    window: float = RATE_WINDOW
    started: float = 0.0  # when the partial batch got its first change
    messages: int = 0  # read in the current window
    bulk: bool = False  # the last window's rate was a bulk one

    def due(self, now: float, count: int, in_flight: int) -> tuple[bool, float]:
        """(send the partial batch of ``count`` changes now, seconds it may still linger), asked when
        the socket is drained; ``in_flight``: batches sent and not acknowledged yet."""
        if now - self.since >= self.window:
            self.bulk = self.messages / (now - self.since) >= self.bulk_rate
            self.since, self.messages = now, 0
        left = self.started + self.linger - now if count else 0.0
        return left <= 0 or not (self.bulk or in_flight), left
