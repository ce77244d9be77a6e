"""Sending and polling through the real SDK: payloads, ids, headers, strategies, offsets."""

from __future__ import annotations

import struct
import time

import pytest
from apache_iggy import Consumer, HeaderKey, HeaderValue, PollingStrategy, SendMessage

from .conftest import logged_in, run

HEADERS = {
    "table": "public.orders",
    "raw": b"\x00\xffbytes",
    "flag": True,
    "small": 7,
    HeaderKey.String("signed"): HeaderValue.Int64(-42),
    HeaderKey.String("huge"): HeaderValue.UnsignedInt128(2**100 + 3),
    HeaderKey.String("ratio"): HeaderValue.Float64(0.125),
}
EXPECTED_HEADERS = {
    "table": "public.orders",
    "raw": b"\x00\xffbytes",
    "flag": True,
    "small": 7,
    "signed": -42,
    "huge": 2**100 + 3,
    "ratio": 0.125,
}


async def _topic(address: str, partitions: int = 1):
    client = await logged_in(address)
    await client.create_stream("s")
    await client.create_topic("s", "t", partitions)
    return client


async def _poll(client, strategy, count=100, consumer="c", auto_commit=False, partition=0):
    return await client.poll_messages(
        "s",
        "t",
        consumer=Consumer.Single(consumer),
        polling_strategy=strategy,
        count=count,
        auto_commit=auto_commit,
        partition_id=partition,
    )


def test_round_trip_keeps_payloads_ids_and_headers_exact(standin):
    sent = [
        SendMessage(b"\x00binary\xff", user_headers=HEADERS, id=(1 << 127) + 5),
        SendMessage("text", id=2),
        SendMessage(b"no id"),
    ]

    async def scenario():
        client = await _topic(standin.address)
        response = await client.send_messages("s", "t", 0, sent)
        assert [(c.partition_id, c.base_offset) for c in response.confirmations] == [(0, 0)]
        return await _poll(client, PollingStrategy.First())

    polled = run(scenario())
    assert [m.payload() for m in polled] == [b"\x00binary\xff", b"text", b"no id"]
    assert [m.offset() for m in polled] == [0, 1, 2]
    assert polled[0].id() == (1 << 127) + 5 and polled[1].id() == 2
    assert polled[2].id() != 0  # the SDK mints one
    assert polled[0].user_headers().to_scalar_dict() == EXPECTED_HEADERS
    assert polled[1].user_headers() is None

    stored = standin.messages("s", "t")
    assert [(m.partition, m.offset, m.payload) for m in stored] == [
        (0, 0, b"\x00binary\xff"),
        (0, 1, b"text"),
        (0, 2, b"no id"),
    ]
    assert stored[0].id == (1 << 127) + 5
    assert stored[0].headers == EXPECTED_HEADERS
    # [kind 2 string][len u32][key] then [kind][len][value]; the SDK orders keys itself.
    assert b"\x02\x05\x00\x00\x00table\x02\x0d\x00\x00\x00public.orders" in stored[0].raw_headers
    assert stored[1].raw_headers == b"" and stored[1].headers == {}
    assert stored[0].timestamp == polled[0].timestamp()
    assert stored[0].origin_timestamp == polled[0].origin_timestamp()


