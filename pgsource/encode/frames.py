"""``encode_*``: messages as the bytes of an Iggy 0.9 ``SendMessages`` request.

The SDK's own path (one ``SendMessage`` object per message, converted again in Rust)
cost the publisher 1.3–2.6 µs per message, a third of pgsource's CPU per row. So the
workers, which run in parallel, encode each batch into its wire form here, once: per
partition one blob of message frames and their checksums. The publisher only prepends
the request metadata and the batch header (:func:`encode_send_request`) and hands the
bytes to the SDK's ``send_binary_request``: the SDK still owns the connection, the
login, the framing and the reply. The frames are byte for byte what the SDK builds
(tests/unit/test_frames.py compares them with a capture of the SDK's own request),
except that every message gets timestamp delta 0 (the SDK puts the µs between its
``SendMessage`` constructions there).

Frame (Iggy 0.9): a 48-byte header ``checksum u64, id u128, offset_delta u32,
timestamp_delta u32, headers_len u32, payload_len u32, reserved u64``, the payload,
then the user headers. ``checksum`` is XXH3-64 of the frame after its first 8 bytes.
User headers are ``[kind u8][len u32][bytes]`` for the key, then the same for the
value, pairs ordered by key, as the SDK sends them (strings are kind 2).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from xxhash import xxh3_64_intdigest

from pgsource.errors import SourceError

try:  # the C twin (pgsource/encode/_frames.c): same bytes, ~10x less CPU per message
    from pgsource.encode import _frames as compiled
except ImportError:  # built without a C compiler: the Python code below does the same
    compiled = None

__all__ = [
    "SEND_MESSAGES_CODE",
    "MAX_REQUEST_BYTES",
    "MAX_REQUEST_FRAMES_BYTES",
    "PartitionFrames",
    "SendRequest",
    "batch_checksum",
    "encode_frames",
    "encode_partition_frames",
    "encode_request_prefix",
    "encode_send_request",
    "encode_send_requests",
    "encode_user_headers",
    "split_partition_frames",
]

MAX_PAYLOAD = 64_000_000  # bytes; the SDK refuses bigger and empty payloads, so does the server
MAX_HEADER_FIELD = 255  # bytes of a user header key or value (and at least 1)
SEND_MESSAGES_CODE = 101  # the command code ``send_binary_request`` maps to the SendMessages operation
BATCH_HEADER_SIZE = 256
FRAME_HEADER_SIZE = 48
# The server closes the connection on a request frame (256-byte header + body) over 64 MiB.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Frames per SendMessages request: the limit less the request header (256), the metadata
# (at most 528 with two 255-byte names), the batch header (256), and a margin.
MAX_REQUEST_FRAMES_BYTES = MAX_REQUEST_BYTES - 64 * 1024

_LOW64 = (1 << 64) - 1
_FRAME_SIZES = struct.Struct("<II")  # headers_len, payload_len at byte 32 of a frame
_FRAME_TAIL = struct.Struct("<QQIIIIQ")  # id low, id high, offset_delta, timestamp_delta, headers_len, payload_len, reserved
_U64 = struct.Struct("<Q")
_BATCH_FIELDS = struct.Struct("<QQQQQ")  # partition, base_offset, base_timestamp, origin_timestamp, batch_length
_HEADER_KINDS = {bytes: 1, str: 2}


class SendRequest(NamedTuple):
    """One SendMessages request body, ready but for the request header the SDK adds."""

    partition: int  # 0-based Iggy partition id
    count: int  # messages in it
    body: bytes


@dataclass(frozen=True)
class PartitionFrames:
    """One partition's share of a batch, ready for the wire (offset deltas 0..count-1)."""

    partition: int
    count: int
    frames: bytes
    checksums: bytes  # count × 8 bytes: each frame's checksum, which the batch checksum covers


TXN_INDEX = "txn_index"  # a CDC change's position in its transaction: filled in from its id (below)
POSITION_MASK = (1 << 48) - 1  # a CDC id's position in its transaction


