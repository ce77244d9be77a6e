"""``BulkLoadDisplay``: rows done out of the estimated total, per table and chunk, on a terminal.

Shown by ``pgsource run`` in polling mode when stderr is a terminal (never in a pipe, a
file or a container log; ``PGSOURCE_PROGRESS=0`` turns it off). Rows done are the
committed offsets' row counts, read from ``state.dir`` twice a second (what Iggy
acknowledged, not what was merely read); the total is the planner's estimate
(``pg_class.reltuples``, divided among a table's chunks), else a count bounded to 5 s,
else unknown (rows and rate, no ETA). Drawn with ``rich``.

While the bars are live, every line written to the supervisor's stderr goes through the same
console (``LinesAbove``): its own log records and those of the workers and the publisher,
which inherit that stderr. So logs scroll above the live bars instead of garbling them.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from pgsource.config.model import Config
from pgsource.errors import PgSourceError
from pgsource.pg import connect as pg
from pgsource.pg.positions import bounded, count_all, estimated_rows
from pgsource.plan.assignment import WorkUnit
from pgsource.state import FileStateStore, PollingOffset

REFRESH = 0.5


class BulkLoadDisplay:
    def __init__(self, config: Config, units: list[WorkUnit], estimates: dict[str, int | None]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

        self.store = FileStateStore(config.state.dir)
        self.lines = LinesAbove()
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]}", style="progress.data.speed"),
            TextColumn("{task.fields[eta]}", style="progress.remaining"),
            console=Console(file=self.lines.terminal), refresh_per_second=2, redirect_stderr=False,
        )
        self.tasks = {}
        self._since: dict[str, tuple[float, int]] = {}  # key -> (when, rows) at the start: the rate's base
        for unit in units:
            estimate = estimates.get(unit.table.qualified)
            total = None if estimate is None else max(1, estimate // unit.chunks)
            label = unit.table.qualified if unit.chunks == 1 else f"{unit.table.qualified} chunk {unit.chunk + 1}/{unit.chunks}"
            self.tasks[unit.key] = self.progress.add_task(label, total=total, rate="", eta="")
            self._since[unit.key] = (time.monotonic(), self._rows(unit.key) or 0)
        self._refreshed = 0.0
        self.progress.start()
        self.lines.start(self.progress.console)

    @classmethod
    def start(cls, config: Config, assignment: dict[str, list[WorkUnit]]) -> BulkLoadDisplay | None:
        units = [unit for units in assignment.values() for unit in units]
        if not units:
            return None
        return cls(config, units, _estimates(config, units))

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._refreshed < REFRESH:
            return
        self._refreshed = now
        for key, task in self.tasks.items():
            rows = self._rows(key)
            if rows is None:
                continue
            total = self.progress.tasks[task].total
            if total is not None and rows > total:
                total = rows  # the table grew past its estimate
            began, base = self._since[key]
            rate = (rows - base) / max(now - began, 1e-3)
            eta = ""
            if total is not None and rate > 0:
                left = max(0, total - rows) / rate
                eta = "done" if rows >= total else f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
            self.progress.update(task, completed=rows, total=total, rate=f"{rate:,.0f} rows/s" if rows > base else "", eta=eta)

    def _rows(self, key: str) -> int | None:
        try:
            stored = self.store.load(key, PollingOffset)
        except PgSourceError:
            return None  # the service itself reports a bad state file
        return None if stored is None else stored.rows

    def close(self) -> None:
        self.refresh()
        self.lines.stop()  # the last lines above the bars, then stderr is the terminal again
        self.progress.stop()


class LinesAbove:
    """Lines written to this process's stderr (fd 2), printed through a rich console.

    fd 2 becomes a pipe, read by a thread that prints each line with ``console.print``: while a
    live display runs, rich prints it above the display. Processes started meanwhile inherit the
    pipe as their stderr, so their lines take the same way. ``stop`` puts the terminal back.
    """

    def __init__(self) -> None:
        sys.stderr.flush()
        self._terminal_fd = os.dup(2)
        self.terminal = os.fdopen(os.dup(self._terminal_fd), "w", encoding="utf-8", errors="replace", buffering=1)
        self._read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._console = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="pgsource-lines-above", daemon=True)

    def start(self, console) -> None:
        self._console = console
        self._thread.start()

    def stop(self, drain: float = 2.0) -> None:
        """Give fd 2 back to the terminal; print what is still in the pipe (bounded: a process that
        outlives us may hold the pipe open; the thread then forwards its lines to the terminal)."""
        sys.stderr.flush()
        os.dup2(self._terminal_fd, 2)
        self._thread.join(drain)
        with self._lock:
            self._console = None

    def _pump(self) -> None:
        with os.fdopen(self._read, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._lock:
                    if self._console is not None:
                        self._console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
                    else:
                        self.terminal.write(line + "\n")


def _estimates(config: Config, units: list[WorkUnit]) -> dict[str, int | None]:
    """Table → estimated rows: reltuples, else count(*) bounded to 5 s, else None."""
    out: dict[str, int | None] = {}
    try:
        conn = pg.connect(config.source.connection_string, application_name="pgsource-progress", connect_timeout=5)
    except PgSourceError:
        return out
    try:
        bounded(conn, 5.0)
        for unit in units:
            table = unit.table
            if table.qualified in out:
                continue
            try:
                estimate = estimated_rows(conn, table.schema_, table.name)
                out[table.qualified] = estimate if estimate else count_all(conn, table.schema_, table.name)
            except pg.Error:
                out[table.qualified] = None
    finally:
        conn.close()
    return out
