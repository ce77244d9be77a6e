"""Request handlers of the stand-in: one decoded request in, one reply frame out.

A stand-in for tests and local use, not an Iggy server. Only what the pgsource
suite drives through the real ``apache-iggy`` SDK is implemented; anything else is
answered with ``InvalidCommand`` (status 3). Like the server (golden transcripts in
``tests/standin/transcripts``), a SendMessages batch refused at admission (a bad frame
or batch checksum, a message count that does not match, nonzero reserved bytes) gets
no reply at all, and the connection goes on serving later requests.
"""

from __future__ import annotations

import itertools
import struct

from xxhash import xxh3_64_intdigest

from . import batches, wire
from .session import ConnectionState, Context, Credentials, NoReply, Rejected
from .topics import TOPIC_WRITES

__all__ = ["ConnectionState", "Context", "Credentials", "NoReply", "handle", "unknown_frame_reply"]

SERVER_VERSION = "0.9.0"
_sessions = itertools.count(1)


def handle(ctx: Context, conn: ConnectionState, header: memoryview, body: memoryview) -> bytes | None:
    """Answer one request frame (header = its 256 bytes, body = the rest); None: no answer."""
    op = header[wire.REQ_OPERATION_AT]
    try:
        if op == wire.OP_REGISTER:
            reply = _login(ctx, conn, body)
            if reply is None:
                return wire.encode_eviction(header, wire.EVICTION_INVALID_CREDENTIALS)
            return wire.encode_reply(header, wire.encode_result_ok(reply))
        if op == wire.OP_NON_REPLICATED:
            code = wire.read_u32(header, wire.REQ_CODE_AT)
            if code == wire.CODE_PING:
                return wire.encode_reply(header)
            _require_login(conn)
            handler = _READS.get(code)
            if handler is None:
                raise wire.WireError(wire.ERR_INVALID_COMMAND, f"unknown command code {code}")
            return wire.encode_reply(header, handler(ctx, conn, body))
        if op == wire.OP_LOGOUT:
            conn.session = 0
            return wire.encode_reply(header)
        handler = _WRITES.get(op)
        if handler is None:
            raise wire.WireError(wire.ERR_INVALID_COMMAND, f"unknown operation {op}")
        _require_login(conn)
        operation = wire.OP_CREATE_TOPIC_WITH_ASSIGNMENTS if op == wire.OP_CREATE_TOPIC else None
        try:
            return wire.encode_reply(header, handler(ctx, conn, body), operation=operation)
        except Rejected as rejected:  # committed, with a rejection in the result section
            return wire.encode_reply(header, wire.encode_result_rejection(rejected.code), operation=operation)
    except NoReply:
        return None
    except wire.WireError as error:
        return _error_reply(header, op, error.code)
    except (IndexError, struct.error, UnicodeDecodeError, ValueError):
        return _error_reply(header, op, wire.ERR_INVALID_FORMAT)


def unknown_frame_reply(header: memoryview) -> bytes:
    """Reply to a frame that is not a request at all."""
    return wire.encode_reply(header, status=wire.ERR_INVALID_COMMAND)


def _error_reply(header: memoryview, op: int, code: int) -> bytes:
    if op in wire.RESULT_FRAMED and code not in (wire.ERR_UNAUTHENTICATED, wire.ERR_UNSUPPORTED_OPTION_KEY):
        operation = wire.OP_CREATE_TOPIC_WITH_ASSIGNMENTS if op == wire.OP_CREATE_TOPIC else None
        return wire.encode_reply(header, wire.encode_result_rejection(code), operation=operation)
    return wire.encode_reply(header, status=code)


def _require_login(conn: ConnectionState) -> None:
    if not conn.session:
        raise wire.WireError(wire.ERR_UNAUTHENTICATED, "log in first")


