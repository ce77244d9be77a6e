"""``pgsource rejoin``: take a CDC table anew, the explicit way forward when the relation a slot
captured under its name is gone from the stream (replaced under the same name, or dropped from
the publication by hand; ``pgsource/cdc/slot_history.py``, ``pgsource/cdc/identity.py``).

It changes only the record in ``state.dir`` of the slot that captured the table: the table is
no longer listed as captured (nor its oid, its joins, its partitions) and is marked ``rejoin``.
The next start then joins it as a table added to the configuration is joined (a cut, the
table added to the publication if it is missing), and sends its rows as a snapshot
(``SELECT``) whatever ``source.snapshot`` says, before streaming its changes: nothing written
meanwhile is lost. The slot keeps its position for every other table (dropping the slot
would cost them theirs). It takes the ``state.dir`` lock: it refuses while the service runs.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from pgsource.config.model import Config
from pgsource.errors import ConfigError, PrerequisiteError
from pgsource.ops.admin.common import find_table
from pgsource.state import FileStateStore, SlotProgress
from pgsource.state.lock import StateLock

log = logging.getLogger("pgsource.rejoin")


@dataclass(frozen=True)
class Rejoin:
    key: str  # the slot's record
    slot: str
    table: str
    oid: int  # the relation it captured (0: not recorded)


def plan_rejoin(config: Config, table_name: str) -> Rejoin:
    """Which slot's record captured the table (nothing is written)."""
    if not config.source.cdc:
        raise ConfigError("rejoin: only for mode: cdc (a polling table is moved with pgsource reset)")
    table = find_table(config, table_name).qualified
    store = FileStateStore(config.state.dir)
    for key in store.keys():
        if key.startswith("cdc/"):
            record = store.load(key, SlotProgress)
            if record is not None and table in record.tables:
                return Rejoin(key, record.slot, table, record.oid_of.get(table, 0))
    raise PrerequisiteError(
        f"rejoin: no slot in {config.state.dir} captures {table} (a start joins a table no slot captures by itself)")


def apply_rejoin(config: Config, plan: Rejoin) -> None:
    """Write the choice under the state.dir lock (StateLockedError while the service runs)."""
    with StateLock(config.state.dir, "rejoin"):
        store = FileStateStore(config.state.dir)
        record = store.load(plan.key, SlotProgress)
        table = plan.table
        record = dataclasses.replace(
            record, tables=tuple(name for name in record.tables if name != table),
            oids=tuple((name, oid) for name, oid in record.oids if name != table),
            partitions=tuple((name, oids) for name, oids in record.partitions if name != table),
            joins=tuple(join for join in record.joins if join.table != table),
            rejoin=tuple(sorted({*record.rejoin, table})),
        )
        store.commit(plan.key, record)
        log.warning("rejoin: %s leaves slot %s's captured tables (oid %d); the next start joins it anew, its rows"
                    " sent as a snapshot, then its changes", table, plan.slot, plan.oid)
