"""A batch as it crosses from a worker to the publisher: one block of bytes, ready for Iggy.

The worker does all the work that can run in parallel: the messages' frames
(``pgsource/encode/frames.py``) and, around them, each SendMessages request body with its
batch header and checksum. The publisher reads the block's small header, and hands each
body to the SDK (``IggySink.send_requests``), which adds only the request header. Nothing
is pickled and nothing per message is looked at on the way.

Layout (little-endian)::

    fixed header    magic "PGSB", version, kind (batch / stop), seq, messages, requests,
                    tables, created, commit_time, frame bytes, length of the names
    names           worker, stream, topic, table (u16 length + UTF-8 each), then per table
                    of a shared topic: name, messages u32, frame bytes u64
    directory       per request: partition u32, messages u32, body length u32
    bodies          the SendMessages request bodies, back to back

What fills the block is the worker's business (today ``encode_partition_frames`` of a
``MessageBatch``; the speed work's COPY decoder hands over ``PartitionFrames`` of its own):
``encode_block`` takes frames per partition, whoever made them. The sequence number is
written in by the outbox when it sends the block (``set_block_seq``).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pgsource.encode.batch import MessageBatch
from pgsource.encode.frames import (
    PartitionFrames,
    SendRequest,
    encode_partition_frames,
    encode_request_prefix,
    split_partition_frames,
)
from pgsource.errors import SourceError

MAGIC = b"PGSB"
VERSION = 1
KIND_BATCH = 1
KIND_STOP = 2  # the supervisor's last block: the publisher drains what came before it, then exits

_FIXED = struct.Struct("<4sBBHQIIIddQ")  # magic version kind reserved seq count requests tables created commit frames
_NAMES_LEN = struct.Struct("<I")
_SEQ_AT = 8
_SEQ = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_TABLE_COUNTS = struct.Struct("<IQ")  # messages, frame bytes
_REQUEST = struct.Struct("<III")  # partition, messages, body length


@dataclass(frozen=True)
class BlockHead:
    """Who made a batch and where it goes: the names and figures the publisher needs besides the bodies."""

    worker: str
    stream: str
    topic: str
    table: str  # the metrics' table label (CDC: the first table of a shared topic)
    commit_time: float = 0.0  # CDC: the transaction's commit time (epoch seconds)
    # CDC, a topic several tables share: per table its (messages, frame bytes); None: one table
    tables: dict[str, tuple[int, int]] | None = None


@dataclass(frozen=True)
class Block:
    """A block read back by the publisher."""

    kind: int
    seq: int
    head: BlockHead
    count: int  # messages in all requests
    frame_bytes: int  # bytes of message frames (the metrics' bytes sent)
    created: float  # time.time() when the worker built it (latency metrics)
    requests: tuple[SendRequest, ...]  # ready for ``IggySink.send_requests``

    @property
    def stop(self) -> bool:
        return self.kind == KIND_STOP


def encode_message_block(head: BlockHead, messages: MessageBatch, *, where: str) -> bytearray:
    """``messages`` framed per partition, then the block (``where`` names the table or topic in errors)."""
    parts = encode_partition_frames(messages.ids, messages.partitions, messages.payloads, messages.headers, where=where)
    return encode_block(head, parts, where=where)


def encode_block(head: BlockHead, parts: Sequence[PartitionFrames], *, where: str) -> bytearray:
    """The block of a batch already framed per partition; each part cut into requests Iggy takes.

    A message too big for any request is a ``SourceError`` naming ``where``: resending could never help.
    """
    created = time.time()
    origin = int(created * 1_000_000)
    pieces: list[bytes] = []
    directory: list[bytes] = []
    count = frame_bytes = requests = 0
    for part in parts:
        try:
            cut = split_partition_frames(part)
        except ValueError as exc:
            raise SourceError(f"{where}: {exc}") from None
        for piece in cut:
            prefix = encode_request_prefix(head.stream, head.topic, piece, origin)
            directory.append(_REQUEST.pack(piece.partition, piece.count, len(prefix) + len(piece.frames)))
            pieces += (prefix, piece.frames)
            count += piece.count
            frame_bytes += len(piece.frames)
            requests += 1
    names = _encode_names(head)
    tables = len(head.tables) if head.tables else 0
    fixed = _FIXED.pack(MAGIC, VERSION, KIND_BATCH, 0, 0, count, requests, tables, created, head.commit_time, frame_bytes)
    return bytearray().join([fixed, _NAMES_LEN.pack(len(names)), names, *directory, *pieces])


def encode_stop_block() -> bytes:
    """The block that tells the publisher to stop once everything before it is sent."""
    names = _encode_names(BlockHead("", "", "", ""))
    return _FIXED.pack(MAGIC, VERSION, KIND_STOP, 0, 0, 0, 0, 0, 0.0, 0.0, 0) + _NAMES_LEN.pack(len(names)) + names


def set_block_seq(block: bytearray, seq: int) -> None:
    """Write the batch's sequence number (the outbox numbers batches as it sends them)."""
    _SEQ.pack_into(block, _SEQ_AT, seq)


def decode_block(data: bytes | bytearray | memoryview) -> Block:
    """A block as ``encode_block`` made it; ``ValueError`` for anything else (never sent on)."""
    view = memoryview(data)
    if len(view) < _FIXED.size + _NAMES_LEN.size:
        raise ValueError(f"a block of {len(view)} bytes is shorter than its header")
    magic, version, kind, _, seq, count, requests, tables, created, commit_time, frame_bytes = _FIXED.unpack_from(view, 0)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"not a batch block (magic {bytes(magic)!r}, version {version})")
    pos = _FIXED.size
    (names_len,) = _NAMES_LEN.unpack_from(view, pos)
    pos += _NAMES_LEN.size
    head, end = _decode_names(view, pos, tables, commit_time)
    if end != pos + names_len:
        raise ValueError("a block's names do not add up to their length")
    pos = end
    sizes = [_REQUEST.unpack_from(view, pos + i * _REQUEST.size) for i in range(requests)]
    pos += requests * _REQUEST.size
    bodies = []
    for partition, messages, length in sizes:
        bodies.append(SendRequest(partition, messages, bytes(view[pos:pos + length])))
        pos += length
    if pos != len(view):
        raise ValueError(f"a block of {len(view)} bytes holds {pos} bytes of requests")
    return Block(kind, seq, head, count, frame_bytes, created, tuple(bodies))


def _encode_names(head: BlockHead) -> bytes:
    out = bytearray()
    for name in (head.worker, head.stream, head.topic, head.table):
        _put_name(out, name)
    for table, (messages, frame_bytes) in (head.tables or {}).items():
        _put_name(out, table)
        out += _TABLE_COUNTS.pack(messages, frame_bytes)
    return bytes(out)


def _put_name(out: bytearray, name: str) -> None:
    raw = name.encode()
    out += _U16.pack(len(raw)) + raw


def _decode_names(view: memoryview, pos: int, tables: int, commit_time: float) -> tuple[BlockHead, int]:
    names = []
    for _ in range(4):
        name, pos = _take_name(view, pos)
        names.append(name)
    per_table = {}
    for _ in range(tables):
        name, pos = _take_name(view, pos)
        per_table[name] = _TABLE_COUNTS.unpack_from(view, pos)
        pos += _TABLE_COUNTS.size
    return BlockHead(*names, commit_time=commit_time, tables=per_table or None), pos


def _take_name(view: memoryview, pos: int) -> tuple[str, int]:
    (length,) = _U16.unpack_from(view, pos)
    pos += _U16.size
    return bytes(view[pos:pos + length]).decode(), pos + length
