"""``SlotRecords``: the one owner of a slot's record (``cdc/<slot>`` in ``state.dir``) in its worker.

The record (``SlotProgress``) says what pgsource knows of the slot beyond what the slot
keeps: the database it lived on, the tables it captures and their OIDs, the snapshots and
joins done, the partitions delivered, and the last LSN confirmed. Three parts of the CDC
worker change it, all through this one object, so that none overwrites what another wrote:

- ``SlotLifecycle`` (``slot_lifecycle.py``) while it prepares the slot: the first attempt of
  a snapshot, the joins and their cuts, and the record that says they were acknowledged;
- ``TableWatch`` (``identity.py``): the partitions whose rows were delivered;
- ``SlotCommitter`` (``committer.py``): the confirmed LSN, copied now and then.

``pgsource drop-slot``, ``reset`` and ``rejoin`` change it too, but only under the state lock,
which a running service holds.
"""

from __future__ import annotations

import dataclasses

from pgsource.state import FileStateStore, SlotProgress


class SlotRecords:
    """Holds the slot's record as stored last; ``save`` is the only way it changes."""

    def __init__(self, store: FileStateStore, slot: str) -> None:
        self.store = store
        self.key = f"cdc/{slot}"
        self.record: SlotProgress | None = None  # the record stored last by this worker (None: nothing yet)

    @property
    def where(self) -> str:
        """The record's file, as messages name it."""
        return f"state {self.store.path(self.key)}"

    def load(self) -> SlotProgress | None:
        """The record as a previous run left it (None: this slot has none)."""
        return self.store.load(self.key, SlotProgress)

    def save(self, record: SlotProgress, *, force: bool = False) -> SlotProgress:
        """Store ``record`` durably (``force``: a new slot, whose history starts here) and hold it."""
        self.store.commit(self.key, record, force=force)
        self.record = record
        return record

    def confirmed(self, lsn: int) -> None:
        """The slot was confirmed up to ``lsn``: the record says so (it names the gap if the slot vanishes)."""
        if self.record is not None and lsn > self.record.lsn:
            self.save(dataclasses.replace(self.record, lsn=lsn))
