"""Batches encoded by the workers (``pgsource.encode.frames``) are what the SDK would send.

The publisher hands pre-encoded SendMessages requests to the SDK's ``send_binary_request``.
These tests hold that encoding to the SDK's own: the same messages sent both ways must be
stored identically, read back identically through the SDK's ``poll_messages``, and the C
twin must give exactly the Python encoder's bytes.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from apache_iggy import Consumer, IggyClient, Partitioning, PollingStrategy, SendMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from pgsource.config.model import IggyConfig
from pgsource.encode import frames
from pgsource.errors import SinkError, SinkRefused, SourceError
from pgsource.sink import IggySink
from pgsource.testkit.iggy import IggyStandIn, batches, wire

CDC_HEADERS = {"table": "public.orders", "operation": "UPDATE", "lsn": "0/16B3748", "xid": "771"}
IDS = [(0x1234 << 64) | (0xBEEF << 48) | 1, 2**128 - 1, 1, 987654321]
PAYLOADS = ['{"id":1,"name":"Zoë"}', b"\x00raw\xff", "{}", '{"big":"' + "x" * 5000 + '"}']


def test_the_c_twin_is_built_here():
    """CI compiles it (gcc, Python headers, libxxhash0): a broken build must not go unnoticed."""
    assert frames.compiled is not None, "pgsource.encode._frames did not build; see `pip install -e .` output"
    assert batches.compiled is not None


message_ids = st.integers(min_value=0, max_value=2**128 - 1)
payloads = st.one_of(st.binary(min_size=1, max_size=600), st.text(min_size=1, max_size=300))
header_dicts = st.one_of(
    st.none(),
    st.just({}),
    st.just(CDC_HEADERS),
    st.dictionaries(st.text(min_size=1, max_size=10), st.one_of(st.text(min_size=1, max_size=20), st.binary(min_size=1, max_size=20)), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(message_ids, payloads, header_dicts), max_size=40), st.booleans())
def test_c_and_python_encoders_give_the_same_bytes(messages, with_headers):
    ids = [m[0] for m in messages]
    data = [m[1] for m in messages]
    headers = [m[2] for m in messages] if with_headers else None
    assert frames.compiled.encode_frames(ids, data, headers, frames.encode_user_headers) == (
        frames.encode_frames_python(ids, data, headers)
    )


@pytest.mark.parametrize("encode", [frames.encode_frames, frames.encode_frames_python], ids=["c", "python"])
def test_encoding_errors_name_the_problem(encode):
    with pytest.raises(TypeError, match="user header 'n': int"):
        encode([1], ["x"], [{"n": 1}])
    with pytest.raises(ValueError, match="user header 'k': keys and values must have 1 to 255 bytes"):
        encode([1], ["x"], [{"k": "v" * 256}])
    with pytest.raises(TypeError, match="str or bytes"):
        encode([1], [3])
    with pytest.raises(ValueError, match="payload of 0 bytes"):
        encode([1, 2], ["x", ""])
    with pytest.raises(OverflowError):
        encode([2**128], ["x"])
    with pytest.raises(OverflowError):
        encode([-1], ["x"])


def test_a_message_iggy_would_refuse_is_a_source_error_naming_table_and_id():
    """The SDK and the server refuse empty payloads and payloads over 64,000,000 bytes:
    resending could never succeed, so the worker stops with the row's id instead of looping."""
    with pytest.raises(SourceError, match=r"table public.docs: message id 0x7: payload of 64000001 bytes"):
        frames.encode_partition_frames([5, 7], [0, 1], ["{}", b"x" * 64_000_001], where="table public.docs")
    assert frames.encode_partition_frames([5], [0], [b"x" * 64_000_000])[0].count == 1


def _corrupted_batches() -> list[bytes]:
    good_frames, sums = frames.encode_frames_python(IDS, PAYLOADS, [CDC_HEADERS] * len(IDS))
    body = frames.encode_send_request("s", "t", frames.PartitionFrames(0, len(IDS), good_frames, sums), 1)
    good = bytearray(body[4 + int.from_bytes(body[:4], "little") :])
    flipped = bytearray(good)
    flipped[300] ^= 1  # inside the first frame's payload
    short = good[:-1]
    wrong_count = bytearray(good)
    wrong_count[48] = 3
    bad_delta = bytearray(good)
    bad_delta[256 + 24] = 7
    return [bytes(good), bytes(flipped), bytes(short), bytes(wrong_count), bytes(bad_delta), bytes(good[:100])]