def test_every_polling_strategy(standin):
    async def scenario():
        client = await _topic(standin.address)
        await client.send_messages("s", "t", 0, [SendMessage(f"a{i}") for i in range(5)])
        time.sleep(0.01)
        middle = time.time_ns() // 1000
        time.sleep(0.01)
        await client.send_messages("s", "t", 0, [SendMessage(f"b{i}") for i in range(5)])
        payloads = {}
        for name, strategy, count in [
            ("offset", PollingStrategy.Offset(3), 4),
            ("timestamp", PollingStrategy.Timestamp(middle), 100),
            ("first", PollingStrategy.First(), 2),
            ("last", PollingStrategy.Last(), 3),
            ("past_end", PollingStrategy.Offset(10), 5),
        ]:
            payloads[name] = [m.payload() for m in await _poll(client, strategy, count)]
        for _ in range(3):
            payloads.setdefault("next", []).append(
                [m.payload() for m in await _poll(client, PollingStrategy.Next(), 4, auto_commit=True)]
            )
        return payloads

    payloads = run(scenario())
    assert payloads["offset"] == [b"a3", b"a4", b"b0", b"b1"]
    assert payloads["timestamp"] == [b"b0", b"b1", b"b2", b"b3", b"b4"]
    assert payloads["first"] == [b"a0", b"a1"]
    assert payloads["last"] == [b"b2", b"b3", b"b4"]
    assert payloads["past_end"] == []
    assert payloads["next"] == [[b"a0", b"a1", b"a2", b"a3"], [b"a4", b"b0", b"b1", b"b2"], [b"b3", b"b4"]]


def _offset_request(consumer: str, partition: int, offset: int | None = None) -> bytes:
    """Body of get/store/delete consumer offset: the SDK has no typed method for them,
    so they go through ``send_binary_request`` (codes 120, 121, 122), framed by the SDK."""
    name = consumer.encode()
    body = b"\x01" + bytes((2, len(name))) + name  # consumer kind 1 (single), string id
    body += b"\x02\x01s" + b"\x02\x01t" + b"\x01" + struct.pack("<I", partition)
    if offset is not None:
        body += struct.pack("<QB", offset, 0)
    return body


async def _stored_offset(client, consumer: str, partition: int = 0):
    raw = await client.send_binary_request(120, _offset_request(consumer, partition))
    return struct.unpack("<IQQ", raw) if raw else None


def test_auto_commit_and_consumer_offsets(standin):
    async def scenario():
        client = await _topic(standin.address)
        await client.send_messages("s", "t", 0, [SendMessage(str(i)) for i in range(10)])
        before = await _stored_offset(client, "c")
        await _poll(client, PollingStrategy.First(), count=4, auto_commit=True)
        after_poll = await _stored_offset(client, "c")
        await _poll(client, PollingStrategy.Offset(5), count=1, auto_commit=False)
        not_committed = await _stored_offset(client, "c")
        await client.send_binary_request(121, _offset_request("c", 0, offset=7))
        resumed = [m.payload() for m in await _poll(client, PollingStrategy.Next())]
        other = await _stored_offset(client, "other")
        await client.send_binary_request(122, _offset_request("c", 0))
        deleted = await _stored_offset(client, "c")
        with pytest.raises(RuntimeError):
            await client.send_binary_request(122, _offset_request("c", 0))
        restarted = [m.payload() for m in await _poll(client, PollingStrategy.Next(), count=2)]
        return before, after_poll, not_committed, resumed, other, deleted, restarted

    before, after_poll, not_committed, resumed, other, deleted, restarted = run(scenario())
    assert before is None
    assert after_poll == (0, 9, 3)  # partition, current offset, stored offset
    assert not_committed == (0, 9, 3)
    assert resumed == [b"8", b"9"]
    assert other is None
    assert deleted is None
    assert restarted == [b"0", b"1"]


def test_a_resent_message_with_the_same_id_is_stored_again(standin):
    async def scenario():
        client = await _topic(standin.address)
        for _ in range(2):
            await client.send_messages("s", "t", 0, [SendMessage(b"same", id=77)])
        return await _poll(client, PollingStrategy.First())

    polled = run(scenario())
    assert [(m.offset(), m.id()) for m in polled] == [(0, 77), (1, 77)]
    assert [m.id for m in standin.messages("s", "t")] == [77, 77]


def test_out_of_range_partition_is_rejected(standin):
    async def scenario():
        client = await _topic(standin.address, partitions=2)
        with pytest.raises(RuntimeError, match="Resource with key:  was not found"):  # status 20, as the server
            await client.send_messages("s", "t", 2, [SendMessage(b"x")])
        with pytest.raises(RuntimeError):
            await _poll(client, PollingStrategy.First(), partition=5)

    run(scenario())
    assert standin.messages("s", "t") == []


