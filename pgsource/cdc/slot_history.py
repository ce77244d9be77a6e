"""A CDC slot's history as ``state.dir`` remembers it: is a missing slot a first start, or a gap?

A slot pgsource streamed from (its ``SlotProgress`` record says so) that is now missing was
dropped, or lost in a failover to a server without it: a new slot would start at the
current WAL position and skip every change made since the last confirmation, without a
word. Likewise a slot found on another database system or timeline than the one it was
streamed on holds the position of another history. Both stop the service (exit 3) unless
``source.on_missing_slot: snapshot`` accepts the gap (a new slot and a snapshot of the
tables). Creating the slot on the very first start is not a gap.
"""

from __future__ import annotations

import dataclasses

from pgsource.lsn import format_lsn
from pgsource.pg.replication import SystemIdentity
from pgsource.state import SlotProgress


def slot_was_used(stored: SlotProgress | None) -> bool:
    """Changes or snapshot rows went out of this slot: recreating it would leave a gap."""
    return stored is not None and (stored.streamed or stored.consistent_lsn != 0)


def missing_slot_problem(slot: str, stored: SlotProgress | None, where: str) -> str | None:
    """Why a missing ``slot`` must not be recreated silently (None: first start, nothing to lose)."""
    if not slot_was_used(stored):
        return None
    position = f"confirmed up to {format_lsn(stored.lsn)}" if stored.lsn else "its initial snapshot had begun"
    return (
        f"replication slot {slot} is missing, but pgsource used it ({where}: {position}): a new slot would"
        " start at the current WAL position and skip every change made since, without a word. If it was"
        " dropped by mistake or lost in a failover, accept the gap with source.on_missing_slot: snapshot"
        " (a new slot, and a snapshot of the tables sent as SELECT)"
    )


def identity_problem(slot: str, stored: SlotProgress | None, now: SystemIdentity, where: str) -> str | None:
    """Why ``slot`` must not be streamed from when the database under it is not the one it was used on."""
    if stored is None or not stored.system_identifier:
        return None  # a record of an older version: nothing to compare
    changed = []
    if stored.system_identifier != now.system_identifier:
        changed.append(f"system identifier {stored.system_identifier} → {now.system_identifier}")
    if stored.timeline and stored.timeline != now.timeline:
        changed.append(f"timeline {stored.timeline} → {now.timeline}")
    if not changed:
        return None
    return (
        f"replication slot {slot} was used on another database history than this server's"
        f" ({', '.join(changed)}; {where}): its position may skip or repeat changes (a restore, or a"
        " failover to a standby). To accept the gap: drop the slot (SELECT pg_drop_replication_slot("
        f"'{slot}')) and start with source.on_missing_slot: snapshot"
    )


REJOIN = "pgsource rejoin --config FILE --table {table}"


def table_identity_problem(slot: str, publication: str, table: str, recorded: int, now) -> tuple[str, str] | None:
    """(kind, line) when configured ``table`` is no longer the relation ``slot`` captured under it
    (``recorded``: its oid in the slot's record; ``now``: ``pgsource.pg.publications.RelationNow``).

    ``renamed`` and ``dropped``: the name denotes nothing now (while streaming, the relation is
    still captured by its oid, or its changes end with the DROP; a start must be told the new
    name). ``replaced`` (another relation under the name: a swap) and ``unpublished`` (its
    publication lost it: ALTER PUBLICATION ... DROP TABLE): its changes are no longer in the
    slot; the way forward is an explicit rejoin, never a silent join from a new cut."""
    rejoin = REJOIN.format(table=table)
    if now.oid == 0 and recorded:
        if now.recorded_name:
            return "renamed", (
                f"table {table}, captured by slot {slot} as oid {recorded}, is now named {now.recorded_name}: put"
                f" {now.recorded_name} in source.tables (the topic, table_name and partitions follow the configured name),"
                " or rename it back")
        return "dropped", (
            f"table {table} does not exist: it was dropped (oid {recorded}, captured by slot {slot}; its changes up to"
            " the DROP were delivered); remove it from source.tables")
    if recorded and now.oid and now.oid != recorded:
        return "replaced", (
            f"table {table} is no longer the relation slot {slot} captured (oid {recorded}, now {now.oid}): it was"
            " replaced under the same name, and the new relation is not captured. To take it as a new table (its rows"
            f" sent as a snapshot, then its changes): {rejoin}")
    if now.oid and not now.published:
        return "unpublished", (
            f"table {table} is no longer in publication {publication}, which slot {slot} streams (ALTER PUBLICATION ..."
            f" DROP TABLE?): its changes since were not decoded. To take it again (its rows sent as a snapshot, then"
            f" its changes): {rejoin}")
    return None


def rename_captured(record: SlotProgress, renames: dict[str, str]) -> SlotProgress:
    """The record with tables renamed (old → new configured name): the same relations (same oids),
    which the configuration now names by their new names."""

    def new(name: str) -> str:
        return renames.get(name, name)

    return dataclasses.replace(
        record, tables=tuple(sorted(new(name) for name in record.tables)),
        oids=tuple(sorted((new(name), oid) for name, oid in record.oids)),
        partitions=tuple(sorted((new(name), oids) for name, oids in record.partitions)),
        joins=tuple(dataclasses.replace(join, table=new(join.table)) for join in record.joins),
    )


def renamed_while_stopped(record: SlotProgress, oids: dict[str, int]) -> dict[str, str]:
    """Old → new name of each captured table that the configuration now names by another name: the
    relation (``oids``: configured name → its oid now) is the one the record captured under the old
    name, which is configured no more."""
    by_oid = {oid: name for name, oid in record.oids}
    renames = {}
    for name in sorted(set(oids) - set(record.tables)):
        old = by_oid.get(oids[name])
        if old is not None and old not in oids:
            renames[old] = name
    return renames


def with_oids(record: SlotProgress, oids: dict[str, int]) -> SlotProgress:
    """The record with the oid of each table it captures (as configured now, ``oids``) and no
    rejoin left for a table that joined."""
    known = {**record.oid_of, **oids}
    return dataclasses.replace(
        record, oids=tuple(sorted((name, oid) for name, oid in known.items() if name in record.tables)),
        rejoin=tuple(name for name in record.rejoin if name not in record.tables))
