"""``*Event``: the records that cross process boundaries on multiprocessing queues.

Workers send ``BatchEvent``s to the publisher; the publisher answers each with an
``AckEvent`` once Iggy acknowledged every message of the batch. A batch is one pickled
object (not one per row) so the queue costs little per message.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatchEvent:
    worker: str
    seq: int  # per worker, strictly increasing; acks come back in this order
    stream: str
    topic: str
    table: str
    ids: list[int]
    partitions: list[int]  # one per message (0-based Iggy partition ids)
    payloads: list[str]
    headers: list[dict] | None = None  # one dict of user headers per message, or None
    created: float = 0.0  # time.time() when the worker built it (latency metrics)
    commit_time: float = 0.0  # for CDC: the transaction's commit time (epoch seconds)

    def __len__(self) -> int:
        return len(self.ids)


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


@dataclass(frozen=True)
class WorkerStatus:
    """A child's word to the supervisor: it is alive, it failed for good, or it finished."""

    worker: str
    state: str  # "ready" | "fatal" | "done"
    error: BaseException | None = None
    detail: dict = field(default_factory=dict)
