"""Message batches as the stand-in keeps them: one blob per received batch plus a frame index.

A stand-in for tests and local use, not an Iggy server.

A batch on the wire (and in storage) is a 256-byte batch header followed by frames;
a frame is a 48-byte header (``checksum u64, id u128, offset_delta u32,
timestamp_delta u32, headers_len u32, payload_len u32, reserved u64``), the payload,
then the user headers. The frame checksum is XXH3-64 of the frame from byte 8 to its
end; the batch checksum is XXH3-64 of the header's partition, base_offset,
base_timestamp, origin_timestamp, batch_length (u64 each) and message_count (u32),
then every frame's 8-byte checksum.
"""

from __future__ import annotations

import struct
from array import array

from xxhash import xxh3_64_intdigest

from pgsource.encode.frames import batch_checksum

from . import wire

try:  # pgsource's C frame walker; the stand-in works without it, only slower
    from pgsource.encode import _frames as compiled
except ImportError:
    compiled = None

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DELTAS = struct.Struct("<IIII")  # offset_delta, timestamp_delta, headers_len, payload_len at byte 24
_FRAME = struct.Struct("<Q16sIIII8x")
_INDEX_ERRORS = (wire.ERR_INVALID_FORMAT, wire.ERR_INVALID_MESSAGES_COUNT, wire.ERR_INVALID_MESSAGE_CHECKSUM)


def index_and_verify(batch: memoryview) -> tuple[array, bytes]:
    """Check one received batch; return its frame starts (plus an end sentinel) and checksums.

    ``batch`` is the whole batch: header and frames. ``checksums`` are the frames' 8-byte
    checksums back to back. Raises :class:`wire.WireError` with the Iggy code for a bad
    length, a bad frame checksum or a bad batch checksum. The frame walk runs in C when
    pgsource's extension is built (the stand-in shares the benchmark's two cores), else
    in :func:`index_frames_python`; both are tested on the same corrupted batches.
    """
    if compiled is not None:
        found = compiled.index_frames(batch)
        if type(found[0]) is int:
            raise wire.WireError(_INDEX_ERRORS[found[0]], found[1])
        starts = array("I")
        starts.frombytes(found[0])
        checksums = found[1]
    else:
        starts, checksums = index_frames_python(batch)
    if batch_checksum(batch, checksums) != _U64.unpack_from(batch, wire.BATCH_CHECKSUM_AT)[0]:
        raise wire.WireError(wire.ERR_INVALID_BATCH_CHECKSUM, "batch checksum mismatch")
    return starts, checksums


def index_frames_python(batch: memoryview) -> tuple[array, bytes]:
    """The frame walk of :func:`index_and_verify` in Python."""
    total = len(batch)
    if total < wire.BATCH_HEADER_SIZE:
        raise wire.WireError(wire.ERR_INVALID_FORMAT, "batch shorter than its header")
    batch_length = _U64.unpack_from(batch, 32)[0]
    count = _U32.unpack_from(batch, wire.BATCH_COUNT_AT)[0]
    if batch_length != total or count == 0:
        raise wire.WireError(wire.ERR_INVALID_MESSAGES_COUNT, "batch length or count mismatch")
    starts = array("I")
    append = starts.append
    unpack_deltas = _DELTAS.unpack_from
    unpack_u64 = _U64.unpack_from
    pos = wire.BATCH_HEADER_SIZE
    checksums = []
    keep = checksums.append
    while pos < total:
        if pos + wire.FRAME_HEADER_SIZE > total:
            raise wire.WireError(wire.ERR_INVALID_FORMAT, "truncated frame header")
        delta, _, headers_len, payload_len = unpack_deltas(batch, pos + 24)
        if delta != len(starts):
            raise wire.WireError(wire.ERR_INVALID_FORMAT, "offset_delta must count frames from 0")
        if unpack_u64(batch, pos + 40)[0]:
            raise wire.WireError(wire.ERR_INVALID_FORMAT, "reserved bytes of a frame must be zero")
        end = pos + wire.FRAME_HEADER_SIZE + headers_len + payload_len
        if end > total:
            raise wire.WireError(wire.ERR_INVALID_FORMAT, "truncated frame")
        checksum = batch[pos : pos + 8]
        if xxh3_64_intdigest(batch[pos + 8 : end]) != unpack_u64(checksum)[0]:
            raise wire.WireError(wire.ERR_INVALID_MESSAGE_CHECKSUM, "frame checksum mismatch")
        keep(checksum)
        append(pos)
        pos = end
    if len(starts) != count:
        raise wire.WireError(wire.ERR_INVALID_MESSAGES_COUNT, "frames do not tile message_count")
    append(total)
    return starts, b"".join(checksums)


def stamp(
    batch: memoryview, checksums: bytes, partition_id: int, base_offset: int, base_timestamp: int
) -> bytearray:
    """Copy a verified batch into storage form: server fields filled, batch checksum resealed.

    ``checksums`` are the frames' checksum slices returned by :func:`index_and_verify`.
    """
    stored = bytearray(batch)
    struct.pack_into("<QQQ", stored, 0, partition_id, base_offset, base_timestamp)
    _U64.pack_into(stored, wire.BATCH_CHECKSUM_AT, batch_checksum(stored, checksums))
    return stored


def slice_batch(stored: bytearray, starts: array, first: int, stop: int) -> bytes | bytearray:
    """Frames ``first`` .. ``stop``-1 of a stored batch as a self-contained batch.

    Frames keep their offset_delta, so the header keeps the base offset; only
    batch_length, message_count and the batch checksum change.
    """
    if first == 0 and stop == len(starts) - 1:
        return stored
    lo, hi = starts[first], starts[stop]
    header = bytearray(stored[: wire.BATCH_HEADER_SIZE])
    _U64.pack_into(header, 32, wire.BATCH_HEADER_SIZE + hi - lo)
    _U32.pack_into(header, wire.BATCH_COUNT_AT, stop - first)
    sums = b"".join([stored[p : p + 8] for p in starts[first:stop]])
    _U64.pack_into(header, wire.BATCH_CHECKSUM_AT, batch_checksum(header, sums))
    return header + stored[lo:hi]


def decode_frames(stored: bytes | bytearray, starts: array):
    """Yield ``(offset, id, timestamp, origin_timestamp, payload, raw_headers)`` per frame."""
    base_offset, base_timestamp, origin = struct.unpack_from("<QQQ", stored, 8)
    for pos in starts[:-1]:
        _, raw_id, delta, ts_delta, headers_len, payload_len = _FRAME.unpack_from(stored, pos)
        body = pos + wire.FRAME_HEADER_SIZE
        payload = bytes(stored[body : body + payload_len])
        headers = bytes(stored[body + payload_len : body + payload_len + headers_len])
        yield (
            base_offset + delta,
            int.from_bytes(raw_id, "little"),
            base_timestamp,
            origin + ts_delta,
            payload,
            headers,
        )