def encode_user_headers(headers: Mapping[str, str | bytes]) -> bytes | tuple[bytes, bytes]:
    """A headers dict as the SDK sends it: keys sorted, each key and value typed and sized.

    A dict whose ``txn_index`` is ``""`` is shared by the changes of one transaction, table and
    operation (CDC), each with its own position: it is encoded as the bytes before and after
    that key, and each message's ``txn_index`` is its id's low 48 bits (the change's position
    in its transaction, ``pgsource.encode.ids.cdc_message_id``), put between them per message
    (``_txn_indexed``): the same bytes as a dict holding the number, without a dict per message.
    """
    if headers.get(TXN_INDEX) == "":
        keys = sorted(key for key in headers if key != TXN_INDEX)
        before = encode_user_headers({key: headers[key] for key in keys if key < TXN_INDEX})
        after = encode_user_headers({key: headers[key] for key in keys if key > TXN_INDEX})
        return before, after
    out = bytearray()
    for key in sorted(headers):
        value = headers[key]
        kind = _HEADER_KINDS.get(type(value))
        if kind is None:
            raise TypeError(f"user header {key!r}: {type(value).__name__} values are not supported (str or bytes)")
        raw_key = key.encode()
        raw_value = value.encode() if kind == 2 else value
        if not (0 < len(raw_key) <= MAX_HEADER_FIELD and 0 < len(raw_value) <= MAX_HEADER_FIELD):
            raise ValueError(f"user header {key!r}: keys and values must have 1 to {MAX_HEADER_FIELD} bytes")
        out += struct.pack("<BI", 2, len(raw_key)) + raw_key + struct.pack("<BI", kind, len(raw_value)) + raw_value
    return bytes(out)


def _txn_indexed(parts: tuple[bytes, bytes], message_id: int) -> bytes:
    value = str(message_id & POSITION_MASK).encode()
    return parts[0] + struct.pack("<BI", 2, len(TXN_INDEX)) + TXN_INDEX.encode() + struct.pack("<BI", 2, len(value)) + value + parts[1]


def encode_frames(
    ids: Sequence[int], payloads: Sequence[str | bytes], headers: Sequence[Mapping | None] | None = None
) -> tuple[bytes, bytes]:
    """(frames, checksums) of messages numbered 0..n-1; str payloads are sent as UTF-8.

    A headers dict shared by many messages (CDC shares one per transaction, table and
    operation) is encoded once.
    """
    if compiled is not None:
        return compiled.encode_frames(_as_list(ids), _as_list(payloads), None if headers is None else _as_list(headers),
                                      encode_user_headers)
    return encode_frames_python(ids, payloads, headers)


def _as_list(items: Sequence) -> list:
    return items if type(items) is list else list(items)


def encode_frames_python(
    ids: Sequence[int], payloads: Sequence[str | bytes], headers: Sequence[Mapping | None] | None = None
) -> tuple[bytes, bytes]:
    """The pure-Python :func:`encode_frames` (the reference the C twin is tested against)."""
    parts: list[bytes] = []
    sums: list[bytes] = []
    add, add_sum = parts.append, sums.append
    pack, pack_u64, checksum = _FRAME_TAIL.pack, _U64.pack, xxh3_64_intdigest
    encoded: dict[int, bytes] = {}
    header_bytes = b""
    for delta, message_id in enumerate(ids):
        payload = payloads[delta]
        if type(payload) is str:
            payload = payload.encode()
        elif not isinstance(payload, bytes):
            raise TypeError(f"payload must be str or bytes, not {type(payload).__name__}")
        if not 0 < len(payload) <= MAX_PAYLOAD:
            raise ValueError(f"message {delta}: payload of {len(payload)} bytes; Iggy accepts 1 to {MAX_PAYLOAD}")
        if headers is not None:
            header = headers[delta]
            if header:
                header_bytes = encoded.get(id(header))
                if header_bytes is None:
                    header_bytes = encoded[id(header)] = encode_user_headers(header)
                if type(header_bytes) is tuple:
                    header_bytes = _txn_indexed(header_bytes, message_id)
            else:
                header_bytes = b""
        if not 0 <= message_id < 1 << 128:
            raise OverflowError(f"message {delta}: id {message_id} is not an unsigned 128-bit integer")
        tail = pack(message_id & _LOW64, message_id >> 64, delta, 0, len(header_bytes), len(payload), 0)
        tail += payload + header_bytes
        digest = pack_u64(checksum(tail))
        add(digest)
        add(tail)
        add_sum(digest)
    return b"".join(parts), b"".join(sums)


def encode_partition_frames(
    ids: Sequence[int],
    partitions: Sequence[int],
    payloads: Sequence[str | bytes],
    headers: Sequence[Mapping | None] | None = None,
    where: str = "a batch",
) -> list[PartitionFrames]:
    """A batch split by partition, order kept within each, every part encoded for the wire.

    A message Iggy would refuse (empty or over 64 MB, a header field over 255 bytes) is a
    ``SourceError`` naming ``where`` (the table) and the message id: resending could never help.
    """
    try:
        return _split_and_encode(ids, partitions, payloads, headers)
    except (ValueError, OverflowError) as exc:
        sizes = (len(p.encode() if isinstance(p, str) else p) for p in payloads)
        bad = next(((i, n) for i, n in enumerate(sizes) if not 0 < n <= MAX_PAYLOAD), None)
        detail = str(exc) if bad is None else (
            f"message id {ids[bad[0]]:#x}: payload of {bad[1]} bytes; Iggy accepts 1 to {MAX_PAYLOAD:,}"
        )
        raise SourceError(f"{where}: {detail}") from None


