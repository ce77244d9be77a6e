"""Streams, topics and partitions: create, get, list, delete, through the real SDK."""

from __future__ import annotations

import pytest
from apache_iggy import SendMessage

from .conftest import logged_in, run


def test_stream_and_topic_crud(standin):
    async def scenario():
        client = await logged_in(standin.address)
        await client.create_stream("orders")
        await client.create_stream("users")
        with pytest.raises(RuntimeError, match="already exists"):
            await client.create_stream("orders")
        await client.create_topic("orders", "events", 3)
        await client.create_topic("orders", "audit", 1)
        with pytest.raises(RuntimeError, match="already exists"):
            await client.create_topic("orders", "events", 1)

        streams = await client.get_streams()
        assert [(s.id, s.name, s.topics_count) for s in streams] == [(0, "orders", 2), (1, "users", 0)]
        stream = await client.get_stream("orders")
        assert [t.name for t in stream.topics] == ["events", "audit"]
        assert (await client.get_stream(1)).name == "users"
        topics = await client.get_topics("orders")
        assert [(t.id, t.name, t.partitions_count) for t in topics] == [(0, "events", 3), (1, "audit", 1)]
        topic = await client.get_topic("orders", "events")
        assert [p.id for p in topic.partitions] == [0, 1, 2]
        assert (await client.get_topic(0, 1)).name == "audit"

        await client.delete_topic("orders", "audit")
        assert await client.get_topic("orders", "audit") is None
        await client.delete_stream("users")
        assert await client.get_stream("users") is None
        with pytest.raises(RuntimeError, match="not found"):
            await client.delete_stream("users")
        with pytest.raises(RuntimeError, match="not found"):
            await client.get_topics("users")

    run(scenario())
    assert standin.streams() == ["orders"]
    assert standin.topics("orders") == ["events"]


def test_create_partitions_extends_the_topic(standin):
    async def scenario():
        client = await logged_in(standin.address)
        await client.create_stream("s")
        await client.create_topic("s", "t", 1)
        await client.create_partitions("s", "t", 2)
        await client.send_messages("s", "t", 2, [SendMessage(b"third partition")])
        return await client.get_topic("s", "t")

    topic = run(scenario())
    assert topic.partitions_count == 3
    assert [(p.id, p.messages_count) for p in topic.partitions] == [(0, 0), (1, 0), (2, 1)]
    assert [m.payload for m in standin.messages("s", "t", 2)] == [b"third partition"]


def test_sizes_and_counts_are_reported(standin):
    async def scenario():
        client = await logged_in(standin.address)
        await client.create_stream("s")
        await client.create_topic("s", "t", 2)
        await client.send_messages("s", "t", 0, [SendMessage(b"a" * 100) for _ in range(5)])
        await client.send_messages("s", "t", 1, [SendMessage(b"b" * 100) for _ in range(3)])
        return await client.get_stream("s"), await client.get_topic("s", "t")

    stream, topic = run(scenario())
    assert stream.messages_count == 8 and topic.messages_count == 8
    assert [p.messages_count for p in topic.partitions] == [5, 3]
    assert [p.current_offset for p in topic.partitions] == [4, 2]
    assert topic.size == stream.size > 8 * 100
