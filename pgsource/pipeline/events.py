"""``*Event``: the records that cross process boundaries on multiprocessing queues.

Workers send ``BatchEvent``s to the publisher; the publisher answers each with an
``AckEvent`` once Iggy acknowledged every message of the batch. A batch crosses the
queue already in its wire form (per partition one blob of Iggy message frames), so the
queue and the publisher cost almost nothing per message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from pgsource.encode.batch import MessageBatch
from pgsource.encode.frames import PartitionFrames, encode_partition_frames


@dataclass
class BatchEvent:
    worker: str
    seq: int  # per worker, strictly increasing; acks come back in this order
    stream: str
    topic: str
    table: str
    parts: list[PartitionFrames]  # the messages, encoded per partition (0-based Iggy partition ids)
    count: int  # messages in all parts
    created: float = 0.0  # time.time() when the worker built it (latency metrics)
    commit_time: float = 0.0  # for CDC: the transaction's commit time (epoch seconds)
    # CDC, a topic several tables share: per table (the ``table`` label) its messages and frame
    # bytes in this batch; None when the batch holds one table's messages (``table``)
    tables: dict[str, tuple[int, int]] | None = None

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class AckEvent:
    worker: str
    seq: int
    messages: int
    acked_at: float


@dataclass(frozen=True)
class StopEvent:
    """Sentinel on the batch queue: the publisher drains what came before it, then exits."""

    reason: str = "stop"


class WorkerState(str, Enum):
    READY = "ready"  # booted: connected, planned, about to serve
    FATAL = "fatal"  # failed for good (the error says why); the service stops with its exit code


@dataclass(frozen=True)
class WorkerStatus:
    """A child's word to the supervisor: it is ready, or it failed for good."""

    worker: str
    state: WorkerState
    error: BaseException | None = None
    detail: dict = field(default_factory=dict)


def encode_batch_event(messages: MessageBatch, *, worker: str, seq: int, stream: str, topic: str, table: str,
                       where: str, commit_time: float = 0.0,
                       tables: dict[str, tuple[int, int]] | None = None) -> BatchEvent:
    """The publisher's event for ``messages``; a message Iggy would refuse is a ``SourceError``
    naming ``where`` (the table or topic) and its id. ``tables``: per table of a shared topic,
    its (messages, frame bytes), for the metrics."""
    parts = encode_partition_frames(messages.ids, messages.partitions, messages.payloads, messages.headers, where=where)
    return BatchEvent(worker, seq, stream, topic, table, parts, len(messages.ids), created=time.time(),
                      commit_time=commit_time, tables=tables)