def _split_and_encode(ids, partitions, payloads, headers) -> list[PartitionFrames]:
    if not ids:
        return []
    first = partitions[0]
    if partitions.count(first) == len(partitions):
        return [PartitionFrames(first, len(ids), *encode_frames(ids, payloads, headers))]
    groups: dict[int, list[int]] = {}
    for index, partition in enumerate(partitions):
        groups.setdefault(partition, []).append(index)
    out = []
    for partition, indexes in groups.items():
        chosen_headers = None if headers is None else [headers[i] for i in indexes]
        frames, sums = encode_frames([ids[i] for i in indexes], [payloads[i] for i in indexes], chosen_headers)
        out.append(PartitionFrames(partition, len(indexes), frames, sums))
    return out


def batch_checksum(header: bytes | bytearray | memoryview, frame_checksums: bytes) -> int:
    """XXH3-64 over a batch header's partition, base_offset, base_timestamp, origin_timestamp,
    batch_length and message_count, then every frame's 8-byte checksum (the stand-in checks it)."""
    return xxh3_64_intdigest(b"".join([header[0:40], header[48:52], frame_checksums]))


def _identifier(name: str) -> bytes:
    raw = name.encode()
    return bytes((2, len(raw))) + raw


def encode_send_request(stream: str, topic: str, part: PartitionFrames, origin_timestamp: int) -> bytes:
    """The body of a SendMessages request: metadata, the 256-byte batch header, the frames.

    ``origin_timestamp`` is µs since the epoch (the SDK stamps the time of sending);
    partition, base offset and base timestamp stay 0 for the server to fill.
    """
    return encode_request_prefix(stream, topic, part, origin_timestamp) + part.frames


def encode_send_requests(stream: str, topic: str, parts: Sequence[PartitionFrames], origin_timestamp: int) -> list[SendRequest]:
    """Every request a batch needs: one per partition, more where a partition's frames exceed what
    one request may carry (``split_partition_frames``; its ``ValueError`` for a message too big
    for any request)."""
    return [SendRequest(piece.partition, piece.count, encode_send_request(stream, topic, piece, origin_timestamp))
            for part in parts for piece in split_partition_frames(part)]


def encode_request_prefix(stream: str, topic: str, part: PartitionFrames, origin_timestamp: int) -> bytes:
    """What goes before ``part.frames`` in its SendMessages body (a few hundred bytes): the batch's
    builder (``pgsource/pipeline/block.py``) copies the frames once, straight behind it."""
    meta = _identifier(stream) + _identifier(topic) + struct.pack("<BBII", 2, 4, part.partition, part.count)
    header = bytearray(BATCH_HEADER_SIZE)
    _BATCH_FIELDS.pack_into(header, 0, 0, 0, 0, origin_timestamp, BATCH_HEADER_SIZE + len(part.frames))
    struct.pack_into("<I", header, 48, part.count)
    _U64.pack_into(header, 40, batch_checksum(header, part.checksums))
    return b"".join((struct.pack("<I", len(meta)), meta, header))


def split_partition_frames(part: PartitionFrames, max_bytes: int = MAX_REQUEST_FRAMES_BYTES) -> list[PartitionFrames]:
    """``part`` as requests of at most ``max_bytes`` of frames each, order kept.

    A batch of wide rows can exceed what one request may carry (the server drops the
    connection, so re-sending the same request would fail for ever). The common case, a
    part that fits, is returned as it is; otherwise the frames are cut at frame
    boundaries and each piece is numbered from offset delta 0 again (its frames'
    checksums recomputed), as the server expects of a batch.
    """
    if len(part.frames) <= max_bytes:
        return [part]
    frames = memoryview(part.frames)
    pieces: list[PartitionFrames] = []
    chunk: list[bytes] = []
    sums: list[bytes] = []
    size = pos = 0
    while pos < len(frames):
        headers_len, payload_len = _FRAME_SIZES.unpack_from(frames, pos + 32)
        end = pos + FRAME_HEADER_SIZE + headers_len + payload_len
        if end - pos > max_bytes:
            raise ValueError(f"one message of {end - pos} bytes cannot fit in a request of {max_bytes} bytes")
        if size + end - pos > max_bytes:
            pieces.append(PartitionFrames(part.partition, len(chunk), b"".join(chunk), b"".join(sums)))
            chunk, sums, size = [], [], 0
        frame = bytearray(frames[pos:end])
        struct.pack_into("<I", frame, 24, len(chunk))  # offset_delta within its piece
        digest = _U64.pack(xxh3_64_intdigest(memoryview(frame)[8:]))
        frame[0:8] = digest
        chunk.append(bytes(frame))
        sums.append(digest)
        size += end - pos
        pos = end
    if chunk:
        pieces.append(PartitionFrames(part.partition, len(chunk), b"".join(chunk), b"".join(sums)))
    return pieces