@pytest.mark.parametrize("batch", _corrupted_batches(), ids=["good", "flipped", "short", "count", "delta", "tiny"])
def test_c_and_python_frame_walks_agree(batch):
    """The stand-in's check of a received batch gives the same answer in C and in Python."""
    try:
        python = batches.index_frames_python(memoryview(batch))
    except wire.WireError as exc:
        python = exc.code
    found = batches.compiled.index_frames(batch)
    if isinstance(python, int):
        assert isinstance(found[0], int)
        assert batches._INDEX_ERRORS[found[0]] == python
    else:
        assert (found[0], found[1]) == (python[0].tobytes(), python[1])


def test_frames_are_stored_and_read_back_exactly_like_the_sdks():
    """Same messages: once with SendMessage objects, once as frames through IggySink."""
    headers = [CDC_HEADERS, None, {"k": b"\x01"}, CDC_HEADERS]

    async def scenario(address: str):
        client = IggyClient(address)
        await client.connect()
        await client.login_user("iggy", "iggy")
        await client.create_stream("s")
        for topic in ("sdk", "frames"):
            await client.create_topic("s", topic, 2)
        sdk_messages = [SendMessage(p, user_headers=h, id=i) for i, p, h in zip(IDS, PAYLOADS, headers)]
        await client.send_messages("s", "sdk", Partitioning.partition_id(1), sdk_messages)

        sink = IggySink(IggyConfig(address=address, stream="s", partitions=2))
        await sink.connect()
        parts = frames.encode_partition_frames(IDS, [1] * 4, PAYLOADS, headers)
        assert await sink.send_frames("s", "frames", parts) == 4
        polled = {}
        for topic in ("sdk", "frames"):
            got = await client.poll_messages(
                "s", topic, consumer=Consumer.Single("c"), polling_strategy=PollingStrategy.First(),
                count=10, auto_commit=False, partition_id=1,
            )
            polled[topic] = [(m.id(), m.offset(), m.payload(), m.user_headers() and m.user_headers().to_scalar_dict())
                             for m in got]
        return polled

    with IggyStandIn() as server:
        polled = asyncio.run(scenario(server.address))
        stored = {topic: server.messages("s", topic) for topic in ("sdk", "frames")}
    assert polled["frames"] == polled["sdk"]
    assert [m[0] for m in polled["frames"]] == IDS
    assert polled["frames"][0][3] == CDC_HEADERS
    strip = [[(m.partition, m.offset, m.id, m.payload, m.raw_headers) for m in stored[t]] for t in ("sdk", "frames")]
    assert strip[0] == strip[1]


def test_several_partitions_keep_their_order_and_a_bad_reply_is_an_error():
    ids = list(range(1, 11))
    partitions = [i % 3 for i in ids]
    data = [f"m{i}" for i in ids]
    parts = frames.encode_partition_frames(ids, partitions, data)
    assert [(p.partition, p.count) for p in parts] == [(1, 4), (2, 3), (0, 3)]

    async def scenario(address: str):
        sink = IggySink(IggyConfig(address=address, stream="s", partitions=3))
        await sink.connect()
        return await sink.send_frames("s", "t", parts)

    with IggyStandIn() as server:
        assert asyncio.run(scenario(server.address)) == 10
        stored = server.messages("s", "t")
    assert [(m.partition, m.id, m.payload.decode()) for m in stored] == sorted(zip(partitions, ids, data))
    with pytest.raises(SinkError, match="unexpected SendMessages reply"):
        from pgsource.sink.iggy import decode_send_confirmation

        decode_send_confirmation(b"\x01\x00\x00\x00")


# -- the send path against a server that behaves like the real one ---------------------------


def _sink_config(address: str, **overrides) -> IggyConfig:
    return IggyConfig(address=address, stream="s", partitions=overrides.pop("partitions", 1), **overrides)


