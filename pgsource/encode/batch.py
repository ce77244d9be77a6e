"""The one batch shape of both modes (``pgsource/pipeline/events.py`` turns it into the publisher's event).

Polling (``pgsource/rows/encoder.py``) and CDC (``pgsource/cdc/encoder.py``) each produce, per topic, a
``MessageBatch``: ids, partitions, payloads and headers, in order.
"""

from __future__ import annotations

from typing import NamedTuple


class MessageBatch(NamedTuple):
    """Messages bound for one topic, in order. A tuple, so the CDC hot path appends to its lists
    without attribute look-ups (``ids, parts, payloads, headers = batch``)."""

    ids: list[int]
    partitions: list[int]
    payloads: list  # str (polling's JSON text) or bytes
    headers: list | None = None  # one dict per message, or None for none


def new_message_batch() -> MessageBatch:
    return MessageBatch([], [], [], [])
