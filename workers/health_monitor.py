"""``HealthMonitor``: the supervisor's answers to ``/healthz`` and ``/readyz``, and its scrape-time metrics.

- ``/healthz`` (liveness): the supervisor's loop turns, and each child is running (or being
  restarted by the supervisor, which is its job) and not silent far beyond its heartbeat
  timeout outside a statement. No database question: a liveness probe must not restart
  the pod because PostgreSQL is slow.
- ``/readyz`` (readiness): ``pgsource.ops.health.judge`` once a second on a thread of its own
  (so a probe is answered at once and a recovery shows within a second or two); the
  answer is 503 when the last judgement is more than 5 s old.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pgsource.config.model import PUBLISHER, Config
from pgsource.errors import ProbeError
from pgsource.metrics.scrape import ScrapeCollector
from pgsource.ops.health import PublisherView, Readiness, SourceProbe, Stuck, WorkerView, judge
from workers.liveness import Liveness, PublisherLiveness

log = logging.getLogger("pgsource.supervisor")

EVERY = 1.0  # seconds between readiness judgements
STALE_AFTER = 5.0  # a judgement older than this is itself a problem
LOOP_STALLED_AFTER = 30.0  # the supervisor's loop blocks at most ~10 s (watchdog queries)


@dataclass(frozen=True)
class ChildView:
    """One child as the supervisor knows it."""

    name: str
    alive: bool
    connected: bool  # reported "ready" since its last start
    started_at: float
    liveness: Liveness | None  # what it shows in shared memory (read here, written by the child)


@dataclass(frozen=True)
class SupervisorView:
    """What the supervisor shows its health monitor (``Supervisor.view()``): read-only, taken afresh
    for every judgement, so this thread never reaches into the supervisor's own fields."""

    stopping: bool
    loop_turned_at: float  # the main loop's last turn (monotonic)
    children: dict[str, ChildView]  # the publisher and the workers that have been started
    publisher: PublisherLiveness | None
    queue_depth: int | None  # batch blocks written and not read yet


class HealthMonitor:
    def __init__(self, config: Config, assignment: dict, view: Callable[[], SupervisorView]) -> None:
        self.config = config
        self.assignment = assignment
        self.view = view
        self.probe = SourceProbe(config, assignment)
        self._readiness = Readiness(False, time.monotonic(), (Stuck("supervisor", "starting"),))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_ready: bool | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="readiness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.probe.close()

    # -- the endpoints -------------------------------------------------------------------------

    def readyz(self) -> tuple[bool, dict]:
        readiness = self._readiness
        age = time.monotonic() - readiness.checked_at
        if age > STALE_AFTER:
            return False, {"status": "not ready", "stuck": [{"what": "supervisor", "reason": f"readiness not judged for {age:.0f}s"}]}
        return readiness.ready, readiness.body()

    def healthz(self) -> tuple[bool, dict]:
        view = self.view()
        now = time.monotonic()
        problems = []
        if now - view.loop_turned_at > LOOP_STALLED_AFTER and not view.stopping:
            problems.append({"what": "supervisor", "reason": f"its loop has not turned for {now - view.loop_turned_at:.0f}s"})
        children = {}
        for name, child in view.children.items():
            if child.alive:
                state = "running"
                silence = self._silence(view, child)
                if silence:
                    problems.append({"what": name, "reason": silence})
                    state = "silent"
            else:
                state = "restarting"
            children[name] = state
        if problems:
            return False, {"status": "unhealthy", "problems": problems, "children": children}
        return True, {"status": "alive", "children": children}

    def collectors(self) -> list:
        slots = None
        if self.config.source.cdc:
            def slots():
                stats = self.probe.slot_stats()
                return {worker: stats.get(slot) for worker, slot in self.probe.slots.items()}
        return [ScrapeCollector(slots=slots, queue_depth=self._queue_depth)]

    # -- judging ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._readiness = self.judge()
            except Exception:  # noqa: BLE001 - the thread must go on judging; the answer goes stale otherwise
                log.exception("readiness check failed")
            self._report()
            self._stop.wait(EVERY)

    def judge(self) -> Readiness:
        view = self.view()
        now = time.monotonic()
        if view.stopping:
            return Readiness(False, now, (Stuck("supervisor", "stopping"),))
        try:
            self.probe.refresh()
        except ProbeError as exc:
            return Readiness(False, now, (Stuck("postgresql", f"cannot read the replication slots: {exc}"),))
        source = self.config.source
        stall_after = self.config.readiness.stall_after
        window = stall_after + (0.0 if source.cdc else source.poll_interval)
        return judge(now, _publisher_view(view), _worker_views(view, self.assignment), stall_after=stall_after,
                     window=window, waiting=self.probe.waiting, moved_at=self.probe.moved_at)

    def _report(self) -> None:
        from pgsource.metrics import Metrics

        readiness = self._readiness
        Metrics.get().ready.set(1 if readiness.ready else 0)
        if readiness.ready != self._was_ready and self._was_ready is not None:
            if readiness.ready:
                log.info("ready again")
            else:
                log.warning("not ready: %s", "; ".join(f"{s.what}: {s.reason}" for s in readiness.stuck))
        self._was_ready = readiness.ready

    def _silence(self, view: SupervisorView, child: ChildView) -> str:
        timeout = self.config.supervisor.heartbeat_timeout
        if child.name == PUBLISHER:
            silent = view.publisher.silent_for()
            limit = timeout + self.config.iggy.send_timeout + LOOP_STALLED_AFTER
            return f"silent for {silent:.0f}s" if silent > limit else ""
        liveness = child.liveness
        if liveness is None or liveness.running() is not None:
            return ""  # a long statement is the watchdog's to judge (it asks PostgreSQL)
        silent = liveness.silent_for()
        return f"silent for {silent:.0f}s" if silent > 2 * timeout + LOOP_STALLED_AFTER else ""

    def _queue_depth(self) -> int | None:
        return self.view().queue_depth


def _publisher_view(view: SupervisorView) -> PublisherView:
    child = view.children.get(PUBLISHER)
    shown = view.publisher
    return PublisherView(child is not None and child.alive, shown.is_connected, shown.error, shown.sending_since,
                         shown.sending_worker)


def _worker_views(view: SupervisorView, assignment: dict) -> list[WorkerView]:
    views = []
    for name in assignment:
        child = view.children.get(name)
        liveness = child.liveness if child is not None else None
        views.append(WorkerView(
            name, child is not None and child.alive, child is not None and child.connected,
            child.started_at if child is not None else 0.0,
            liveness.acked_at if liveness else 0.0, liveness.caught_up_at if liveness else 0.0,
            liveness.waiting_since if liveness else 0.0,
        ))
    return views