async def _send(sink: IggySink, parts, confirmed=None) -> int:
    if not sink.connected:
        await sink.connect()
    return await sink.send_frames("s", "t", parts, confirmed)


def test_a_batch_over_the_request_limit_is_split_and_stored_in_order():
    """70 messages of 1 MB: one request would exceed 64 MiB, which the server answers by closing
    the connection (a batch capped by rows only was re-sent for ever). Now: two requests, every
    message stored once, offsets consecutive, ids kept."""
    ids = list(range(1, 71))
    payloads = [bytes([i]) * 1_000_000 for i in ids]
    parts = frames.encode_partition_frames(ids, [0] * 70, payloads)
    assert len(parts[0].frames) > frames.MAX_REQUEST_BYTES
    pieces = frames.split_partition_frames(parts[0])
    assert len(pieces) == 2 and all(len(p.frames) <= frames.MAX_REQUEST_FRAMES_BYTES for p in pieces)

    with IggyStandIn() as server:
        sink = IggySink(_sink_config(server.address, send_timeout=30))
        assert asyncio.run(_send(sink, parts)) == 70
        stored = server.messages("s", "t")
    assert [(m.offset, m.id, m.payload[:1]) for m in stored] == [(i - 1, i, bytes([i])) for i in ids]


def test_split_pieces_are_valid_batches_numbered_from_zero():
    ids = list(range(10))
    parts = frames.encode_partition_frames(ids, [3] * 10, [b"x" * (100 + i) for i in ids], [CDC_HEADERS] * 10)
    pieces = frames.split_partition_frames(parts[0], max_bytes=1000)
    assert [p.count for p in pieces] == [4, 4, 2] and {p.partition for p in pieces} == {3}
    for piece in pieces:
        body = frames.encode_send_request("s", "t", piece, 1)
        batch = memoryview(body)[4 + int.from_bytes(body[:4], "little"):]
        starts, sums = batches.index_frames_python(batch)  # offset deltas 0.., checksums recomputed
        assert sums == piece.checksums and len(starts) - 1 == piece.count
    with pytest.raises(ValueError, match="cannot fit"):
        frames.split_partition_frames(parts[0], max_bytes=100)


def test_a_reply_with_count_0_is_a_success():
    """The server answers count = 0 for a batch committed without offsets to report."""
    from pgsource.sink.iggy import decode_send_confirmation

    assert decode_send_confirmation(b"\x00\x00\x00\x00") is None
    parts = frames.encode_partition_frames([1, 2], [0, 0], ["a", "b"])
    with IggyStandIn() as server:
        server.confirm_without_offsets()
        sink = IggySink(_sink_config(server.address))
        assert asyncio.run(_send(sink, parts)) == 2
        assert len(server.messages("s", "t")) == 2


def _our_connections(port: int) -> int:
    from pgsource.sink.sockets import connections_to

    return len(connections_to(port))


async def _until_no_connection(port: int, timeout: float = 5.0) -> bool:
    """The SDK may redial once as the abandoned request fails; that connection is shut too."""
    deadline = time.monotonic() + timeout
    while _our_connections(port) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return _our_connections(port) == 0


def test_a_batch_the_server_refuses_ends_in_the_timeout_and_leaves_no_connection():
    """No reply to a refused batch: the send times out instead of hanging, the client's
    connection is shut (the SDK would keep it and the request for ever), and the next
    connection works."""
    good = frames.encode_partition_frames([1], [0], ["ok"])
    bad = [frames.PartitionFrames(0, 1, good[0].frames[:-1] + b"?", good[0].checksums)]

    async def scenario(server):
        sink = IggySink(_sink_config(server.address, send_timeout=0.5))
        await sink.connect()
        assert _our_connections(server.port) == 1
        with pytest.raises(SinkError, match="no answer within 0.5s") as raised:
            await sink.send_frames("s", "t", bad)
        assert not isinstance(raised.value, SinkRefused)  # retried by the publisher
        assert not sink.connected and await _until_no_connection(server.port)
        assert await _send(sink, good) == 1
        assert _our_connections(server.port) == 1

    with IggyStandIn() as server:
        asyncio.run(scenario(server))
        assert [m.payload for m in server.messages("s", "t")] == [b"ok"]


