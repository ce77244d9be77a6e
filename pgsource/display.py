"""``BulkLoadDisplay``: rows done out of the estimated total, per table and chunk, on a terminal.

Shown by ``pgsource run`` in polling mode when stderr is a terminal (never in a pipe, a
file or a container log; ``PGSOURCE_PROGRESS=0`` turns it off). Rows done are the
committed offsets' row counts, read from ``state.dir`` twice a second (what Iggy
acknowledged, not what was merely read); the total is the planner's estimate
(``pg_class.reltuples``, divided among a table's chunks), else a count bounded to 5 s,
else unknown (rows and rate, no ETA). Drawn with ``rich``. Log lines written by the
worker processes meanwhile may leave a stale copy of the bars above them.
"""

from __future__ import annotations

import time

from pgsource.assignment import WorkUnit
from pgsource.config.model import Config
from pgsource.errors import PgSourceError
from pgsource.pg import connect as pg
from pgsource.pg.positions import bounded, count_all, estimated_rows
from pgsource.state import FileStateStore, PollingOffset

REFRESH = 0.5


def _rows_per_second():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} rows/s" if speed else "", style="progress.data.speed")

    return RowsPerSecond()


class BulkLoadDisplay:
    def __init__(self, config: Config, units: list[WorkUnit], estimates: dict[str, int | None]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.store = FileStateStore(config.state.dir)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            _rows_per_second(), TimeRemainingColumn(),
            console=Console(stderr=True), refresh_per_second=2,
        )
        self.tasks = {}
        for unit in units:
            estimate = estimates.get(unit.table.qualified)
            total = None if estimate is None else max(1, estimate // unit.chunks)
            label = unit.table.qualified if unit.chunks == 1 else f"{unit.table.qualified} chunk {unit.chunk + 1}/{unit.chunks}"
            self.tasks[unit.key] = self.progress.add_task(label, total=total)
        self._refreshed = 0.0
        self.progress.start()

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
            try:
                stored = self.store.load(key, PollingOffset)
            except PgSourceError:
                continue  # the service itself reports a bad state file
            if stored is None:
                continue
            current = self.progress.tasks[task]
            total = current.total
            if total is not None and stored.rows > total:
                total = stored.rows  # the table grew past its estimate
            self.progress.update(task, completed=stored.rows, total=total)

    def close(self) -> None:
        self.refresh()
        self.progress.stop()


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
