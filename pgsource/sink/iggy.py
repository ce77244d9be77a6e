"""``send_*``: writing batches to Iggy with the real ``apache-iggy`` SDK.

A send returns only when the server confirmed every partition it wrote to; that
confirmation is what lets offsets, LSNs, deletes and marks move forward. Reconnecting
is left to the caller (the publisher), which retries with back-off: the SDK is told to
give up quickly instead of waiting inside its own unbounded retry loop.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from datetime import timedelta

import apache_iggy as iggy

from pgsource.config.model import IggyConfig
from pgsource.encode.frames import SEND_MESSAGES_CODE, PartitionFrames, encode_send_request
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
            **_tls_options(self.config),
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

    async def send_frames(self, stream: str, topic: str, parts: list[PartitionFrames]) -> int:
        """Send one encoded batch, one request per partition; returns messages confirmed.

        The frames were encoded by the worker (``pgsource.encode.frames``); the SDK's
        ``send_binary_request`` frames the request, sends it on its connection and returns
        the server's confirmation, which is checked here.
        """
        client = self._require()
        await self.ensure_topic(stream, topic)
        sent = 0
        for part in parts:
            body = encode_send_request(stream, topic, part, time.time_ns() // 1000)
            try:
                reply = await asyncio.wait_for(client.send_binary_request(SEND_MESSAGES_CODE, body), self.config.send_timeout)
            except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
                raise SinkError(f"sending {part.count} messages to {stream}/{topic}: {_reason(exc)}") from None
            confirmed = decode_send_confirmation(reply)
            if confirmed != part.partition:
                raise SinkError(f"sending to {stream}/{topic}: Iggy confirmed partition {confirmed}, not {part.partition}")
            sent += part.count
        return sent

    def _require(self) -> iggy.IggyClient:
        if self._client is None:
            raise SinkError("not connected to Iggy")
        return self._client


def _tls_options(config: IggyConfig) -> dict:
    """``iggy.tls`` as TcpConfig's keywords (none when TLS is off: the SDK's defaults stay)."""
    tls = config.tls
    if not tls.enabled:
        return {}
    options = {"tls_enabled": True, "tls_validate_certificate": tls.validate_certificate,
               "tls_domain": tls.domain or config.address.rpartition(":")[0].strip("[]")}
    if tls.ca_file:
        options["tls_ca_file"] = tls.ca_file
    return options


async def _tolerate_exists(awaitable) -> None:
    """Another process may have created it between our look-up and our create."""
    try:
        await awaitable
    except RuntimeError as exc:
        if "already exists" not in str(exc).lower():
            raise


def decode_send_confirmation(reply: bytes) -> int:
    """The partition a SendMessages reply confirms: ``[count u32]`` + ``[stream, topic, partition u32][base_offset u64]``."""
    if len(reply) != 4 + _CONFIRMATION.size or int.from_bytes(reply[:4], "little") != 1:
        raise SinkError(f"unexpected SendMessages reply from Iggy ({len(reply)} bytes)")
    return _CONFIRMATION.unpack_from(reply, 4)[2]


_CONFIRMATION = struct.Struct("<IIIQ")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or exc.__class__.__name__
