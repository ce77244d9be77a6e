"""The stand-in's administration of streams, topics and partitions (the requests that create, delete, purge)."""

from __future__ import annotations

import struct

from . import wire
from .session import ConnectionState, Context, Rejected

# Create-topic option keys: the server's catalog (core/common/src/types/options) plus the two the
# apache-iggy 0.9.0 wheel always sends, which the released 0.9.0 server accepts (the 2026-08-21
# snapshot server refuses them with UnsupportedOptionKey; see tests/real/README.md).
TOPIC_OPTION_DEFAULTS = {
    "compression_algorithm": (2, b"none"),
    "enforce_fsync": (3, b"\x00"),
    "max_topic_size": (12, (wire.U64_MAX).to_bytes(8, "little")),
    "message_expiry": (12, (wire.U64_MAX).to_bytes(8, "little")),
    "messages_required_to_save": (11, (1024).to_bytes(4, "little")),
    "preallocate_segments": (3, b"\x00"),
    "segment_size": (12, (1 << 30).to_bytes(8, "little")),
    "size_of_messages_required_to_save": (12, (1 << 20).to_bytes(8, "little")),
}
WHEEL_TOPIC_OPTIONS = frozenset({"durability", "consumer_offset_durability"})


def _create_stream(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    name, pos = wire.decode_name(body, 0)
    with ctx.storage.lock:
        try:
            stream = ctx.storage.create_stream(name, bytes(body[pos:]))
        except wire.WireError as error:
            raise Rejected(error.code) from None
        return wire.encode_result_ok(stream.encode_header())


def _delete_stream(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    ident, _ = wire.decode_identifier(body, 0)
    with ctx.storage.lock:
        ctx.storage.delete_stream(ident)
    return wire.encode_result_ok()


def _purge_stream(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    ident, _ = wire.decode_identifier(body, 0)
    with ctx.storage.lock:
        ctx.storage.purge(ident)
    return wire.encode_result_ok()


def _create_topic(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    stream_ident, pos = wire.decode_identifier(body, 0)
    partitions = wire.read_u32(body, pos)
    name, pos = wire.decode_name(body, pos + 4)
    options = bytes(body[pos:])
    keys = _option_keys(options)
    accepted = TOPIC_OPTION_DEFAULTS.keys() | (WHEEL_TOPIC_OPTIONS if ctx.accept_wheel_topic_options else set())
    unknown = [k for k in keys if k not in accepted]
    if unknown:  # refused before consensus, through the reply status
        raise wire.WireError(wire.ERR_UNSUPPORTED_OPTION_KEY, f"unsupported option key {unknown[0]!r}")
    derived = b"".join(
        _typed(2, key.encode()) + _typed(kind, value)
        for key, (kind, value) in sorted(TOPIC_OPTION_DEFAULTS.items()) if key not in keys
    )
    with ctx.storage.lock:
        try:
            topic = ctx.storage.create_topic(stream_ident, name, partitions, options, derived)
        except wire.WireError as error:
            raise Rejected(error.code) from None
        for key, value in _u64_options(options).items():  # retention given at creation shows in the header
            if key == "message_expiry":
                topic.message_expiry = value
            elif key == "max_topic_size":
                topic.max_size = value
        compression = _string_options(options).get("compression_algorithm", "none")
        topic.compression = wire.COMPRESSION_CODES.get(compression, wire.COMPRESSION_NONE)
        return wire.encode_result_ok(topic.encode_details(segments=0))  # no segment yet in the create reply


def _option_keys(options: bytes) -> list[str]:
    """The keys of ``[kind u8][len u32][bytes]`` key/value pairs (keys are strings)."""
    keys, pos, index = [], 0, 0
    while pos < len(options):
        length = wire.read_u32(memoryview(options), pos + 1)
        if index % 2 == 0:
            keys.append(options[pos + 5 : pos + 5 + length].decode("utf-8"))
        pos += 5 + length
        index += 1
    return keys


def _u64_options(options: bytes) -> dict[str, int]:
    """Options whose value is a u64 (kind 12), by key."""
    return {key: int.from_bytes(raw, "little") for key, kind, raw in _options(options) if kind == 12 and len(raw) == 8}


def _string_options(options: bytes) -> dict[str, str]:
    """Options whose value is a string (kind 2), by key."""
    return {key: raw.decode("utf-8", "replace") for key, kind, raw in _options(options) if kind == 2}


def _options(options: bytes) -> list[tuple[str, int, bytes]]:
    """(key, value kind, value bytes) of ``[kind u8][len u32][bytes]`` key/value pairs."""
    out, pos, key = [], 0, None
    view = memoryview(options)
    while pos < len(options):
        kind, length = options[pos], wire.read_u32(view, pos + 1)
        raw = options[pos + 5 : pos + 5 + length]
        if key is None:
            key = raw.decode("utf-8")
        else:
            out.append((key, kind, raw))
            key = None
        pos += 5 + length
    return out


def _typed(kind: int, raw: bytes) -> bytes:
    return bytes((kind,)) + struct.pack("<I", len(raw)) + raw


def _stream_topic(body: memoryview) -> tuple[int | str, int | str, int]:
    stream_ident, pos = wire.decode_identifier(body, 0)
    topic_ident, pos = wire.decode_identifier(body, pos)
    return stream_ident, topic_ident, pos


def _delete_topic(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    stream_ident, topic_ident, _ = _stream_topic(body)
    with ctx.storage.lock:
        ctx.storage.delete_topic(stream_ident, topic_ident)
    return wire.encode_result_ok()


def _purge_topic(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    stream_ident, topic_ident, _ = _stream_topic(body)
    with ctx.storage.lock:
        ctx.storage.purge(stream_ident, topic_ident)
    return wire.encode_result_ok()


def _topic_and_count(ctx: Context, body: memoryview):
    """``[stream][topic][count u32]``: the topic (under the storage's lock) and the count."""
    stream_ident, topic_ident, pos = _stream_topic(body)
    _, topic = ctx.storage.topic(stream_ident, topic_ident)
    return topic, wire.read_u32(body, pos)


def _create_partitions(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    with ctx.storage.lock:
        topic, count = _topic_and_count(ctx, body)
        topic.add_partitions(count)
    return wire.encode_result_ok()


def _delete_partitions(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    with ctx.storage.lock:
        topic, count = _topic_and_count(ctx, body)
        if count == 0 or count > len(topic.partitions):
            raise wire.WireError(wire.ERR_PARTITION_NOT_FOUND, "not that many partitions")
        del topic.partitions[-count:]
    return wire.encode_result_ok()


TOPIC_WRITES = {
    wire.OP_CREATE_STREAM: _create_stream,
    wire.OP_DELETE_STREAM: _delete_stream,
    wire.OP_PURGE_STREAM: _purge_stream,
    wire.OP_CREATE_TOPIC: _create_topic,
    wire.OP_DELETE_TOPIC: _delete_topic,
    wire.OP_PURGE_TOPIC: _purge_topic,
    wire.OP_CREATE_PARTITIONS: _create_partitions,
    wire.OP_DELETE_PARTITIONS: _delete_partitions,
}
