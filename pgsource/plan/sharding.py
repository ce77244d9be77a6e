"""Several replicas (a Kubernetes StatefulSet), each owning a disjoint shard of the tables.

The shard of a table is ``tables[].shard`` when given, else ``xxh32(schema.table) % count``
(pgsource/encode/ids.py's stable hash, the same in every process and release): every
replica computes the same split from the same file, with no coordination. A replica sees
only its own tables (``apply_shard`` runs when the file is loaded), its own
``state.dir`` (a volume per replica) and, in CDC, its own slot and publication names
(``<replication_slot>_shard<index>``, ``<publication_name>_shard<index>``), so two replicas
never share a table, an offset or a slot.

Changing ``shard.count`` would move tables between replicas (their offsets and slots stay
behind): the first start of a replica records its shard, and a later start with another
count or index is refused (``check_shard``), as is a CDC table already captured by another
shard's publication. docs/operations.md "Sharding" says how to migrate.
"""

from __future__ import annotations

from pgsource.config.model import Config
from pgsource.config.shard import SHARD_SUFFIX, apply_shard, shard_of  # noqa: F401  (re-exported)


def unsharded_name(name: str, config: Config) -> str:
    """``iggy_publication_shard2`` → ``iggy_publication`` (the family every shard's names start with)."""
    if config.shard is None:
        return name
    return name.removesuffix(f"{SHARD_SUFFIX}{config.shard.index}")


SHARD_KEY = "shard"


def check_shard(config: Config) -> str | None:
    """A problem when ``state.dir`` belongs to another shard split than the configuration says."""
    from pgsource.errors import StateError
    from pgsource.state import FileStateStore, ShardRecord

    store = FileStateStore(config.state.dir)
    try:
        stored = store.load(SHARD_KEY, ShardRecord)
    except StateError as exc:
        return str(exc)
    shard = config.shard
    wanted = (shard.index, shard.count) if shard is not None else (0, 1)
    if stored is None or (stored.index, stored.count) == wanted:
        return None
    return (
        f"shard: state.dir {config.state.dir} belongs to shard {stored.index} of {stored.count}, the configuration says"
        f" {wanted[0]} of {wanted[1]}: changing the split would move tables away from their offsets and slots"
        " (see docs/operations.md, Sharding, to migrate)"
    )


def record_shard(config: Config) -> None:
    """At the first start of a replica: which shard its ``state.dir`` serves."""
    from pgsource.state import FileStateStore, ShardRecord

    store = FileStateStore(config.state.dir)
    shard = config.shard
    record = ShardRecord(shard.index, shard.count) if shard is not None else ShardRecord(0, 1)
    if store.load(SHARD_KEY, ShardRecord) != record:
        store.commit(SHARD_KEY, record)


def foreign_captures(config: Config, publications: dict) -> list[str]:
    """Tables of this shard that another shard's publication captures (the split changed)."""
    if config.shard is None:
        return []
    mine = config.source.publication_name
    problems = []
    for name, publication in publications.items():
        if name == mine or name.startswith(mine + "_"):
            continue
        for table in config.source.tables:
            if publication.holds(table):
                problems.append(
                    f"table {table.qualified} belongs to shard {config.shard.index} of {config.shard.count} but"
                    f" publication {name} of another shard captures it: the shard split changed; see docs/operations.md, Sharding"
                )
    return problems
