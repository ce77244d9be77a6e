"""Byte-level codec of the Iggy 0.9 binary protocol, as far as the stand-in needs it.

A stand-in for tests and local use, not an Iggy server. Layouts were read from the
public Iggy sources (``core/binary_protocol``) and checked against the real
``apache-iggy==0.9.0`` wheel; see ``/work/shared/iggy-wire-0.9.md``.

Every frame, both directions, is a 256-byte consensus header then a body; all
integers are little-endian.
"""

from __future__ import annotations

import struct

HEADER_SIZE = 256

# Header fields (request and reply share the first 128 bytes).
SIZE_AT = 48
COMMAND_AT = 60
REQ_CLIENT_AT = 128
REQ_CHECKSUM_AT = 144
REQ_REQUEST_AT = 168
REQ_OPERATION_AT = 176
REQ_SESSION_AT = 184
REQ_CODE_AT = 196  # legacy command code, only for operation NON_REPLICATED
REPLY_CHECKSUM_AT = 128
REPLY_CLIENT_AT = 160
REPLY_REQUEST_AT = 200
REPLY_OPERATION_AT = 208
REPLY_STATUS_AT = 216

COMMAND_REQUEST = 5
COMMAND_REPLY = 8
COMMAND_EVICTION = 13
EVICTION_REASON_AT = 255
EVICTION_INVALID_CREDENTIALS = 9
MAX_FRAME = 64 * 1024 * 1024  # a frame (header included) over this closes the connection

# Operations (byte 176 of a request).
OP_REGISTER = 1
OP_NON_REPLICATED = 2
OP_LOGOUT = 3
OP_CREATE_STREAM = 128
OP_UPDATE_STREAM = 129
OP_DELETE_STREAM = 130
OP_PURGE_STREAM = 131
OP_CREATE_TOPIC = 132
OP_CREATE_TOPIC_WITH_ASSIGNMENTS = 64  # the operation of the server's committed reply to CreateTopic
OP_UPDATE_TOPIC = 133
OP_DELETE_TOPIC = 134
OP_PURGE_TOPIC = 135
OP_CREATE_PARTITIONS = 136
OP_DELETE_PARTITIONS = 137
OP_SEND_MESSAGES = 160
OP_STORE_CONSUMER_OFFSET = 161
OP_DELETE_CONSUMER_OFFSET = 162

# Legacy command codes carried by NON_REPLICATED requests.
CODE_PING = 1
CODE_GET_CLUSTER_METADATA = 12
CODE_POLL_MESSAGES = 100
CODE_GET_CONSUMER_OFFSET = 120
CODE_GET_STREAM = 200
CODE_GET_STREAMS = 201
CODE_GET_TOPIC = 300
CODE_GET_TOPICS = 301

# Iggy error codes (core/common/src/error/iggy_error.rs).
ERR_ERROR = 1
ERR_RESOURCE_NOT_FOUND = 20  # SendMessages to a missing stream, topic or partition
ERR_INVALID_COMMAND = 3
ERR_INVALID_FORMAT = 4
ERR_FEATURE_UNAVAILABLE = 5
ERR_INVALID_IDENTIFIER = 6
ERR_UNAUTHENTICATED = 40
ERR_INVALID_CREDENTIALS = 42
ERR_STREAM_ID_NOT_FOUND = 1009
ERR_STREAM_NAME_NOT_FOUND = 1010
ERR_STREAM_NAME_EXISTS = 1012
ERR_TOPIC_ID_NOT_FOUND = 2010
ERR_TOPIC_NAME_NOT_FOUND = 2011
ERR_TOPIC_NAME_EXISTS = 2013
ERR_PARTITION_NOT_FOUND = 3007
ERR_CONSUMER_OFFSET_NOT_FOUND = 3021
ERR_INVALID_MESSAGES_COUNT = 4009
ERR_INVALID_MESSAGE_CHECKSUM = 4027
ERR_INVALID_BATCH_CHECKSUM = 4039
ERR_UNSUPPORTED_OPTION_KEY = 4041

# Operations whose reply body starts with a result section.
RESULT_FRAMED = frozenset(range(128, 150)) | {OP_STORE_CONSUMER_OFFSET, OP_DELETE_CONSUMER_OFFSET}

# Message batches.
BATCH_HEADER_SIZE = 256
FRAME_HEADER_SIZE = 48
BATCH_BASE_OFFSET_AT = 8
BATCH_BASE_TIMESTAMP_AT = 16
BATCH_CHECKSUM_AT = 40
BATCH_COUNT_AT = 48

# Polling strategies.
POLL_OFFSET, POLL_TIMESTAMP, POLL_FIRST, POLL_LAST, POLL_NEXT = 1, 2, 3, 4, 5

