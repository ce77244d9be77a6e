"""The SDK's high-level producer helper, and the stand-in in a separate OS process."""

from __future__ import annotations

from apache_iggy import DirectProducerConfig, Partitioning, SendMessage

from pgsource_testkit.iggy import IggyStandInProcess

from .conftest import logged_in, run


def test_producer_creates_stream_and_topic_and_sends(standin):
    async def scenario():
        client = await logged_in(standin.address)
        producer = await client.producer(
            "orders",
            "events",
            partitioning=Partitioning.balanced(),
            mode=DirectProducerConfig(batch_length=10),
            topic_partitions_count=2,
        )
        confirmations = []
        for i in range(4):
            response = await producer.send([SendMessage(f"m{i}", user_headers={"i": i})])
            confirmations.extend((c.partition_id, c.base_offset) for c in response.confirmations)
        response = await producer.send([SendMessage(f"bulk{i}") for i in range(25)])
        confirmations.extend((c.partition_id, c.base_offset) for c in response.confirmations)
        await producer.shutdown()
        return confirmations

    confirmations = run(scenario())
    assert standin.streams() == ["orders"]
    assert standin.topics("orders") == ["events"]
    stored = standin.messages("orders", "events")
    assert len(stored) == 29
    assert sorted(m.payload for m in stored if m.payload.startswith(b"m")) == [b"m0", b"m1", b"m2", b"m3"]
    assert {m.partition for m in stored} == {0, 1}  # balanced: the SDK picks the partition ids
    assert confirmations[:4] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [m.headers for m in stored if m.payload == b"m2"] == [{"i": 2}]


def test_separate_process_counted_through_the_sdk():
    with IggyStandInProcess() as server:
        assert server.address.startswith("127.0.0.1:")

        async def scenario():
            client = await logged_in(server.address)
            await client.create_stream("bench")
            await client.create_topic("bench", "events", 2)
            for partition in (0, 1, 0):
                await client.send_messages("bench", "events", partition, [SendMessage(b"x" * 200)] * 500)
            return await client.get_topic("bench", "events"), await client.get_stream("bench")

        topic, stream = run(scenario())
        assert topic.messages_count == 1500
        assert [p.messages_count for p in topic.partitions] == [1000, 500]
        assert stream.messages_count == 1500
        assert topic.size > 1500 * 200
        pid = server.pid
    assert server.pid is None and pid is not None
