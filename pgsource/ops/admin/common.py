"""What the admin commands share: the units of a table, its stored offsets, a bounded connection."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

from pgsource.config.model import Config, TableConfig
from pgsource.errors import ConfigError
from pgsource.pg import connect as pg
from pgsource.pg import publications as pubs
from pgsource.pg.positions import bounded
from pgsource.pg.replication import existing_slots
from pgsource.plan.assignment import WorkUnit, assign_units, plan_cdc
from pgsource.state import FileStateStore


def find_table(config: Config, name: str) -> TableConfig:
    """The configured table called ``name`` (``users`` or ``sales.orders``); ConfigError naming the choices."""
    for table in config.source.tables:
        if name in (table.qualified, f"{table.schema_}.{table.name}"):
            return table
    known = ", ".join(t.qualified for t in config.source.tables) or "none"
    raise ConfigError(f"--table {name}: not in source.tables (configured: {known})")


def units_of(config: Config, table: TableConfig) -> list[WorkUnit]:
    """Its offsets' units: one, or one per chunk."""
    return [unit for units in assign_units(config).values() for unit in units if unit.table == table]


def committed_at(store: FileStateStore, key: str) -> float | None:
    """When the record under ``key`` was written (epoch seconds), from the file itself."""
    try:
        with open(store.path(key), encoding="utf-8") as handle:
            return float(json.load(handle).get("committed_at") or 0) or None
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def connection(config: Config, purpose: str, seconds: float = 30.0):
    conn = pg.connect(config.source.connection_string, application_name=f"pgsource-{purpose}", connect_timeout=10)
    try:
        bounded(conn, seconds)
        yield conn
    finally:
        conn.close()


def state_dir_exists(config: Config) -> bool:
    return os.path.isdir(config.state.dir)


def cdc_slots(conn, config: Config) -> dict[str, tuple[str, list[WorkUnit]]]:
    """Worker → (its slot, its units), as ``run`` plans them: slot ownership is read from the
    publications in the database (``plan_cdc``), never recomputed from the worker count."""
    plan = plan_cdc(config, pubs.load_publications(conn, config.source.publication_name), existing_slots(conn))
    return {worker: (units[0].slot, units) for worker, units in plan.assignment.items()}
