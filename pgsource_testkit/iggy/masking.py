"""The transcripts' masking rule (``pgsource_testkit/iggy/transcript.py`` documents it): what of a
reply may differ between the real server and the stand-in, set to zero before they are compared."""

from __future__ import annotations

import struct

from . import wire
from .wire import request_kind

EVICTION = 13

_KEEP_REPLY = ((48, 52), (60, 61), (200, 208), (208, 209), (216, 220))
_KEEP_EVICTION = ((48, 52), (60, 61), (144, 152), (255, 256))


def normalise_reply(request: bytes, reply: bytes) -> bytes:
    """``reply`` with everything the masking rule (module docstring) hides set to zero."""
    out = bytearray(wire.HEADER_SIZE)
    keep = _KEEP_EVICTION if reply[wire.COMMAND_AT] == EVICTION else _KEEP_REPLY
    for start, end in keep:
        out[start:end] = reply[start:end]
    body = bytearray(reply[wire.HEADER_SIZE :])
    if reply[wire.COMMAND_AT] == wire.COMMAND_REPLY and not wire.read_u32(memoryview(reply), wire.REPLY_STATUS_AT):
        try:
            body = _mask_body(request, body)
        except (IndexError, struct.error, ValueError):
            pass  # a body the masks do not understand is compared as it is
    struct.pack_into("<I", out, wire.SIZE_AT, wire.HEADER_SIZE + len(body))  # of the masked body
    return bytes(out) + bytes(body)


def _mask_body(request: bytes, body: bytearray) -> bytearray:
    operation, code = request_kind(request)
    if operation == wire.OP_REGISTER and body[:4] == b"\x00\x00\x00\x00" and len(body) >= 20:
        body[8:16] = bytes(8)  # session
        return body[:20] + wire.encode_name("*")  # server version
    if operation in (wire.OP_CREATE_STREAM, wire.OP_CREATE_TOPIC) and body[:4] == b"\x00\x00\x00\x00":
        mask = _mask_stream_details if operation == wire.OP_CREATE_STREAM else _mask_topic_details
        mask(body, 4)
        return body
    if operation != wire.OP_NON_REPLICATED or not body:
        return body
    if code == wire.CODE_GET_STREAM:
        _mask_stream_details(body, 0)
    elif code == wire.CODE_GET_STREAMS:
        pos = 0
        while pos < len(body):
            pos = _mask_stream_header(body, pos)
    elif code == wire.CODE_GET_TOPIC:
        _mask_topic_details(body, 0)
    elif code == wire.CODE_GET_TOPICS:
        pos = 4
        for _ in range(wire.read_u32(memoryview(body), 0)):
            pos = _mask_topic_header(body, pos)
    elif code == wire.CODE_POLL_MESSAGES:
        _mask_poll(body)
    elif code == wire.CODE_GET_CLUSTER_METADATA:
        return _mask_cluster_metadata(body)
    return body


def _mask_stream_header(body: bytearray, pos: int) -> int:
    body[pos + 4 : pos + 12] = bytes(8)  # created_at
    pos += 32  # id, created_at, topics_count, size, messages_count
    pos += 1 + body[pos]  # name
    return pos + 4 + wire.read_u32(memoryview(body), pos)  # options


def _mask_stream_details(body: bytearray, pos: int) -> None:
    topics = wire.read_u32(memoryview(body), pos + 12)
    pos = _mask_stream_header(body, pos)
    for _ in range(topics):
        pos = _mask_topic_header(body, pos)


def _mask_topic_header(body: bytearray, pos: int) -> int:
    body[pos + 4 : pos + 12] = bytes(8)  # created_at
    pos += 49
    pos += 1 + body[pos]  # name
    pos += 4 + wire.read_u32(memoryview(body), pos)  # options
    return pos + 4 + wire.read_u32(memoryview(body), pos)  # derived options


def _mask_topic_details(body: bytearray, pos: int) -> None:
    partitions = wire.read_u32(memoryview(body), pos + 12)
    pos = _mask_topic_header(body, pos)
    for _ in range(partitions):
        body[pos + 4 : pos + 12] = bytes(8)  # partition created_at
        pos += 40


def _mask_poll(body: bytearray) -> None:
    pos, end = 16, len(body)
    while pos + wire.BATCH_HEADER_SIZE <= end:
        length = struct.unpack_from("<Q", body, pos + 32)[0]
        body[pos + wire.BATCH_BASE_TIMESTAMP_AT : pos + wire.BATCH_BASE_TIMESTAMP_AT + 8] = bytes(8)
        body[pos + wire.BATCH_CHECKSUM_AT : pos + wire.BATCH_CHECKSUM_AT + 8] = bytes(8)
        if length < wire.BATCH_HEADER_SIZE:
            break
        pos += length


def _mask_cluster_metadata(body: bytearray) -> bytearray:
    view = memoryview(body)
    name_len = wire.read_u32(view, 0)
    pos = 4 + name_len
    nodes = wire.read_u32(view, pos)
    out = bytearray(body[: pos + 4])
    pos += 4
    for _ in range(nodes):
        pos += 4 + wire.read_u32(view, pos)  # node name
        pos += 4 + wire.read_u32(view, pos)  # ip
        out += struct.pack("<I", 1) + b"*" + struct.pack("<I", 1) + b"*" + bytes(8) + body[pos + 8 : pos + 10]
        pos += 10
    return out + body[pos:]