def _login(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes | None:
    """The login reply's payload, or None for refused credentials (answered by an Eviction)."""
    protocol = wire.read_u32(body, 0)
    _, pos = wire.decode_name(body, 4)  # sdk name
    _, pos = wire.decode_name(body, pos)  # sdk version
    username, pos = wire.decode_name(body, pos)
    length = body[pos]
    password = bytes(body[pos + 1 : pos + 1 + length]).decode("utf-8")
    if username != ctx.credentials.username or password != ctx.credentials.password:
        conn.session = 0
        return None
    conn.session = next(_sessions)
    return wire.encode_login_reply(0, conn.session, protocol, SERVER_VERSION)


# -- reads (operation NonReplicated) --------------------------------------------


def _cluster_metadata(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    return wire.encode_cluster_metadata("single-node", "iggy-node", ctx.host, ctx.port)  # the server's names


def _get_stream(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    ident, _ = wire.decode_identifier(body, 0)
    with ctx.storage.lock:
        stream = ctx.storage.find_stream(ident)
        return stream.encode_details() if stream else b""


def _get_streams(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    with ctx.storage.lock:
        return b"".join(s.encode_header() for s in ctx.storage.streams.values())


def _get_topic(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    stream_ident, pos = wire.decode_identifier(body, 0)
    topic_ident, _ = wire.decode_identifier(body, pos)
    with ctx.storage.lock:
        try:
            _, topic = ctx.storage.topic(stream_ident, topic_ident)
        except wire.WireError:
            return b""
        return topic.encode_details()


def _get_topics(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    stream_ident, _ = wire.decode_identifier(body, 0)
    with ctx.storage.lock:
        topics = list(ctx.storage.stream(stream_ident).topics.values())
        return struct.pack("<I", len(topics)) + b"".join(t.encode_header() for t in topics)


def _target(ctx: Context, body: memoryview):
    """Decode ``[consumer][stream][topic][has_partition u8][partition u32]``."""
    consumer, pos = wire.decode_consumer(body, 0)
    stream_ident, pos = wire.decode_identifier(body, pos)
    topic_ident, pos = wire.decode_identifier(body, pos)
    has_partition = body[pos]
    partition_id = wire.read_u32(body, pos + 1) if has_partition else 0
    _, topic = ctx.storage.topic(stream_ident, topic_ident)
    return consumer, topic.partition(partition_id), pos + 5


def _poll(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    with ctx.storage.lock:
        consumer, partition, pos = _target(ctx, body)
        strategy = body[pos]
        value, count = struct.unpack_from("<QI", body, pos + 1)
        auto_commit = body[pos + 13]
        if strategy == wire.POLL_OFFSET:
            start = value
        elif strategy == wire.POLL_TIMESTAMP:
            start = partition.offset_at_timestamp(value)
        elif strategy == wire.POLL_FIRST:
            start = 0
        elif strategy == wire.POLL_LAST:
            start = max(partition.next_offset - count, 0)
        elif strategy == wire.POLL_NEXT:
            stored = partition.consumer_offsets.get(consumer)
            start = 0 if stored is None else stored + 1
        else:
            raise wire.WireError(wire.ERR_INVALID_FORMAT, f"polling strategy {strategy}")
        chunks, taken = partition.read(start, count)
        if auto_commit and taken:
            partition.consumer_offsets[consumer] = start + taken - 1
        head = wire.encode_poll_head(partition.id, partition.current_offset, taken)
    return b"".join([head, *chunks])


def _get_consumer_offset(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    with ctx.storage.lock:
        consumer, partition, _ = _target(ctx, body)
        stored = partition.consumer_offsets.get(consumer)
        if stored is None:
            return b""
        return wire.encode_offset_reply(partition.id, partition.current_offset, stored)


_READS = {
    wire.CODE_GET_CLUSTER_METADATA: _cluster_metadata,
    wire.CODE_GET_STREAM: _get_stream,
    wire.CODE_GET_STREAMS: _get_streams,
    wire.CODE_GET_TOPIC: _get_topic,
    wire.CODE_GET_TOPICS: _get_topics,
    wire.CODE_POLL_MESSAGES: _poll,
    wire.CODE_GET_CONSUMER_OFFSET: _get_consumer_offset,
}


# -- writes ------------------------------------------------------------------------


def _send(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    meta_len = wire.read_u32(body, 0)
    stream_ident, pos = wire.decode_identifier(body, 4)
    topic_ident, pos = wire.decode_identifier(body, pos)
    kind, length = body[pos], body[pos + 1]
    key = body[pos + 2 : pos + 2 + length]
    count = wire.read_u32(body, pos + 2 + length)
    batch = body[4 + meta_len :]
    try:  # refused at admission: the server logs and drops the request, no reply
        starts, checksums = batches.index_and_verify(batch)
    except wire.WireError:
        raise NoReply from None
    if len(starts) - 1 != count:
        raise NoReply
    with ctx.storage.lock:
        try:
            stream, topic = ctx.storage.topic(stream_ident, topic_ident)
            partitions = len(topic.partitions)
            if kind == 2:
                partition_id = wire.read_u32(key, 0)
            elif kind == 3:
                partition_id = xxh3_64_intdigest(key) % max(partitions, 1)
            else:
                partition_id = conn.balanced % max(partitions, 1)
                conn.balanced += 1
            partition = topic.partition(partition_id)
        except wire.WireError:  # the server answers every missing target alike
            raise wire.WireError(wire.ERR_RESOURCE_NOT_FOUND, "resource not found") from None
        base_offset = partition.append(batch, starts, checksums)
    if ctx.confirm_without_offsets:
        return wire.encode_confirmations([])
    return wire.encode_confirmations([(stream.id, topic.id, partition_id, base_offset)])


def _store_offset(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    with ctx.storage.lock:
        consumer, partition, pos = _target(ctx, body)
        partition.consumer_offsets[consumer] = wire.read_u64(body, pos)
    return wire.encode_result_ok()


def _delete_offset(ctx: Context, conn: ConnectionState, body: memoryview) -> bytes:
    with ctx.storage.lock:
        consumer, partition, _ = _target(ctx, body)
        if partition.consumer_offsets.pop(consumer, None) is None:
            raise wire.WireError(wire.ERR_CONSUMER_OFFSET_NOT_FOUND, "no stored offset")
    return wire.encode_result_ok()


_WRITES = {
    wire.OP_SEND_MESSAGES: _send,
    wire.OP_STORE_CONSUMER_OFFSET: _store_offset,
    wire.OP_DELETE_CONSUMER_OFFSET: _delete_offset,
    **TOPIC_WRITES,
}
