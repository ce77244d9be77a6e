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

from pgsource.errors import ProbeError
from pgsource.metrics.scrape import ScrapeCollector
from pgsource.ops.health import PublisherView, Readiness, SourceProbe, Stuck, WorkerView, judge

log = logging.getLogger("pgsource.supervisor")

EVERY = 1.0  # seconds between readiness judgements
STALE_AFTER = 5.0  # a judgement older than this is itself a problem
LOOP_STALLED_AFTER = 30.0  # the supervisor's loop blocks at most ~10 s (watchdog queries)


class HealthMonitor:
    def __init__(self, supervisor) -> None:
        self.supervisor = supervisor
        self.config = supervisor.config
        self.probe = SourceProbe(self.config, supervisor.assignment)
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
        sup = self.supervisor
        now = time.monotonic()
        problems = []
        tick = getattr(sup, "_tick", 0.0)
        if now - tick > LOOP_STALLED_AFTER and not sup._stopping:
            problems.append({"what": "supervisor", "reason": f"its loop has not turned for {now - tick:.0f}s"})
        children = {}
        for name, process in list(sup._processes.items()):
            if process.is_alive():
                state = "running"
                silence = self._silence(name, now)
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
        sup = self.supervisor
        now = time.monotonic()
        if sup._stopping:
            return Readiness(False, now, (Stuck("supervisor", "stopping"),))
        try:
            self.probe.refresh()
        except ProbeError as exc:
            return Readiness(False, now, (Stuck("postgresql", f"cannot read the replication slots: {exc}"),))
        source = self.config.source
        stall_after = self.config.readiness.stall_after
        window = stall_after + (0.0 if source.cdc else source.poll_interval)
        return judge(now, self._publisher_view(), self._worker_views(), stall_after=stall_after, window=window,
                     waiting=self.probe.waiting, moved_at=self.probe.moved_at)

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

    def _publisher_view(self) -> PublisherView:
        sup = self.supervisor
        process = sup._processes.get("publisher")
        shown = sup.publisher_liveness
        return PublisherView(process is not None and process.is_alive(), shown.is_connected, shown.error,
                             shown.sending_since, shown.sending_worker)

    def _worker_views(self) -> list[WorkerView]:
        sup = self.supervisor
        views = []
        for name in sup.assignment:
            process = sup._processes.get(name)
            liveness = sup.liveness[name]
            views.append(WorkerView(
                name, process is not None and process.is_alive(), name in sup._connected,
                sup._started_at.get(name, 0.0), liveness.acked_at, liveness.caught_up_at, liveness.waiting_since,
            ))
        return views

    def _silence(self, name: str, now: float) -> str:
        sup = self.supervisor
        timeout = self.config.supervisor.heartbeat_timeout
        if name == "publisher":
            silent = sup.publisher_liveness.silent_for()
            limit = timeout + self.config.iggy.send_timeout + LOOP_STALLED_AFTER
            return f"silent for {silent:.0f}s" if silent > limit else ""
        liveness = sup.liveness.get(name)
        if liveness is None or liveness.running() is not None:
            return ""  # a long statement is the watchdog's to judge (it asks PostgreSQL)
        silent = liveness.silent_for()
        return f"silent for {silent:.0f}s" if silent > 2 * timeout + LOOP_STALLED_AFTER else ""

    def _queue_depth(self) -> int | None:
        try:
            return self.supervisor.batch_queue.qsize()
        except (NotImplementedError, OSError, AttributeError):
            return None
