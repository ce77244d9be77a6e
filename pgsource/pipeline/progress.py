"""``ProgressTracker``: which position may be committed, given what was sent and what Iggy acknowledged.

One small, pure object shared by every mode (polling offsets, CDC LSNs, the initial
snapshot), so that "nothing moves past an unacknowledged message" is written once:

- ``sent(key, position)`` records a batch (or any other piece of work that must finish
  before its position counts), in the order the work was produced; ``position`` is where
  the source stands once this work is done, or None when it ends no position of its own
  (half a CDC transaction, a re-read of late rows).
- ``acked(key)`` records that it finished (Iggy acknowledged it; its deletes ran...).
  Acknowledgements may come in any order.
- ``mark(position)`` records a position that needs no work of its own (an idle stream's
  WAL end, an empty poll): it becomes committable once everything before it is.
- ``committable()`` is the newest position whose entry, and every entry before it, is
  acknowledged. It never goes backward and never passes an unacknowledged entry.

Positions are opaque to the tracker; an ``order`` key, when given, makes it refuse a
position that would move backward (a bug upstream, caught where it would do harm).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

P = TypeVar("P")

_NO_KEY = object()


@dataclass
class _Entry(Generic[P]):
    key: Any
    position: P | None
    acked: bool
    since: float


@dataclass(frozen=True)
class Unacknowledged:
    """The oldest entry still waiting: what holds progress, and since when (monotonic seconds)."""

    key: Any
    position: Any
    since: float


class ProgressTracker(Generic[P]):
    """Entries in send order; the acknowledged prefix turns into the committable position."""

    def __init__(
        self,
        committed: P | None = None,
        *,
        order: Callable[[P], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: deque[_Entry[P]] = deque()
        self._by_key: dict[Hashable, _Entry[P]] = {}
        self._committable = committed
        self._last = committed  # the newest position recorded, to refuse one that goes backward
        self._order = order
        self._clock = clock

    # -- recording -------------------------------------------------------------------------

    def sent(self, key: Hashable, position: P | None = None) -> None:
        """Work ``key`` was produced; once it and everything before it finished, ``position`` counts."""
        if key in self._by_key:
            raise ValueError(f"progress: {key!r} was already sent and is not acknowledged yet")
        entry = _Entry(key, self._checked(position), False, self._clock())
        self._entries.append(entry)
        self._by_key[key] = entry

    def mark(self, position: P) -> None:
        """A position that needs no work of its own; it counts once everything before it finished."""
        self._entries.append(_Entry(_NO_KEY, self._checked(position), True, self._clock()))
        self._advance()

    def acked(self, key: Hashable) -> bool:
        """Work ``key`` finished; False when the key is unknown (an ack of an earlier generation)."""
        entry = self._by_key.pop(key, None)
        if entry is None:
            return False
        entry.acked = True
        self._advance()
        return True

    # -- reading ---------------------------------------------------------------------------

    def committable(self) -> P | None:
        """The newest position with every entry up to it acknowledged (or the starting one)."""
        return self._committable

    @property
    def in_flight(self) -> int:
        """Entries sent and not acknowledged yet."""
        return len(self._by_key)

    @property
    def idle(self) -> bool:
        """Nothing waits: every entry was acknowledged and every position counted."""
        return not self._entries

    def oldest_unacknowledged(self) -> Unacknowledged | None:
        """What holds the committable position back, and since when."""
        for entry in self._entries:
            if not entry.acked:
                return Unacknowledged(entry.key, entry.position, entry.since)
        return None

    def pending_keys(self) -> list:
        """The keys not acknowledged yet, oldest first."""
        return [entry.key for entry in self._entries if not entry.acked]

    # -- internals -------------------------------------------------------------------------

    def _checked(self, position: P | None) -> P | None:
        if position is None:
            return None
        if self._order is not None and self._last is not None and self._order(position) < self._order(self._last):
            raise ValueError(f"progress: position {position!r} is behind {self._last!r}")
        self._last = position
        return position

    def _advance(self) -> None:
        entries = self._entries
        while entries and entries[0].acked:
            entry = entries.popleft()
            if entry.position is not None:
                self._committable = entry.position
