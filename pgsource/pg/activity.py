"""What the supervisor asks PostgreSQL about its workers' backends: busy, idle, or gone."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendState:
    pid: int
    state: str  # 'active', 'idle', 'idle in transaction', ...
    seconds: float  # since the statement started
    wait: str  # wait_event_type/wait_event, '' when not waiting
    query: str  # the statement's first 200 characters


def backend_states(conn, pids: list[int]) -> list[BackendState]:
    """The backends among ``pids`` that still exist, with what they run."""
    if not pids:
        return []
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pid, coalesce(state, ''), extract(epoch FROM clock_timestamp() - query_start)::float8,"
            " coalesce(wait_event_type || '/' || wait_event, ''), left(coalesce(query, ''), 200)"
            " FROM pg_stat_activity WHERE pid = ANY(%s)",
            (pids,),
        )
        return [BackendState(int(p), s, float(q or 0.0), w, text) for p, s, q, w, text in cur.fetchall()]


def terminate_backends(conn, pids: list[int]) -> list[int]:
    """End pgsource's backends among ``pids`` (an orphan of a dead worker may run on); the pids ended."""
    if not pids:
        return []
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s) AND application_name LIKE 'pgsource-%%'"
            " AND pg_terminate_backend(pid)",
            (pids,),
        )
        return [row[0] for row in cur.fetchall()]
