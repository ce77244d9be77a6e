"""Durable progress: polling offsets, chunk cuts and CDC slot records, moved forward only after Iggy acknowledged."""

from pgsource.state.records import (
    Backfill,
    BackfillPhase,
    BackfillRecord,
    ChunkCuts,
    PollingOffset,
    ShapeRecord,
    ShardRecord,
    SlotProgress,
    SnapshotPhase,
    TableJoin,
    TableShape,
    backfills_key,
    shapes_key,
)
from pgsource.state.store import FileStateStore

__all__ = ["Backfill", "BackfillPhase", "BackfillRecord", "ChunkCuts", "FileStateStore", "PollingOffset", "ShapeRecord",
           "ShardRecord", "SlotProgress", "SnapshotPhase", "TableJoin", "TableShape", "backfills_key",
           "shapes_key"]
