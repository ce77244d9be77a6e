"""``RestartPolicy``: when the supervisor restarts a dead child, and when it gives up.

- A child that exits because PostgreSQL is unavailable (exit 75) is an outage, never a
  crash: it is restarted after ``restart_backoff * 2**n`` (n: such exits in a row, reset
  when the child reports "ready" or dies of something else), and never counted.
- Any other death is counted: the deaths within the last ``restart_window`` seconds
  decide the back-off (``restart_backoff * 2**(deaths - 1)``), and more than
  ``max_restarts`` of them stop the service with ``CrashLoopError`` (exit 6).
- No back-off is longer than ``MAX_BACKOFF`` seconds.
"""

from __future__ import annotations

from collections import deque

from pgsource.errors import CrashLoopError, SourceUnavailable

MAX_BACKOFF = 30.0


class RestartPolicy:
    def __init__(self, backoff: float, max_restarts: int, window: float) -> None:
        self.backoff = backoff
        self.max_restarts = max_restarts
        self.window = window
        self._deaths: dict[str, deque[float]] = {}  # child -> when it died (counted deaths, within the window)
        self._unavailable: dict[str, int] = {}  # child -> consecutive "PostgreSQL unavailable" exits

    @classmethod
    def from_config(cls, config) -> RestartPolicy:
        supervisor = config.supervisor
        return cls(supervisor.restart_backoff, supervisor.max_restarts, supervisor.restart_window)

    def ready(self, name: str) -> None:
        """``name`` connected: its next outage waits the shortest back-off again."""
        self._unavailable.pop(name, None)

    def died(self, name: str, exit_code: int | None, now: float) -> float:
        """When (monotonic time) to restart ``name``, dead at ``now``; CrashLoopError when it keeps dying."""
        if exit_code == SourceUnavailable.exit_code:
            waits = self._unavailable.get(name, 0)
            self._unavailable[name] = waits + 1
            return now + min(self.backoff * 2**waits, MAX_BACKOFF)
        self._unavailable.pop(name, None)
        history = self._deaths.setdefault(name, deque())
        history.append(now)
        while history and history[0] < now - self.window:
            history.popleft()
        if len(history) > self.max_restarts:
            raise CrashLoopError(
                f"{name} died {len(history)} times within {self.window:.0f}s"
                f" (last exit code {exit_code}); giving up"
            )
        return now + min(self.backoff * (2 ** (len(history) - 1)), MAX_BACKOFF)


def death_cause(exit_code: int | None) -> str:
    """Why a child died, for ``pgsource_supervisor_worker_restarts_total{cause}``."""
    if exit_code == SourceUnavailable.exit_code:
        return "postgresql_unavailable"
    if exit_code is not None and exit_code < 0:
        return "signal"
    return "error"
