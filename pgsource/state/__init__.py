"""Durable progress: polling offsets, chunk cuts and CDC slot records, moved forward only after Iggy acknowledged."""

from pgsource.state.records import (
    Backfill,
    BackfillPhase,
    BackfillRecord,
    ChunkCuts,
    PollingOffset,
    ShardRecord,
    SlotProgress,
    SnapshotPhase,
    TableJoin,
    backfills_key,
)
from pgsource.state.store import FileStateStore

__all__ = ["Backfill", "BackfillPhase", "BackfillRecord", "ChunkCuts", "FileStateStore", "PollingOffset", "ShardRecord",
           "SlotProgress", "SnapshotPhase", "TableJoin", "backfills_key"]