def test_every_call_is_bounded_when_the_server_freezes():
    """A frozen server (connects succeed, nothing answers): connect, topic look-ups and sends all
    end in the timeout; no connection is left behind."""
    parts = frames.encode_partition_frames([1], [0], ["x"])

    async def scenario(server):
        sink = IggySink(_sink_config(server.address, send_timeout=0.5))
        server.freeze()
        started = time.monotonic()
        with pytest.raises(SinkError, match="no answer"):
            await sink.connect()
        assert time.monotonic() - started < 5
        assert await _until_no_connection(server.port)
        server.freeze(False)
        await sink.connect()
        server.freeze()
        with pytest.raises(SinkError, match="reading stream: no answer"):
            await sink.send_frames("s", "t", parts)  # ensure_topic's get_stream had no timeout before
        assert await _until_no_connection(server.port)
        server.freeze(False)
        assert await _send(sink, parts) == 1

    with IggyStandIn() as server:
        asyncio.run(scenario(server))


@pytest.mark.parametrize("case", ["wrong password", "missing topic", "missing stream", "too few partitions"])
def test_failures_no_retry_can_fix_are_refusals(case):
    parts = frames.encode_partition_frames([1], [0], ["x"])

    async def scenario(server):
        admin = IggyClient(server.address)
        await admin.connect()
        await admin.login_user("iggy", "iggy")
        overrides = {}
        if case == "wrong password":
            overrides = {"password": "wrong"}
        elif case in ("missing topic", "too few partitions"):
            await admin.create_stream("s")
            if case == "too few partitions":
                await admin.create_topic("s", "t", 1)
                overrides = {"partitions": 3}
            else:
                overrides = {"create_missing": False}
        elif case == "missing stream":
            overrides = {"create_missing": False}
        sink = IggySink(_sink_config(server.address, **overrides))
        with pytest.raises(SinkRefused) as raised:
            await _send(sink, parts)
        return str(raised.value)

    with IggyStandIn() as server:  # refused create options: tests/standin/test_topic_fallback.py
        message = asyncio.run(scenario(server))
    assert {
        "wrong password": "refused user 'iggy': Invalid credentials",
        "missing topic": "Iggy topic s/t does not exist and iggy.create_missing is false",
        "missing stream": "Iggy stream 's' does not exist and iggy.create_missing is false",
        "too few partitions": "has 1 partition(s), iggy.partitions asks for 3",
    }[case] in message


def test_a_topic_deleted_under_the_sink_is_created_again():
    """Not found on send is retried after looking again (create_missing: true)."""
    parts = frames.encode_partition_frames([1], [0], ["x"])

    async def scenario(server):
        sink = IggySink(_sink_config(server.address))
        assert await _send(sink, parts) == 1
        admin = IggyClient(server.address)
        await admin.connect()
        await admin.login_user("iggy", "iggy")
        await admin.delete_topic("s", "t")
        with pytest.raises(SinkError, match="not found") as raised:
            await sink.send_frames("s", "t", parts)
        assert not isinstance(raised.value, SinkRefused)
        assert await sink.send_frames("s", "t", parts) == 1

    with IggyStandIn() as server:
        asyncio.run(scenario(server))
        assert len(server.messages("s", "t")) == 1


def test_a_retry_skips_the_requests_already_confirmed():
    ids = list(range(1, 7))
    parts = frames.encode_partition_frames(ids, [0, 1, 0, 1, 0, 1], [f"m{i}" for i in ids])
    confirmed: set[int] = {0}  # the first request (partition 0) was confirmed before a failure

    with IggyStandIn() as server:
        sink = IggySink(_sink_config(server.address, partitions=2))
        assert asyncio.run(_send(sink, parts, confirmed)) == 6
        assert confirmed == {0, 1}
        assert [m.partition for m in server.messages("s", "t")] == [1, 1, 1]


def test_finding_the_connections_opens_no_descriptor():
    """The look-up runs on every connect and timeout of the publisher: it must not leak (a dup()
    of each non-socket descriptor once did, quadrupling the process's descriptors per call)."""
    import os

    from pgsource.sink.sockets import connections_to

    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        connections_to(1)
    assert len(os.listdir("/proc/self/fd")) == before
