"""Reading topics back with the real SDK: ``pgsource tail``, ``pgsource verify`` and the demo's view of Iggy.

Reading leaves no trace on the server: a plain consumer whose offsets are never stored
(every poll has ``auto_commit`` off, nothing calls StoreConsumerOffset) and no consumer
group is joined. Every call is bounded (``timeout``): an unreachable Iggy is
``SinkUnavailable`` (exit 75), refused credentials ``SinkRefused`` (exit 5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta

import apache_iggy as iggy

from pgsource.config.model import IggyConfig
from pgsource.errors import SinkError, SinkRefused, SinkUnavailable
from pgsource.sink.iggy import _tls_options

READER = iggy.Consumer.Single("pgsource-reader")  # never stored, never in a group: a name for the poll only
_REFUSED = ("invalid credentials", "unauthorized", "user inactive")
_NOT_FOUND = ("not found", "does not exist")


@dataclass(frozen=True)
class PartitionEnd:
    """Where a partition stands: its id, how many messages it holds, the offset of the newest one."""

    id: int
    messages: int
    current_offset: int


@dataclass(frozen=True)
class ReadMessage:
    partition: int
    offset: int
    id: int
    payload: bytes


class TopicReader:
    """One SDK client that reads messages by partition and offset (as ``kcat -C`` does)."""

    def __init__(self, config: IggyConfig, timeout: float = 10.0) -> None:
        self.config = config
        self.timeout = timeout
        self._client: iggy.IggyClient | None = None

    async def connect(self) -> TopicReader:
        """Through the first seed of ``iggy.address`` that answers (one, or a cluster's nodes)."""
        seeds = self.config.seeds
        for seed in seeds:
            tcp = iggy.TcpConfig(
                server_address=seed,
                auto_login=iggy.AutoLogin.username_password(self.config.username, self.config.password),
                reconnection=iggy.TcpReconnectionConfig(max_retries=0, interval=timedelta(milliseconds=200)),
                **_tls_options(self.config, seed),
            )
            client = iggy.IggyClient(tcp)
            try:
                await self._bounded(client.connect(), "connecting")
            except SinkRefused:
                raise
            except SinkError:
                if seed == seeds[-1]:
                    raise
                continue
            self._client = client
            return self
        raise SinkUnavailable(f"Iggy at {self.config.address}: no address")

    async def partitions(self, stream: str, topic: str) -> list[PartitionEnd] | None:
        """The topic's partitions, or None when the stream or the topic does not exist."""
        try:
            details = await self._bounded(self._client.get_topic(stream, topic), f"reading topic {stream}/{topic}")
        except SinkError as exc:
            if any(text in str(exc).lower() for text in _NOT_FOUND):
                return None
            raise
        if details is None:
            return None
        return [PartitionEnd(p.id, p.messages_count, p.current_offset) for p in details.partitions]

    async def read(self, stream: str, topic: str, partition: int, offset: int, count: int) -> list[ReadMessage]:
        """Up to ``count`` messages of one partition from ``offset`` on, in offset order."""
        polled = await self._bounded(
            self._client.poll_messages(stream, topic, consumer=READER, polling_strategy=iggy.PollingStrategy.Offset(offset),
                                       count=count, auto_commit=False, partition_id=partition),
            f"reading {stream}/{topic} partition {partition}")
        return [ReadMessage(partition, m.offset(), m.id(), bytes(m.payload())) for m in polled]

    async def _bounded(self, awaitable: Awaitable, what: str):
        """``asyncio.wait``, not ``wait_for``: Python 3.11's ``wait_for`` swallows a cancellation (Ctrl-C)
        that meets a reply arriving at the same moment, and ``tail --follow`` then ran on."""
        where = f"Iggy at {self.config.address}: {what}"
        future = asyncio.ensure_future(awaitable)
        await asyncio.wait({future}, timeout=self.timeout)
        if not future.done():
            future.add_done_callback(_retrieve)
            raise SinkUnavailable(f"{where}: no answer within {self.timeout:g}s")
        try:
            return future.result()
        except (RuntimeError, OSError, ValueError) as exc:
            reason = str(exc) or exc.__class__.__name__
            lowered = reason.lower()
            if any(text in lowered for text in _REFUSED):
                raise SinkRefused(f"{where}: refused user {self.config.username!r}: {reason}") from None
            if self._client is None or "connect" in lowered or "disconnected" in lowered:
                raise SinkUnavailable(f"{where}: {reason}") from None
            raise SinkError(f"{where}: {reason}") from None


def _retrieve(future: asyncio.Future) -> None:
    """Consume the outcome of a request given up on (no 'exception never retrieved' noise)."""
    if not future.cancelled():
        future.exception()


async def topic_message_count(reader: TopicReader, stream: str, topic: str) -> int:
    return sum(p.messages for p in await reader.partitions(stream, topic) or [])


async def read_topic(config: IggyConfig, stream: str, topic: str, samples: int = 3) -> tuple[int, list[bytes]]:
    """(messages stored in the topic, the payloads of its first ``samples`` messages of partition 0)."""
    reader = await TopicReader(config).connect()
    count = await topic_message_count(reader, stream, topic)
    if count == 0:
        return 0, []
    return count, [m.payload for m in await reader.read(stream, topic, 0, 0, samples)]


async def read_message_ids(config: IggyConfig, stream: str, topic: str, page: int = 1000) -> list[tuple[int, int]] | None:
    """(partition, message id) of every message a topic still holds, read back through the SDK
    partition by partition (None when the stream or topic does not exist). For ``pgsource verify``."""
    reader = await TopicReader(config).connect()
    partitions = await reader.partitions(stream, topic)
    if partitions is None:
        return None
    out: list[tuple[int, int]] = []
    for partition in partitions:
        offset = 0
        while True:
            polled = await reader.read(stream, topic, partition.id, offset, page)
            if not polled:
                break
            out.extend((partition.id, message.id) for message in polled)
            offset = polled[-1].offset + 1
    return out
