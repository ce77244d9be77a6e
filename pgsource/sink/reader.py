"""Reading a topic back with the real SDK (the demo's, the benchmarks' and `pgsource verify`'s view of Iggy)."""

from __future__ import annotations

import apache_iggy as iggy


async def connect_client(address: str, username: str, password: str) -> iggy.IggyClient:
    """A logged-in client; ``address`` may be a seed list (``iggy.address``): the first that answers."""
    seeds = address.split(",")
    for seed in seeds:
        if len(seeds) == 1:
            tcp = iggy.TcpConfig(server_address=seed)
        else:  # one pass, so a node that is down fails at once and the next is tried
            tcp = iggy.TcpConfig(server_address=seed, reconnection=iggy.TcpReconnectionConfig(max_retries=0))
        client = iggy.IggyClient(tcp)
        try:
            await client.connect()
            await client.login_user(username, password)
        except (RuntimeError, OSError):
            if seed == seeds[-1]:
                raise
            continue
        return client
    raise RuntimeError("no Iggy address")


async def topic_message_count(client: iggy.IggyClient, stream: str, topic: str) -> int:
    details = await client.get_topic(stream, topic)
    if details is None:
        return 0
    return sum(partition.messages_count for partition in details.partitions)


async def read_topic(address: str, username: str, password: str, stream: str, topic: str, samples: int = 3) -> tuple[int, list[bytes]]:
    """(messages stored in the topic, the payloads of its first ``samples`` messages)."""
    client = await connect_client(address, username, password)
    count = await topic_message_count(client, stream, topic)
    if count == 0:
        return 0, []
    polled = await client.poll_messages(
        stream, topic, consumer=iggy.Consumer.Single("pgsource-demo"),
        polling_strategy=iggy.PollingStrategy.First(), count=samples, auto_commit=False, partition_id=0,
    )
    return count, [message.payload() for message in polled]


async def read_message_ids(address: str, username: str, password: str, stream: str, topic: str,
                           page: int = 1000) -> list[tuple[int, int]] | None:
    """(partition, message id) of every message a topic still holds, read back through the SDK
    partition by partition (None when the stream or topic does not exist). For ``pgsource verify``."""
    client = await connect_client(address, username, password)
    try:
        details = await client.get_topic(stream, topic)
    except RuntimeError:
        return None
    if details is None:
        return None
    out: list[tuple[int, int]] = []
    consumer = iggy.Consumer.Single("pgsource-verify")
    for partition in details.partitions:
        offset = 0
        while True:
            polled = await client.poll_messages(
                stream, topic, consumer=consumer, polling_strategy=iggy.PollingStrategy.Offset(offset),
                count=page, auto_commit=False, partition_id=partition.id,
            )
            if not polled:
                break
            out.extend((partition.id, message.id()) for message in polled)
            offset = polled[-1].offset() + 1
    return out
