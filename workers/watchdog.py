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
from workers.liveness import Liveness

log = logging.getLogger("pgsource.supervisor")

SPAWN_GRACE = 30.0  # seconds a spawned worker may take before its own code first beats


class Watchdog:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._conn = None
        self._reported: dict[str, float] = {}  # worker -> when its long statement was last logged
        self._failures: dict[str, tuple[str, int, int]] = {}  # worker -> (statement, progress, count)

    def should_kill(self, name: str, liveness: Liveness) -> bool:
        """Whether a worker is hung: silent past the timeout, and no backend of it at work."""
        timeout = self.config.supervisor.heartbeat_timeout
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
            log.error("%s has been silent for %.0fs and none of its backends is running a statement; killing it",
                      name, silent)
            return True
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
        if running is None or self._connection() is None:  # died between statements, or an outage
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
        if self._conn is not None:
            try:
                self._conn.close()
            except pg.Error:
                pass
            self._conn = None

    # -- the database ------------------------------------------------------------------------

    def _connection(self):
        if self._conn is None or self._conn.closed:
            try:
                self._conn = pg.connect(self.config.source.connection_string, application_name="pgsource-supervisor",
                                        connect_timeout=5)
                with self._conn.cursor() as cur:
                    cur.execute("SET statement_timeout = '5s'")
            except (PgSourceError, pg.Error) as exc:
                log.debug("watchdog: cannot reach PostgreSQL: %s", exc)
                self._conn = None
        return self._conn

    def _states(self, pids: list[int]):
        conn = self._connection()
        if conn is None:
            return None
        try:
            return backend_states(conn, pids)
        except pg.Error as exc:
            log.debug("watchdog: cannot read pg_stat_activity: %s", exc)
            self.close()
            return None

    def _terminate(self, pids: list[int]) -> list[int]:
        if not pids:
            return []
        conn = self._connection()
        if conn is None:
            return []
        try:
            return terminate_backends(conn, pids)
        except pg.Error as exc:
            log.debug("watchdog: cannot end orphaned backends: %s", exc)
            self.close()
            return []
