"""The one batch shape of both modes, and the one seam where it becomes the publisher's event.

Polling (``pgsource/rows/encoder.py``) and CDC (``pgsource/cdc/encoder.py``) each produce, per topic, a
``MessageBatch``: ids, partitions, payloads and headers, in order. ``encode_batch_event``
turns one into the ``BatchEvent`` the publisher takes: the messages split by partition and
encoded as Iggy frames (``encode/frames.py``), so the queue and the publisher cost almost
nothing per message.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from pgsource.encode.frames import encode_partition_frames
from pgsource.pipeline.events import BatchEvent


class MessageBatch(NamedTuple):
    """Messages bound for one topic, in order. A tuple, so the CDC hot path appends to its lists
    without attribute look-ups (``ids, parts, payloads, headers = batch``)."""

    ids: list[int]
    partitions: list[int]
    payloads: list  # str (polling's JSON text) or bytes
    headers: list | None = None  # one dict per message, or None for none


def new_message_batch() -> MessageBatch:
    return MessageBatch([], [], [], [])


def encode_batch_event(messages: MessageBatch, *, worker: str, seq: int, stream: str, topic: str, table: str,
                       where: str, commit_time: float = 0.0,
                       tables: dict[str, tuple[int, int]] | None = None) -> BatchEvent:
    """The publisher's event for ``messages``; a message Iggy would refuse is a ``SourceError``
    naming ``where`` (the table or topic) and its id. ``tables``: per table of a shared topic,
    its (messages, frame bytes), for the metrics."""
    parts = encode_partition_frames(messages.ids, messages.partitions, messages.payloads, messages.headers, where=where)
    return BatchEvent(worker, seq, stream, topic, table, parts, len(messages.ids), created=time.time(),
                      commit_time=commit_time, tables=tables)
