"""``send_*``: writing batches to Iggy with the real ``apache-iggy`` SDK.

A send returns only when the server confirmed every partition it wrote to; that
confirmation is what lets offsets, LSNs, deletes and marks move forward. Reconnecting
is left to the caller (the publisher), which retries with back-off: the SDK is told to
give up quickly instead of waiting inside its own unbounded retry loop.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from itertools import repeat

import apache_iggy as iggy

from pgsource.config.model import IggyConfig
from pgsource.errors import SinkError

log = logging.getLogger(__name__)


class IggySink:
    """One authenticated SDK client plus the streams and topics already known to exist."""

    def __init__(self, config: IggyConfig) -> None:
        self.config = config
        self._client: iggy.IggyClient | None = None
        self._known: set[tuple[str, str]] = set()

    async def connect(self) -> None:
        """Connect and log in; raises SinkError (with the address) when Iggy does not answer."""
        tcp = iggy.TcpConfig(
            server_address=self.config.address,
            auto_login=iggy.AutoLogin.username_password(self.config.username, self.config.password),
            reconnection=iggy.TcpReconnectionConfig(max_retries=0, interval=timedelta(milliseconds=200)),
            nodelay=True,
        )
        client = iggy.IggyClient(tcp)
        try:
            await asyncio.wait_for(client.connect(), self.config.send_timeout)
            await asyncio.wait_for(client.login_user(self.config.username, self.config.password), self.config.send_timeout)
        except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
            raise SinkError(f"Iggy at {self.config.address}: {_reason(exc)}") from None
        self._client = client
        self._known.clear()

    @property
    def connected(self) -> bool:
        return self._client is not None

    def disconnect(self) -> None:
        """Forget the client; the next send connects again."""
        self._client = None
        self._known.clear()

    async def ensure_topic(self, stream: str, topic: str) -> None:
        """Create the stream/topic when missing (``create_missing``), else fail naming it."""
        if (stream, topic) in self._known:
            return
        client = self._require()
        try:
            if await client.get_stream(stream) is None:
                if not self.config.create_missing:
                    raise SinkError(f"Iggy stream {stream!r} does not exist and iggy.create_missing is false")
                await _tolerate_exists(client.create_stream(stream))
            details = await client.get_topic(stream, topic)
            if details is None:
                if not self.config.create_missing:
                    raise SinkError(f"Iggy topic {stream}/{topic} does not exist and iggy.create_missing is false")
                await _tolerate_exists(client.create_topic(stream, topic, self.config.partitions))
                details = await client.get_topic(stream, topic)
            if details is not None and details.partitions_count < self.config.partitions:
                raise SinkError(
                    f"Iggy topic {stream}/{topic} has {details.partitions_count} partitions,"
                    f" iggy.partitions asks for {self.config.partitions}"
                )
        except RuntimeError as exc:
            raise SinkError(f"Iggy topic {stream}/{topic}: {_reason(exc)}") from None
        self._known.add((stream, topic))

    async def send_batch(
        self,
        stream: str,
        topic: str,
        ids: list[int],
        partitions: list[int],
        payloads: list[str],
        headers: list[dict] | None = None,
    ) -> int:
        """Send one batch, one request per partition it touches; returns messages confirmed."""
        client = self._require()
        await self.ensure_topic(stream, topic)
        groups: dict[int, list] = {}
        make = iggy.SendMessage
        if headers is None and partitions and partitions.count(partitions[0]) == len(partitions):
            # map() with positional arguments (data, user_headers, id): 0.17 µs a message instead
            # of 0.23 µs for a comprehension with id= keywords
            groups[partitions[0]] = list(map(make, payloads, repeat(None), ids))
        elif headers is None:
            for message_id, partition, payload in zip(ids, partitions, payloads):
                groups.setdefault(partition, []).append(make(payload, None, message_id))
        else:
            for message_id, partition, payload, header in zip(ids, partitions, payloads, headers):
                groups.setdefault(partition, []).append(make(payload, user_headers=header, id=message_id))
        sent = 0
        for partition, messages in groups.items():
            try:
                await asyncio.wait_for(
                    client.send_messages(stream, topic, iggy.Partitioning.partition_id(partition), messages),
                    self.config.send_timeout,
                )
            except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
                raise SinkError(f"sending {len(messages)} messages to {stream}/{topic}: {_reason(exc)}") from None
            sent += len(messages)
        return sent

    def _require(self) -> iggy.IggyClient:
        if self._client is None:
            raise SinkError("not connected to Iggy")
        return self._client


async def _tolerate_exists(awaitable) -> None:
    """Another process may have created it between our look-up and our create."""
    try:
        await awaitable
    except RuntimeError as exc:
        if "already exists" not in str(exc).lower():
            raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or exc.__class__.__name__
