"""Durable progress: polling offsets, chunk cuts and CDC slot records, moved forward only after Iggy acknowledged."""

from pgsource.state.records import (
    ChunkCuts,
    PollingOffset,
    ShardRecord,
    SlotProgress,
    SnapshotPhase,
    TableJoin,
)
from pgsource.state.store import FileStateStore

__all__ = ["ChunkCuts", "FileStateStore", "PollingOffset", "ShardRecord", "SlotProgress", "SnapshotPhase", "TableJoin"]
