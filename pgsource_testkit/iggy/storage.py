"""In-memory streams, topics, partitions, messages and consumer offsets of the stand-in.

A stand-in for tests and local use, not an Iggy server: nothing is persisted, and
every method expects the caller to hold :attr:`Storage.lock` (the asyncio thread and
the test thread both read and write it).
"""

from __future__ import annotations

import bisect
import threading
import time
from array import array
from dataclasses import dataclass, field

from . import batches, wire


def now_micros() -> int:
    return time.time_ns() // 1000


@dataclass
class Partition:
    id: int
    created_at: int = field(default_factory=now_micros)
    blobs: list[bytearray] = field(default_factory=list)
    starts: list[array] = field(default_factory=list)
    base_offsets: list[int] = field(default_factory=list)
    base_timestamps: list[int] = field(default_factory=list)
    next_offset: int = 0
    size: int = 0
    consumer_offsets: dict[tuple[int, bytes], int] = field(default_factory=dict)

    @property
    def current_offset(self) -> int:
        return max(self.next_offset - 1, 0)

    def append(self, batch, starts: array, checksums: bytes) -> int:
        """Store one batch checked by :func:`batches.index_and_verify`; returns its base offset."""
        base_offset = self.next_offset
        timestamp = now_micros()
        if self.base_timestamps and timestamp < self.base_timestamps[-1]:
            timestamp = self.base_timestamps[-1]
        stored = batches.stamp(batch, checksums, self.id, base_offset, timestamp)
        self.blobs.append(stored)
        self.starts.append(starts)
        self.base_offsets.append(base_offset)
        self.base_timestamps.append(timestamp)
        self.next_offset = base_offset + len(starts) - 1
        self.size += len(stored)
        return base_offset

    def read(self, offset: int, count: int) -> tuple[list, int]:
        """Batches holding up to ``count`` messages from ``offset``; returns (chunks, messages)."""
        if count <= 0 or offset >= self.next_offset or not self.blobs:
            return [], 0
        index = max(bisect.bisect_right(self.base_offsets, offset) - 1, 0)
        chunks, taken = [], 0
        while index < len(self.blobs) and taken < count:
            starts = self.starts[index]
            frames = len(starts) - 1
            first = max(offset - self.base_offsets[index], 0)
            stop = min(frames, first + count - taken)
            chunks.append(batches.slice_batch(self.blobs[index], starts, first, stop))
            taken += stop - first
            index += 1
        return chunks, taken

    def offset_at_timestamp(self, timestamp: int) -> int:
        """First offset whose (batch append) timestamp is at or after ``timestamp``."""
        index = bisect.bisect_left(self.base_timestamps, timestamp)
        if index >= len(self.base_offsets):
            return self.next_offset
        return self.base_offsets[index]

    def messages(self):
        for blob, starts in zip(self.blobs, self.starts, strict=True):
            yield from batches.decode_frames(blob, starts)


@dataclass
class Topic:
    id: int
    name: str
    partitions: list[Partition]
    options: bytes = b""
    derived_options: bytes = b""  # the server's defaults for every option not given
    message_expiry: int = wire.U64_MAX  # never expire
    max_size: int = wire.U64_MAX
    compression: int = wire.COMPRESSION_NONE  # reported, never applied
    created_at: int = field(default_factory=now_micros)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.partitions)

    @property
    def messages_count(self) -> int:
        return sum(p.next_offset for p in self.partitions)

    def add_partitions(self, count: int) -> None:
        first = len(self.partitions)
        self.partitions.extend(Partition(first + i) for i in range(count))

    def partition(self, partition_id: int) -> Partition:
        if partition_id >= len(self.partitions):
            raise wire.WireError(wire.ERR_PARTITION_NOT_FOUND, f"partition {partition_id} not found")
        return self.partitions[partition_id]

    def encode_header(self) -> bytes:
        derived = self.derived_options
        return wire.encode_topic_header(
            self.id,
            self.created_at,
            len(self.partitions),
            self.message_expiry,
            self.max_size,
            self.size,
            self.messages_count,
            self.name,
            self.options,
            derived,
            self.compression,
        )

    def encode_details(self, segments: int = 1) -> bytes:
        parts = [
            wire.encode_partition(p.id, p.created_at, segments, p.current_offset, p.size, p.next_offset)
            for p in self.partitions
        ]
        return self.encode_header() + b"".join(parts)


