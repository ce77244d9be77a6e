"""``judge``: ready, or what is stuck — from what the processes show and what PostgreSQL holds.

Ready (``/readyz`` 200) means: the publisher is connected to Iggy, every worker is
connected to PostgreSQL, no batch has waited for Iggy's acknowledgement longer than
``stall_after``, and every worker either made progress within its window or has nothing
to do. Progress is an acknowledgement from Iggy, a read that found nothing more to read,
or (CDC) the slot's confirmed position moving. "Nothing to do" is asked of PostgreSQL
only when a worker's progress is older than its window: no row after the committed
offset (polling), no WAL after the slot's confirmed position (CDC).

A pure function of its inputs (monotonic times), so it is tested without processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pgsource.errors import ProbeError


@dataclass(frozen=True)
class WorkerView:
    name: str
    alive: bool
    connected: bool  # booted (its connection to PostgreSQL is open) since its last start
    started_at: float
    acked_at: float = 0.0
    caught_up_at: float = 0.0
    waiting_since: float = 0.0


@dataclass(frozen=True)
class PublisherView:
    alive: bool
    connected: bool
    error: str = ""
    sending_since: float = 0.0
    sending_worker: str = ""


@dataclass(frozen=True)
class Stuck:
    what: str  # a worker's name, "iggy", "publisher", "postgresql", "supervisor"
    reason: str

    def to_json(self) -> dict:
        return {"what": self.what, "reason": self.reason}


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checked_at: float
    stuck: tuple[Stuck, ...] = field(default_factory=tuple)

    def body(self) -> dict:
        if self.ready:
            return {"status": "ready"}
        return {"status": "not ready", "stuck": [s.to_json() for s in self.stuck]}


def judge(
    now: float,
    publisher: PublisherView,
    workers: list[WorkerView],
    *,
    stall_after: float,
    window: float,
    waiting: Callable[[str], str | None],
    moved_at: Callable[[str], float] = lambda name: 0.0,
) -> Readiness:
    """Ready, or the list of what is stuck. ``waiting(worker)`` describes work waiting in
    PostgreSQL for that worker (None: nothing waits) and may raise ``ProbeError``;
    ``moved_at(worker)`` is when its stored position last moved (CDC: the slot)."""
    stuck: list[Stuck] = []
    unacked_named: set[str] = set()
    if not publisher.alive:
        stuck.append(Stuck("publisher", "not running (being restarted)"))
    elif not publisher.connected:
        stuck.append(Stuck("iggy", "not connected" + (f": {publisher.error}" if publisher.error else "")))
    if publisher.sending_since and now - publisher.sending_since > stall_after:
        who = publisher.sending_worker or "a worker"
        unacked_named.add(who)
        stuck.append(Stuck("iggy", f"a batch of {who} unacknowledged for {now - publisher.sending_since:.1f}s"))
    for worker in workers:
        if not worker.alive:
            stuck.append(Stuck(worker.name, "not running (being restarted)"))
            continue
        if not worker.connected:
            stuck.append(Stuck(worker.name, "not connected to PostgreSQL yet"))
            continue
        if worker.waiting_since and now - worker.waiting_since > stall_after and worker.name not in unacked_named:
            stuck.append(Stuck(worker.name, f"a batch unacknowledged for {now - worker.waiting_since:.1f}s"))
            continue
        progress = max(worker.started_at, worker.acked_at, worker.caught_up_at, moved_at(worker.name))
        if now - progress <= window:
            continue
        try:
            work = waiting(worker.name)
        except ProbeError as exc:
            stuck.append(Stuck("postgresql", f"cannot check {worker.name}'s work: {exc}"))
            continue
        if work:
            stuck.append(Stuck(worker.name, f"{work}; no progress for {now - progress:.1f}s"))
    return Readiness(not stuck, now, tuple(stuck))
