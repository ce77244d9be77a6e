"""``Watchdog``: the supervisor's judgement of a silent or dead worker.

A worker that stops beating is either hung or blocked in one long statement (a poll of
an unindexed table, a peek that decodes a huge transaction, a long slot advance). Killing
the second kind only runs the same statement again, forever, with kills further apart
than the crash-loop window. So before killing, the watchdog asks PostgreSQL: if one of
the worker's backends is ``active`` in ``pg_stat_activity``, the worker is working, and
is left alone (logged once per ``heartbeat_timeout``). Only a worker whose backends are
idle, or gone, is killed. When the database cannot be asked, a worker gets twice the
timeout before it is killed.

After a worker died, its backends are ended (an orphan could otherwise run its statement
on), and a worker that died in the same statement ``max_retries`` + 1 times in a row —
no statement completed in between, and the database answering each time (an outage
is waited out, never counted) — stops the service with ``StatementLoopError`` (exit 8)
naming the statement, instead of restarting it forever.
"""

from __future__ import annotations

import logging
import time

from pgsource.config.model import Config
from pgsource.errors import PgSourceError, StatementLoopError
from pgsource.pg import connect as pg
from pgsource.pg.activity import backend_states, terminate_backends
from pgsource.pg.positions import bounded
from workers.liveness import Liveness

log = logging.getLogger("pgsource.supervisor")

SPAWN_GRACE = 30.0  # seconds a spawned worker may take before its own code first beats
IDLE_CONFIRM = 1.0  # seconds a silent worker's backends must stay idle before it is killed


class Watchdog:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._reported: dict[str, float] = {}  # worker -> when its long statement was last logged
        self._idle_since: dict[str, float] = {}  # worker -> when it was first found silent with idle backends
        self._failures: dict[str, tuple[str, int, int]] = {}  # worker -> (statement, progress, count)

    def should_kill(self, name: str, liveness: Liveness) -> bool:
        """Whether a worker is hung: silent past the timeout, and no backend of it at work."""
        timeout = self.config.supervisor.heartbeat_timeout
        if liveness.silent_for() <= timeout:
            self._idle_since.pop(name, None)
        if not liveness.started:  # still importing (spawn): slow on a loaded host, not a hang
            timeout = max(timeout, SPAWN_GRACE)
        silent = liveness.silent_for()
        if silent <= timeout:
            return False
        states = self._states(liveness.pids)
        if states is None:
            if silent <= 2 * timeout:
                return False
            log.error("%s has been silent for %.0fs and PostgreSQL cannot be asked why; killing it", name, silent)
            return True
        busy = [state for state in states if state.state == "active"]
        if not busy:
            # A statement that just ended leaves its backend idle a moment before the worker beats:
            # look again a second later before calling it a hang.
            now = time.monotonic()
            first = self._idle_since.setdefault(name, now)
            if now - first < IDLE_CONFIRM or liveness.silent_for() <= timeout:
                return False
            self._idle_since.pop(name, None)
            log.error("%s has been silent for %.0fs and none of its backends is running a statement; killing it",
                      name, liveness.silent_for())
            return True
        self._idle_since.pop(name, None)
        now = time.monotonic()
        if now - self._reported.get(name, 0.0) >= timeout:
            self._reported[name] = now
            running = liveness.running()
            what = f"{running[0]} for {running[1]:.0f}s" if running else "a statement"
            state = busy[0]
            log.warning(
                "%s is running %s (backend %d active for %.0fs%s: %s); a long statement, not a hang: not killing it",
                name, what, state.pid, state.seconds, f", waiting on {state.wait}" if state.wait else "", state.query,
            )
        return False

    def after_death(self, name: str, liveness: Liveness, exit_code: int | None) -> None:
        """End the dead worker's backends; stop the service if it keeps dying in one statement."""
        ended = self._terminate(liveness.pids)
        if ended:
            log.warning("%s: ended its orphaned backend(s) %s", name, ", ".join(map(str, ended)))
        running = liveness.running()
        if running is None or not self._reachable():  # died between statements, or an outage
            self._failures.pop(name, None)
            return
        statement = running[0]
        previous = self._failures.get(name)
        count = previous[2] + 1 if previous and previous[0] == statement and previous[1] == liveness.progress else 1
        self._failures[name] = (statement, liveness.progress, count)
        allowed = self.config.source.max_retries
        if count > allowed:
            raise StatementLoopError(
                f"{name} died {count} times in a row while {statement} (last exit code {exit_code}),"
                f" with no progress in between; giving up (source.max_retries is {allowed})"
            )

    def close(self) -> None:
        """Nothing is held between questions; kept for the supervisor's shutdown symmetry."""

    # -- the database ------------------------------------------------------------------------

    def _ask(self, question, default):
        """One short-lived connection per question: the supervisor holds none between them (it would
        count against max_connections, and every child it spawns would hold it until its exec)."""
        try:
            conn = pg.connect(self.config.source.connection_string, application_name="pgsource-supervisor",
                              connect_timeout=5)
        except (PgSourceError, pg.Error) as exc:
            log.debug("watchdog: cannot reach PostgreSQL: %s", exc)
            return default
        try:
            bounded(conn, 5.0)
            return question(conn)
        except pg.Error as exc:
            log.debug("watchdog: PostgreSQL did not answer: %s", exc)
            return default
        finally:
            conn.close()

    def _states(self, pids: list[int]):
        return self._ask(lambda conn: backend_states(conn, pids), None)

    def _reachable(self) -> bool:
        return self._ask(lambda conn: True, False)

    def _terminate(self, pids: list[int]) -> list[int]:
        return self._ask(lambda conn: terminate_backends(conn, pids), []) if pids else []
