"""Which worker process reads which tables: a number of workers (balanced by size) or a mapping.

The assignment is deterministic (same tables and sizes, same result) so that a restart
hands every table, and every chunk of a big table, back to the same worker name.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgsource.config.model import Config, TableConfig


@dataclass(frozen=True)
class WorkUnit:
    """One table, or one chunk of a table, read by one worker; ``key`` names its stored offset."""

    table: TableConfig
    chunk: int = 0
    chunks: int = 1

    @property
    def key(self) -> str:
        base = f"polling/{self.table.qualified}"
        return base if self.chunks == 1 else f"{base}#{self.chunk}of{self.chunks}"


def assign_units(config: Config, sizes: dict[str, int] | None = None) -> dict[str, list[WorkUnit]]:
    """Worker name → its units. ``sizes`` (table → estimated bytes or rows) balances the load."""
    sizes = sizes or {}
    units = [
        WorkUnit(table, chunk, table.chunks)
        for table in config.source.tables
        for chunk in range(table.chunks)
    ]
    if isinstance(config.workers, dict):
        by_name = {unit.table.qualified: [] for unit in units}
        for unit in units:
            by_name[unit.table.qualified].append(unit)
        return {worker: [u for name in names for u in by_name[name]] for worker, names in config.workers.items()}
    count = config.workers
    if config.source.custom_query and not config.source.tables:
        return {"worker-0": []}
    names = [f"worker-{index}" for index in range(count)]
    load = dict.fromkeys(names, 0)
    out: dict[str, list[WorkUnit]] = {name: [] for name in names}

    def weight(unit: WorkUnit) -> int:
        return max(1, sizes.get(unit.table.qualified, 1) // unit.chunks)

    for unit in sorted(units, key=lambda u: (-weight(u), u.table.qualified, u.chunk)):
        target = min(names, key=lambda name: (load[name], names.index(name)))
        out[target].append(unit)
        load[target] += weight(unit)
    return {name: assigned for name, assigned in out.items() if assigned}
