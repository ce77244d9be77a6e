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
