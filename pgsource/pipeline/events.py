"""``*Event``: the small records that cross process boundaries on multiprocessing queues.

The publisher answers each batch (a block on the batch channel, ``pgsource/pipeline/block.py``)
with an ``AckEvent`` on the ack queue of the worker that sent it, once Iggy acknowledged
every message of the batch. Every child tells the supervisor its ``WorkerStatus``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class AckEvent:
    worker: str
    seq: int
    messages: int
    acked_at: float


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