def test_sending_to_a_missing_topic_is_rejected(standin):
    async def scenario():
        client = await _topic(standin.address)
        with pytest.raises(RuntimeError, match="not found"):
            await client.send_messages("s", "nope", 0, [SendMessage(b"x")])

    run(scenario())


def test_messages_lists_every_partition_in_order(standin):
    async def scenario():
        client = await _topic(standin.address, partitions=3)
        for partition in (2, 0, 1, 0):
            await client.send_messages("s", "t", partition, [SendMessage(f"p{partition}")])

    run(scenario())
    assert [(m.partition, m.offset) for m in standin.messages("s", "t")] == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert [m.payload for m in standin.messages("s", "t", partition=0)] == [b"p0", b"p0"]


def test_100k_messages_with_headers_poll_back_exactly(standin):
    total, batch = 100_000, 1000

    async def scenario():
        client = await _topic(standin.address)
        for start in range(0, total, batch):
            messages = [
                SendMessage(f"payload-{i}".encode(), user_headers={"n": str(i)}, id=i + 1)
                for i in range(start, start + batch)
            ]
            await client.send_messages("s", "t", 0, messages)
        seen = []
        while True:
            polled = await _poll(client, PollingStrategy.Next(), count=3333, auto_commit=True)
            if not polled:
                return seen
            seen.extend(
                (m.offset(), m.id(), m.payload(), m.user_headers()[HeaderKey.String("n")]) for m in polled
            )

    seen = run(scenario())
    assert len(seen) == total
    for i in (0, 1, 999, 1000, 3333, 50_000, total - 1):
        offset, msg_id, payload, header = seen[i]
        assert (offset, msg_id, payload) == (i, i + 1, f"payload-{i}".encode())
        assert header == HeaderValue.String(str(i))
    assert [s[0] for s in seen] == list(range(total))
    assert len(standin.messages("s", "t")) == total


def test_messages_can_be_read_while_the_server_is_taking_sends(standin):
    import threading

    done = threading.Event()

    async def scenario():
        client = await _topic(standin.address)
        for start in range(0, 20_000, 500):
            await client.send_messages("s", "t", 0, [SendMessage(str(i)) for i in range(start, start + 500)])

    sender = threading.Thread(target=lambda: (run(scenario()), done.set()))
    sender.start()
    counts = []
    while not done.is_set() and sender.is_alive():
        if "s" in standin.streams() and standin.topics("s"):
            counts.append(len(standin.messages("s", "t")))
        time.sleep(0.005)
    sender.join()
    assert done.is_set()
    assert counts == sorted(counts) and all(c % 500 == 0 for c in counts)
    stored = standin.messages("s", "t")
    assert [m.offset for m in stored] == list(range(20_000))
    assert stored[-1].payload == b"19999"


def test_messages_after_returns_each_stored_message_once(standin):
    """``messages_after``: what was stored since the cursor, across partitions; together the same
    messages as ``messages``; nothing (and the cursor unchanged) before the topic exists."""
    assert standin.messages_after("s", "t") == ([], {})

    async def scenario():
        client = await _topic(standin.address, partitions=2)
        await client.send_messages("s", "t", 0, [SendMessage(f"a{i}", id=i + 1) for i in range(3)])
        first, cursor = standin.messages_after("s", "t")
        await client.send_messages("s", "t", 1, [SendMessage("b", id=10)])
        await client.send_messages("s", "t", 0, [SendMessage("c", id=11)])
        second, cursor = standin.messages_after("s", "t", cursor)
        third, _ = standin.messages_after("s", "t", cursor)
        return first, second, third

    first, second, third = run(scenario())
    assert [m.payload for m in first] == [b"a0", b"a1", b"a2"]
    assert sorted(m.payload for m in second) == [b"b", b"c"]
    assert third == []
    key = lambda m: (m.partition, m.offset)  # noqa: E731
    assert sorted(first + second, key=key) == sorted(standin.messages("s", "t"), key=key)
