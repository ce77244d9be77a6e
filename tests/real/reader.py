"""Reading a real Iggy server back through the ``apache_iggy`` SDK (it has no inspection API).

Synchronous wrappers for tests: each call connects, logs in with the server's credentials
and reads every partition from offset 0 with ``PollingStrategy.Offset`` and a
``Consumer.Single`` that never commits, so reading changes nothing on the server.
``iggy`` is the suite's ``RealIggy`` (address, username, password).
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from decimal import Decimal

import apache_iggy as iggy_sdk

POLL_COUNT = 1000
CONSUMER = "pgsource-tests"
CREATE_TOPIC_CODE = 302  # the SDK maps it to CreateTopic; the body carries no options
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Stored:
    """One message as the server stored it."""

    partition: int
    offset: int
    id: int
    payload: bytes
    headers: dict | None = None

    def body(self):
        return json.loads(self.payload, parse_float=Decimal)


async def _client(iggy) -> iggy_sdk.IggyClient:
    """A client of the server, or of the first node of a cluster that answers (a node may be down)."""
    addresses = getattr(iggy, "addresses", [iggy.address])
    for address in addresses:
        tcp = iggy_sdk.TcpConfig(server_address=address)
        if len(addresses) > 1:  # fail fast on a node that is down, and try the next
            tcp = iggy_sdk.TcpConfig(server_address=address, reconnection=iggy_sdk.TcpReconnectionConfig(max_retries=0))
        client = iggy_sdk.IggyClient(tcp)
        try:
            await asyncio.wait_for(client.connect(), CALL_TIMEOUT)
            await asyncio.wait_for(client.login_user(iggy.username, iggy.password), CALL_TIMEOUT)
        except (RuntimeError, OSError):
            if address == addresses[-1]:
                raise
            continue  # the next node
        return client
    raise RuntimeError("no address to read from")


async def _read_topic(iggy, stream: str, topic: str) -> list[Stored]:
    client = await _client(iggy)
    if await client.get_stream(stream) is None:
        return []
    details = await client.get_topic(stream, topic)
    if details is None:
        return []
    stored: list[Stored] = []
    for partition in sorted(p.id for p in details.partitions):
        offset = 0
        while True:
            polled = await client.poll_messages(
                stream, topic,
                consumer=iggy_sdk.Consumer.Single(CONSUMER),
                polling_strategy=iggy_sdk.PollingStrategy.Offset(offset),
                count=POLL_COUNT, auto_commit=False, partition_id=partition,
            )
            if not polled:
                break
            for message in polled:
                headers = message.user_headers()
                stored.append(Stored(partition, message.offset(), message.id(), message.payload(),
                                     headers.to_scalar_dict() if headers else None))
            offset = polled[-1].offset() + 1
    return stored


async def _counts(iggy, stream: str, topic: str) -> list[int]:
    client = await _client(iggy)
    if await client.get_stream(stream) is None:
        return []
    details = await client.get_topic(stream, topic)
    return [] if details is None else [p.messages_count for p in sorted(details.partitions, key=lambda p: p.id)]


def read_topic(iggy, stream: str, topic: str) -> list[Stored]:
    """Every message of the topic, partition by partition, each in offset order."""
    return asyncio.run(_read_topic(iggy, stream, topic))


def bodies(iggy, stream: str, topic: str) -> list:
    return [message.body() for message in read_topic(iggy, stream, topic)]


def message_count(iggy, stream: str, topic: str) -> int:
    """Messages the server holds in the topic (cheap: topic details, no payloads); 0 when unreachable."""
    try:
        return sum(asyncio.run(_counts(iggy, stream, topic)))
    except (RuntimeError, OSError, asyncio.TimeoutError):
        return 0


def partition_counts(iggy, stream: str, topic: str) -> list[int]:
    """Messages per partition, by partition id."""
    return asyncio.run(_counts(iggy, stream, topic))


def create_topics(iggy, stream: str, topics: list[str], partitions: int) -> None:
    """The stream (if missing) and the topics, created without any create-topic option."""

    async def create() -> None:
        client = await _client(iggy)
        if await client.get_stream(stream) is None:
            await client.create_stream(stream)
        for topic in topics:
            raw = stream.encode()
            body = bytes((2, len(raw))) + raw + struct.pack("<I", partitions) + bytes((len(topic),)) + topic.encode()
            await client.send_binary_request(CREATE_TOPIC_CODE, body)

    asyncio.run(create())


def delete_stream(iggy, stream: str) -> None:
    async def delete() -> None:
        client = await _client(iggy)
        if await client.get_stream(stream) is not None:
            await client.delete_stream(stream)

    try:
        asyncio.run(delete())
    except (RuntimeError, OSError, asyncio.TimeoutError):
        pass  # a server of its own goes away with the test anyway
