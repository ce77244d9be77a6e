"""This replica's view of the configuration: its shard of the tables, and its slot and publication names.

Part of loading the file (``pgsource/config/load.py``), so every process and command sees the
same narrowed configuration; what a shard records and refuses lives in
``pgsource/plan/sharding.py``.
"""

from __future__ import annotations

import xxhash

from pgsource.config.model import Config, TableConfig

SHARD_SUFFIX = "_shard"


def shard_of(table: TableConfig, count: int) -> int:
    if table.shard is not None:
        return table.shard
    # The shard's hash: xxh32 of "schema.table" modulo count (the same as a key's partition, pgsource/encode/ids.py).
    # Changing the hash or its input would move tables between replicas: never change it.
    return xxhash.xxh32_intdigest(f"{table.schema_}.{table.name}".encode()) % count if count > 1 else 0


def apply_shard(config: Config) -> Config:
    """The configuration as this replica sees it: its tables, and its slot and publication names."""
    shard = config.shard
    if shard is None:
        return config
    from pgsource.errors import ConfigError

    pinned = [t.qualified for t in config.source.tables if t.shard is not None and t.shard >= shard.count]
    if pinned:
        raise ConfigError(f"tables: shard pinned beyond shard.count {shard.count} for {', '.join(pinned)}")
    mine = [table for table in config.source.tables if shard_of(table, shard.count) == shard.index]
    names = {table.qualified for table in mine}
    workers = config.workers
    if isinstance(workers, dict):
        workers = {name: [t for t in tables if t in names] for name, tables in workers.items()}
        workers = {name: tables for name, tables in workers.items() if tables} or 1
    source = config.source.model_copy(update={
        "tables": mine,
        "replication_slot": f"{config.source.replication_slot}{SHARD_SUFFIX}{shard.index}",
        "publication_name": f"{config.source.publication_name}{SHARD_SUFFIX}{shard.index}",
    })
    return config.model_copy(update={"source": source, "workers": workers})