@dataclass
class Stream:
    id: int
    name: str
    options: bytes = b""
    topics: dict[int, Topic] = field(default_factory=dict)
    next_topic_id: int = 0
    created_at: int = field(default_factory=now_micros)

    def encode_header(self) -> bytes:
        size = sum(t.size for t in self.topics.values())
        messages = sum(t.messages_count for t in self.topics.values())
        return wire.encode_stream_header(
            self.id, self.created_at, len(self.topics), size, messages, self.name, self.options
        )

    def encode_details(self) -> bytes:
        return self.encode_header() + b"".join(t.encode_header() for t in self.topics.values())

    def topic(self, ident: int | str) -> Topic:
        if isinstance(ident, int):
            found = self.topics.get(ident)
            if found is None:
                raise wire.WireError(wire.ERR_TOPIC_ID_NOT_FOUND, f"topic {ident} not found")
            return found
        for topic in self.topics.values():
            if topic.name == ident:
                return topic
        # the server answers a missing name with the IdNotFound code too
        raise wire.WireError(wire.ERR_TOPIC_ID_NOT_FOUND, f"topic {ident!r} not found")


class Storage:
    """Every stream of one stand-in; guarded by ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.next_stream_id = 0

    def stream(self, ident: int | str) -> Stream:
        if isinstance(ident, int):
            found = self.streams.get(ident)
            if found is None:
                raise wire.WireError(wire.ERR_STREAM_ID_NOT_FOUND, f"stream {ident} not found")
            return found
        for stream in self.streams.values():
            if stream.name == ident:
                return stream
        # the server answers a missing name with the IdNotFound code too
        raise wire.WireError(wire.ERR_STREAM_ID_NOT_FOUND, f"stream {ident!r} not found")

    def find_stream(self, ident: int | str) -> Stream | None:
        try:
            return self.stream(ident)
        except wire.WireError:
            return None

    def create_stream(self, name: str, options: bytes) -> Stream:
        if self.find_stream(name) is not None:
            raise wire.WireError(wire.ERR_STREAM_NAME_EXISTS, f"stream {name!r} exists")
        stream = Stream(self.next_stream_id, name, options)
        self.streams[stream.id] = stream
        self.next_stream_id += 1
        return stream

    def delete_stream(self, ident: int | str) -> None:
        del self.streams[self.stream(ident).id]

    def create_topic(
        self, stream_ident: int | str, name: str, partitions: int, options: bytes, derived_options: bytes = b""
    ) -> Topic:
        stream = self.stream(stream_ident)
        if any(t.name == name for t in stream.topics.values()):
            raise wire.WireError(wire.ERR_TOPIC_NAME_EXISTS, f"topic {name!r} exists")
        topic = Topic(stream.next_topic_id, name, [Partition(i) for i in range(partitions)], options, derived_options)
        stream.topics[topic.id] = topic
        stream.next_topic_id += 1
        return topic

    def delete_topic(self, stream_ident: int | str, topic_ident: int | str) -> None:
        stream = self.stream(stream_ident)
        del stream.topics[stream.topic(topic_ident).id]

    def topic(self, stream_ident: int | str, topic_ident: int | str) -> tuple[Stream, Topic]:
        stream = self.stream(stream_ident)
        return stream, stream.topic(topic_ident)

    def purge(self, stream_ident: int | str, topic_ident: int | str | None = None) -> None:
        stream = self.stream(stream_ident)
        topics = list(stream.topics.values()) if topic_ident is None else [stream.topic(topic_ident)]
        for topic in topics:
            topic.partitions = [Partition(p.id, p.created_at) for p in topic.partitions]
