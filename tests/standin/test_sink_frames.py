"""The sink's frames against the Iggy stand-in through the real SDK: stored and read back exactly,
    split, refused, retried and bounded (the pure encoding tests are in tests/unit/test_frames.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from apache_iggy import Consumer, IggyClient, Partitioning, PollingStrategy, SendMessage

from pgsource.config.model import IggyConfig
from pgsource.encode import frames
from pgsource.errors import SinkError, SinkRefused
from pgsource.sink import IggySink
from pgsource_testkit.iggy import IggyStandIn

CDC_HEADERS = {"table": "public.orders", "operation": "UPDATE", "lsn": "0/16B3748", "xid": "771"}
IDS = [(0x1234 << 64) | (0xBEEF << 48) | 1, 2**128 - 1, 1, 987654321]
PAYLOADS = ['{"id":1,"name":"Zoë"}', b"\x00raw\xff", "{}", '{"big":"' + "x" * 5000 + '"}']



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
