"""Reading the real Iggy 0.9 server back through the ``apache_iggy`` SDK (it has no inspection API).

Synchronous wrappers for tests: each call connects, logs in as root and reads every
partition from offset 0 with ``PollingStrategy.Offset`` and a ``Consumer.Single`` that
never commits, so reading changes nothing on the server.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from decimal import Decimal

import apache_iggy as iggy

IGGY_USERNAME = "iggy"
IGGY_PASSWORD = "iggy"
POLL_COUNT = 1000
CONSUMER = "pgsource-tests"


@dataclass(frozen=True)
class Stored:
    """One message as the server stored it."""

    partition: int
    offset: int
    id: int
    payload: bytes

    def body(self):
        return json.loads(self.payload, parse_float=Decimal)


async def _client(address: str) -> iggy.IggyClient:
    client = iggy.IggyClient(iggy.TcpConfig(server_address=address))
    await client.connect()
    await client.login_user(IGGY_USERNAME, IGGY_PASSWORD)
    return client


async def _read_topic(address: str, stream: str, topic: str) -> list[Stored]:
    client = await _client(address)
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
                consumer=iggy.Consumer.Single(CONSUMER),
                polling_strategy=iggy.PollingStrategy.Offset(offset),
                count=POLL_COUNT, auto_commit=False, partition_id=partition,
            )
            if not polled:
                break
            for message in polled:
                stored.append(Stored(partition, message.offset(), message.id(), message.payload()))
            offset = polled[-1].offset() + 1
    return stored


async def _count(address: str, stream: str, topic: str) -> int:
    client = await _client(address)
    if await client.get_stream(stream) is None:
        return 0
    details = await client.get_topic(stream, topic)
    return 0 if details is None else sum(p.messages_count for p in details.partitions)


def read_topic(address: str, stream: str, topic: str) -> list[Stored]:
    """Every message of the topic, partition by partition, each in offset order."""
    return asyncio.run(_read_topic(address, stream, topic))


def bodies(address: str, stream: str, topic: str) -> list:
    return [message.body() for message in read_topic(address, stream, topic)]


def message_count(address: str, stream: str, topic: str) -> int:
    """Messages the server holds in the topic (cheap: topic details, no payloads)."""
    return asyncio.run(_count(address, stream, topic))


def iggy_answers(address: str) -> bool:
    async def probe() -> None:
        client = await asyncio.wait_for(_client(address), 5)
        await asyncio.wait_for(client.ping(), 5)

    try:
        asyncio.run(probe())
        return True
    except (RuntimeError, OSError, asyncio.TimeoutError):
        return False


def delete_stream(address: str, stream: str) -> None:
    async def delete() -> None:
        client = await _client(address)
        if await client.get_stream(stream) is not None:
            await client.delete_stream(stream)

    try:
        asyncio.run(delete())
    except (RuntimeError, OSError):
        pass  # the containers go away with the session anyway