COMPRESSION_NONE = 1
COMPRESSION_CODES = {"none": COMPRESSION_NONE, "gzip": 2}  # the topic header's compression byte
U64_MAX = (1 << 64) - 1

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_REQ_HEAD = struct.Struct("<I")  # size
_STREAM_HEAD = struct.Struct("<IQIQQ")
_TOPIC_HEAD = struct.Struct("<IQIQBQQQ")
_PARTITION = struct.Struct("<IQIQQQ")
_OFFSET_REPLY = struct.Struct("<IQQ")
_POLL_HEAD = struct.Struct("<IQI")
_CONFIRMATION = struct.Struct("<IIIQ")


class WireError(Exception):
    """A request the stand-in cannot decode; carries the Iggy error code to reply with."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"iggy error {code}")
        self.code = code


def encode_reply(
    request_header: bytes | memoryview, body: bytes = b"", status: int = 0, operation: int | None = None
) -> bytes:
    """Build a reply frame answering ``request_header`` (its 256 bytes); ``operation``
    overrides the echoed one (the server answers a committed CreateTopic as 64)."""
    header = bytearray(HEADER_SIZE)
    struct.pack_into("<I", header, SIZE_AT, HEADER_SIZE + len(body))
    header[COMMAND_AT] = COMMAND_REPLY
    header[REPLY_CHECKSUM_AT : REPLY_CHECKSUM_AT + 16] = request_header[
        REQ_CHECKSUM_AT : REQ_CHECKSUM_AT + 16
    ]
    header[REPLY_CLIENT_AT : REPLY_CLIENT_AT + 16] = request_header[REQ_CLIENT_AT : REQ_CLIENT_AT + 16]
    header[REPLY_REQUEST_AT : REPLY_REQUEST_AT + 8] = request_header[REQ_REQUEST_AT : REQ_REQUEST_AT + 8]
    header[REPLY_OPERATION_AT] = request_header[REQ_OPERATION_AT] if operation is None else operation
    struct.pack_into("<I", header, REPLY_STATUS_AT, status)
    if body:
        return bytes(header) + body
    return bytes(header)


def encode_eviction(request_header: bytes | memoryview, reason: int) -> bytes:
    """An Eviction frame (no body): the server's answer to a login it refuses; the
    connection stays open and unauthenticated."""
    header = bytearray(HEADER_SIZE)
    struct.pack_into("<I", header, SIZE_AT, HEADER_SIZE)
    header[COMMAND_AT] = COMMAND_EVICTION
    header[REQ_CLIENT_AT : REQ_CLIENT_AT + 16] = request_header[REQ_CLIENT_AT : REQ_CLIENT_AT + 16]
    header[EVICTION_REASON_AT] = reason
    return bytes(header)


def encode_result_ok(payload: bytes = b"") -> bytes:
    """A committed result section with no rejection, followed by ``payload``."""
    return b"\x00\x00\x00\x00" + payload


def encode_result_rejection(code: int) -> bytes:
    """A committed result section rejecting sub-operation 0 with ``code``."""
    return struct.pack("<III", 1, 0, code)


# -- primitives ---------------------------------------------------------------


def decode_identifier(buf: memoryview, pos: int) -> tuple[int | str, int]:
    """``[kind u8: 1 numeric, 2 string][len u8][value]`` -> (id or name, next position)."""
    if pos + 2 > len(buf):
        raise WireError(ERR_INVALID_IDENTIFIER, "truncated identifier")
    kind, length = buf[pos], buf[pos + 1]
    end = pos + 2 + length
    if end > len(buf) or length == 0:
        raise WireError(ERR_INVALID_IDENTIFIER, "bad identifier length")
    if kind == 1:
        if length != 4:
            raise WireError(ERR_INVALID_IDENTIFIER, "numeric identifier must be 4 bytes")
        return _U32.unpack_from(buf, pos + 2)[0], end
    if kind == 2:
        return bytes(buf[pos + 2 : end]).decode("utf-8"), end
    raise WireError(ERR_INVALID_IDENTIFIER, f"identifier kind {kind}")


def decode_consumer(buf: memoryview, pos: int) -> tuple[tuple[int, bytes], int]:
    """``[kind u8][identifier]`` -> ((kind, identifier bytes as a key), next position)."""
    kind = buf[pos]
    _, end = decode_identifier(buf, pos + 1)
    return (kind, bytes(buf[pos + 1 : end])), end


def decode_name(buf: memoryview, pos: int) -> tuple[str, int]:
    """``[len u8][utf8]`` -> (name, next position)."""
    length = buf[pos]
    end = pos + 1 + length
    if length == 0 or end > len(buf):
        raise WireError(ERR_INVALID_FORMAT, "bad name")
    return bytes(buf[pos + 1 : end]).decode("utf-8"), end


def encode_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    return bytes((len(raw),)) + raw


def read_u8(buf: memoryview, pos: int) -> int:
    return _U8.unpack_from(buf, pos)[0]


def read_u32(buf: memoryview, pos: int) -> int:
    return _U32.unpack_from(buf, pos)[0]


def read_u64(buf: memoryview, pos: int) -> int:
    return _U64.unpack_from(buf, pos)[0]


# -- typed key/value blocks (user headers and options) --------------------------

_SCALARS = {
    4: "<b",
    5: "<h",
    6: "<i",
    7: "<q",
    9: "<B",
    10: "<H",
    11: "<I",
    12: "<Q",
    14: "<f",
    15: "<d",
}


def decode_typed_value(kind: int, raw: bytes) -> bytes | str | bool | int | float:
    """One header field as a Python value: raw -> bytes, string -> str, numbers, bool."""
    if kind == 1:
        return raw
    if kind == 2:
        return raw.decode("utf-8")
    if kind == 3:
        return raw != b"\x00"
    if kind == 8:
        return int.from_bytes(raw, "little", signed=True)
    if kind == 13:
        return int.from_bytes(raw, "little", signed=False)
    fmt = _SCALARS.get(kind)
    if fmt is None or struct.calcsize(fmt) != len(raw):
        return raw
    return struct.unpack(fmt, raw)[0]


def decode_typed_pairs(raw: bytes) -> dict:
    """Decode repeated ``[kind u8][len u32][bytes]`` key/value pairs into a dict."""
    out: dict = {}
    pos, end = 0, len(raw)
    fields = []
    while pos < end:
        kind = raw[pos]
        length = _U32.unpack_from(raw, pos + 1)[0]
        fields.append(decode_typed_value(kind, raw[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    for i in range(0, len(fields) - 1, 2):
        out[fields[i]] = fields[i + 1]
    return out


def validate_typed_pairs(raw: bytes | memoryview) -> bool:
    """True when ``raw`` tiles exactly into an even number of well-formed fields."""
    pos, end, count = 0, len(raw), 0
    while pos < end:
        if pos + 5 > end or raw[pos] == 0:
            return False
        length = _U32.unpack_from(raw, pos + 1)[0]
        if length == 0 or length > 255:
            return False
        pos += 5 + length
        count += 1
    return pos == end and count % 2 == 0


def encode_string_pairs(pairs: dict[str, str]) -> bytes:
    """String-kind key/value pairs, the form the server uses for topic options."""
    out = bytearray()
    for key, value in pairs.items():
        for text in (key, value):
            raw = text.encode("utf-8")
            out += b"\x02" + _U32.pack(len(raw)) + raw
    return bytes(out)


# -- records -------------------------------------------------------------------


def encode_stream_header(
    stream_id: int, created_at: int, topics: int, size: int, messages: int, name: str, options: bytes
) -> bytes:
    return (
        _STREAM_HEAD.pack(stream_id, created_at, topics, size, messages)
        + encode_name(name)
        + _U32.pack(len(options))
        + options
    )


def encode_topic_header(
    topic_id: int,
    created_at: int,
    partitions: int,
    message_expiry: int,
    max_size: int,
    size: int,
    messages: int,
    name: str,
    options: bytes,
    derived_options: bytes,
    compression: int = COMPRESSION_NONE,
) -> bytes:
    return (
        _TOPIC_HEAD.pack(
            topic_id, created_at, partitions, message_expiry, compression, max_size, size, messages
        )
        + encode_name(name)
        + _U32.pack(len(options))
        + options
        + _U32.pack(len(derived_options))
        + derived_options
    )


def encode_partition(
    partition_id: int, created_at: int, segments: int, current_offset: int, size: int, messages: int
) -> bytes:
    return _PARTITION.pack(partition_id, created_at, segments, current_offset, size, messages)


def encode_offset_reply(partition_id: int, current_offset: int, stored: int) -> bytes:
    return _OFFSET_REPLY.pack(partition_id, current_offset, stored)


def encode_poll_head(partition_id: int, current_offset: int, count: int) -> bytes:
    return _POLL_HEAD.pack(partition_id, current_offset, count)


def encode_confirmations(confirmations: list[tuple[int, int, int, int]]) -> bytes:
    return _U32.pack(len(confirmations)) + b"".join(_CONFIRMATION.pack(*c) for c in confirmations)


def encode_cluster_metadata(name: str, node: str, ip: str, tcp_port: int) -> bytes:
    raw_name, raw_node, raw_ip = name.encode(), node.encode(), ip.encode()
    return (
        _U32.pack(len(raw_name))
        + raw_name
        + _U32.pack(1)
        + _U32.pack(len(raw_node))
        + raw_node
        + _U32.pack(len(raw_ip))
        + raw_ip
        + struct.pack("<HHHHBB", tcp_port, 0, 0, 0, 0, 0)
    )


def encode_login_reply(user_id: int, session: int, protocol: int, server_version: str) -> bytes:
    return struct.pack("<IQI", user_id, session, protocol) + encode_name(server_version)


def frame_size(header: bytes | memoryview) -> int:
    """The size of a frame (header included), read from its header."""
    return struct.unpack_from("<I", header, SIZE_AT)[0]


def request_kind(request: bytes) -> tuple[int, int]:
    """(operation, legacy command code) of a request frame; the code is 0 unless op 2."""
    operation = request[REQ_OPERATION_AT]
    code = read_u32(memoryview(request), REQ_CODE_AT) if operation == OP_NON_REPLICATED else 0
    return operation, code
