"""``send_*``: writing batches to Iggy with the real ``apache-iggy`` SDK.

A send returns only when the server confirmed every request it made; that confirmation
is what lets offsets, LSNs, deletes and marks move forward. Reconnecting is left to the
caller (the publisher), which retries with back-off: the SDK is told to give up quickly
instead of waiting inside its own unbounded retry loop.

Every SDK call is bounded by ``iggy.send_timeout``. The SDK has no timeout of its own:
a request the server never answers (a batch refused at admission gets no reply; a
frozen server answers nothing) would hang the publisher for ever. When the time is up
the client's connection is shut down (``pgsource.sink.sockets``), which fails the
pending request inside the SDK, and the client is dropped; the publisher connects again
and re-sends.

Failures that no retry can fix raise :class:`~pgsource.errors.SinkRefused` (exit 5):
a wrong password or missing permission, a missing stream or topic with
``create_missing: false``, a topic with fewer partitions than ``iggy.partitions``, a
create option or name the server refuses (but a server that refuses the options the SDK itself
adds gets the topic created again without options: ``pgsource/sink/topics.py``). Everything else (the server down,
restarting, slow, a topic deleted under us) is a ``SinkError`` the publisher retries.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

import apache_iggy as iggy

from pgsource.config.address import parse_address
from pgsource.config.duration import format_duration
from pgsource.config.model import IggyConfig, TopicSettingsConfig
from pgsource.encode.frames import SEND_MESSAGES_CODE, PartitionFrames, SendRequest, encode_send_requests
from pgsource.errors import SinkError, SinkRefused
from pgsource.sink import sockets, topics

log = logging.getLogger(__name__)

ABANDON_SECONDS = 15.0  # how long a timed-out request may take to fail once its connections are shut
SETTLE_SECONDS = 0.2
WAIT_SLICE = 1.0  # an SDK call is waited for in slices of this, calling ``on_wait`` between them

# SDK error texts (apache-iggy 0.9.0 renders the server's error code) that no retry can fix.
_PERMANENT = (
    "invalid credentials",  # 42, or an Eviction frame with reason InvalidCredentials
    "unauthorized",  # 41: the user lacks the permission
    "unsupported option key",  # 4041: the server refuses a create option (the SDK's own: retried without, topics.py)
    "invalid option value",  # 4042
    "invalid stream name",  # 1013
    "invalid topic name",  # 2014
    "user inactive",
)
# ... and texts that mean the stream, topic or partition is gone: retried after looking again
# (ensure_topic then re-creates it, or refuses when create_missing is false).
_NOT_FOUND = ("was not found", "not found")


class IggySink:
    """One authenticated SDK client plus the streams and topics already known to exist.

    The sink counts as its own every connection of this process to the server that did not
    exist when it connected (the SDK opens and re-opens them out of sight): in the publisher
    it is the only Iggy client. A client another part of the same process connects later
    would be shut with the sink's on a timeout or a reconnect.
    """

    def __init__(self, config: IggyConfig, on_wait: Callable[[], None] | None = None) -> None:
        self.config = config
        self.on_wait = on_wait  # called about every second while an SDK call is pending (the heartbeat)
        self._client: iggy.IggyClient | None = None
        self._foreign: set | None = None  # connections to the server that existed before ours: other clients'
        self._known: set[tuple[str, str]] = set()
        self._told: set[tuple[str, str]] = set()  # existing topics whose differing settings were logged
        self._ports = {parse_address(seed).port for seed in config.seeds}  # every seed's (a cluster's nodes)
        self._next_seed = 0  # where the next connect starts: after the seed used last (see connect)
        self.address = config.seeds[0]  # the seed the client connected through

    # -- connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and log in through one of the seeds; ``SinkError`` (naming each address) when
        none answers, ``SinkRefused`` when one refuses the credentials.

        With several seeds (``iggy.address`` a list: a cluster's nodes) they are tried in order,
        starting after the one this sink connected through last: a reconnect follows a failure,
        and the node behind it may be the one that is gone. The SDK then follows the cluster from
        the node it reached (to the leader, and over the roster it learns when a node is lost).
        """
        self.disconnect()
        self._shut_ours()  # what an earlier, abandoned client of this sink may have redialled since
        seeds = self.config.seeds
        failures = []
        for step in range(len(seeds)):
            index = (self._next_seed + step) % len(seeds)
            try:
                await self._connect_to(seeds[index])
            except SinkRefused:
                raise
            except SinkError as exc:
                failures.append(str(exc))
                continue
            self._next_seed = (index + 1) % len(seeds)
            if failures:
                log.info("connected to Iggy through %s (%s)", seeds[index], "; ".join(failures))
            return
        self._next_seed = 0
        raise SinkError("; ".join(failures))

    async def _connect_to(self, address: str) -> None:
        tcp = iggy.TcpConfig(
            server_address=address,
            auto_login=iggy.AutoLogin.username_password(self.config.username, self.config.password),
            # One immediate redial at most (reestablish_after 0): a request pending on a connection
            # that was shut fails at once instead of after the SDK's 5 s re-establish delay.
            reconnection=iggy.TcpReconnectionConfig(
                max_retries=0, interval=timedelta(milliseconds=200), reestablish_after=timedelta(0)
            ),
            nodelay=True,
            **_tls_options(self.config, address),
        )
        self._foreign = sockets.connections_to_any(self._ports)  # other clients' connections, never touched
        client = iggy.IggyClient(tcp)
        where = f"Iggy at {address}"
        try:  # auto-login: connect() logs in (a login_user after it would log out and in again)
            await self._call(client.connect(), where)
        except SinkRefused as exc:
            reason = str(exc).removeprefix(f"{where}: ")
            raise SinkRefused(f"{where} refused user {self.config.username!r}: {reason}") from None
        self._client = client
        self.address = address
        self._known.clear()

    @property
    def connected(self) -> bool:
        return self._client is not None

    def disconnect(self) -> None:
        """Drop the client and shut its connections; the next send connects again."""
        if self._client is not None:
            self._shut_ours()
        self._client = None
        self._known.clear()

    def _shut_ours(self) -> int:
        """Shut every connection to the server that is not another client's (see ``_foreign``)."""
        if self._foreign is None:  # never connected: nothing here is ours
            return 0
        return sockets.shut_down_any(sockets.connections_to_any(self._ports) - self._foreign)

    # -- bounded SDK calls ---------------------------------------------------------------

    async def _call(self, awaitable: Awaitable, what: str):
        """Await one SDK call for at most ``send_timeout``; errors become SinkError/SinkRefused.

        On a timeout the request is not merely cancelled (the SDK would keep it, and its
        connection, for ever): its connections are shut down until the SDK has failed it.
        """
        future = asyncio.ensure_future(awaitable)
        deadline = time.monotonic() + self.config.send_timeout
        while not future.done():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait({future}, timeout=min(left, WAIT_SLICE))
            if self.on_wait is not None:
                self.on_wait()
        if not future.done():
            await self._abandon(future)
            raise SinkError(f"{what}: no answer within {self.config.send_timeout:g}s")
        try:
            return future.result()
        except (RuntimeError, OSError, ValueError) as exc:
            raise _classify(what, exc) from None

    async def _abandon(self, future: asyncio.Future) -> None:
        """Make the SDK fail a request the server does not answer, then forget the client.

        Its connection is shut down; the SDK redials at once and re-sends, so every
        connection to the server that is not another client's is shut again until the
        request has failed (within a fraction of a second here; bounded by ABANDON_SECONDS).
        """
        deadline = time.monotonic() + ABANDON_SECONDS
        while not future.done() and time.monotonic() < deadline:
            self._shut_ours()
            await asyncio.wait({future}, timeout=0.05)
            if self.on_wait is not None:
                self.on_wait()
        await asyncio.sleep(SETTLE_SECONDS)  # the SDK may redial once more as the request fails
        self._shut_ours()
        if not future.done():
            log.warning("an Iggy request is still pending %.0fs after its connection was shut", ABANDON_SECONDS)
        future.add_done_callback(_retrieve)
        self._client = None
        self._known.clear()

    # -- streams and topics ---------------------------------------------------------------

    async def ensure_topic(self, stream: str, topic: str) -> None:
        """Create the stream/topic when missing (``create_missing``), else refuse naming it."""
        if (stream, topic) in self._known:
            return
        client = self._require()
        where = f"Iggy topic {stream}/{topic}"
        if await self._call(client.get_stream(stream), f"{where}: reading stream") is None:
            if not self.config.create_missing:
                raise SinkRefused(f"Iggy stream {stream!r} does not exist and iggy.create_missing is false")
            await self._create(client.create_stream(stream), f"{where}: creating stream {stream!r}")
        details = await self._call(client.get_topic(stream, topic), f"{where}: reading topic")
        settings = self.config.topic_settings
        if details is None:
            if not self.config.create_missing:
                raise SinkRefused(f"{where} does not exist and iggy.create_missing is false")
            what = f"{self.config.partitions} partition(s), {settings.describe()}"
            try:
                created = await self._create(
                    client.create_topic(stream, topic, self.config.partitions, **_topic_options(settings)),
                    f"{where}: creating it with {what}")
            except SinkRefused as exc:
                if not topics.refuses_options(exc):
                    raise
                body = topics.encode_create_topic_request(stream, topic, self.config.partitions)
                if await self._create(client.send_binary_request(topics.CREATE_TOPIC_CODE, body), f"{where}: creating it"):
                    log.warning("%s", topics.describe_fallback(self.config.address, where, self.config.partitions, settings))
                created = False
            if created:
                log.info("created %s with %s", where, what)
            details = await self._call(client.get_topic(stream, topic), f"{where}: reading topic")
            if details is None:
                raise SinkError(f"{where}: created, but Iggy does not find it yet")
        elif (stream, topic) not in self._told:
            differences = _settings_differences(details, settings)
            if differences:
                self._told.add((stream, topic))
                log.info("%s exists and is not altered: its %s (iggy.topic_settings applies to topics pgsource"
                         " creates)", where, "; ".join(differences))
        if details.partitions_count < self.config.partitions:
            raise SinkRefused(
                f"{where} has {details.partitions_count} partition(s), iggy.partitions asks for"
                f" {self.config.partitions}: add partitions to the topic or lower iggy.partitions"
            )
        self._known.add((stream, topic))

    async def _create(self, awaitable: Awaitable, what: str) -> bool:
        """True when this call created it; another process may have created it between our
        look-up and our create (False)."""
        try:
            await self._call(awaitable, what)
        except SinkRefused:
            raise
        except SinkError as exc:
            if "already exists" not in str(exc).lower():
                raise
            return False
        return True

    # -- sending ------------------------------------------------------------------------------

    async def send_frames(
        self, stream: str, topic: str, parts: list[PartitionFrames], confirmed: set[int] | None = None
    ) -> int:
        """Send one batch of frames: its requests built here (``encode_send_requests``), then
        ``send_requests``. The service's publisher gets its requests ready-made from the workers."""
        try:
            requests = encode_send_requests(stream, topic, parts, time.time_ns() // 1000)
        except ValueError as exc:
            raise SinkRefused(f"sending to {stream}/{topic}: {exc}") from None
        return await self.send_requests(stream, topic, requests, confirmed)

    async def send_requests(
        self, stream: str, topic: str, requests: Sequence[SendRequest], confirmed: set[int] | None = None
    ) -> int:
        """Send one batch as its ready SendMessages bodies; returns the messages confirmed (all of
        them, or it raises). The SDK adds only the request header.

        ``confirmed`` (kept by the caller across retries of the same batch) collects the
        requests Iggy already confirmed, which a retry skips.
        """
        client = self._require()
        await self.ensure_topic(stream, topic)
        sent = 0
        for ordinal, request in enumerate(requests):
            if confirmed is not None and ordinal in confirmed:
                sent += request.count
                continue
            what = f"sending {request.count} messages to {stream}/{topic}"
            try:
                reply = await self._call(client.send_binary_request(SEND_MESSAGES_CODE, request.body), what)
            except SinkError as exc:
                if _is_not_found(exc):
                    self._known.discard((stream, topic))  # look again (and re-create) before the retry
                raise
            partition = decode_send_confirmation(reply)
            if partition is not None and partition != request.partition:
                raise SinkError(f"sending to {stream}/{topic}: Iggy confirmed partition {partition}, not {request.partition}")
            if confirmed is not None:
                confirmed.add(ordinal)
            sent += request.count
        return sent

    def _require(self) -> iggy.IggyClient:
        if self._client is None:
            raise SinkError("not connected to Iggy")
        return self._client


def decode_send_confirmation(reply: bytes) -> int | None:
    """The partition a SendMessages reply confirms, or None for ``count = 0``.
    The reply is ``[count u32]`` + ``[stream, topic, partition u32][base_offset u64]`` per
    confirmation. The server answers ``count = 0`` for a batch it committed without
    offsets to report (a purge racing the send): a success, as the SDK reads it too.
    """
    if len(reply) == 4 and reply == b"\x00\x00\x00\x00":
        return None
    if len(reply) != 4 + _CONFIRMATION.size or int.from_bytes(reply[:4], "little") != 1:
        raise SinkError(f"unexpected SendMessages reply from Iggy ({len(reply)} bytes)")
    return _CONFIRMATION.unpack_from(reply, 4)[2]


_CONFIRMATION = struct.Struct("<IIIQ")


def _tls_options(config: IggyConfig, address: str) -> dict:
    """``iggy.tls`` as TcpConfig's keywords (none when TLS is off: the SDK's defaults stay)."""
    tls = config.tls
    if not tls.enabled:
        return {}
    options = {"tls_enabled": True, "tls_validate_certificate": tls.validate_certificate,
               "tls_domain": tls.domain or parse_address(address).host}  # each seed's own name
    if tls.ca_file:
        options["tls_ca_file"] = tls.ca_file
    return options


def _topic_options(settings: TopicSettingsConfig) -> dict:
    """``iggy.topic_settings`` as create_topic's keywords; None leaves a setting to the server."""
    expiry = settings.message_expiry
    size = settings.max_size
    return {
        "compression_algorithm": settings.compression,
        "message_expiry": (None if expiry == "server_default" else iggy.IggyExpiry.NeverExpire() if expiry == "never"
                           else iggy.IggyExpiry.ExpireDuration(duration=timedelta(seconds=expiry))),
        "max_topic_size": (None if size == "server_default" else iggy.MaxTopicSize.Unlimited() if size == "unlimited"
                           else iggy.MaxTopicSize.Custom(bytes=size)),
    }


def _settings_differences(details, settings: TopicSettingsConfig) -> list[str]:
    """How an existing topic differs from ``iggy.topic_settings`` (a server_default setting never does)."""
    out = []
    expiry = details.message_expiry
    if isinstance(expiry, iggy.IggyExpiry.ExpireDuration):
        has = round(expiry.duration / timedelta(microseconds=1))
    else:
        has = "never" if isinstance(expiry, iggy.IggyExpiry.NeverExpire) else "server_default"
    wanted = settings.message_expiry
    if wanted != "server_default" and has != (wanted if isinstance(wanted, str) else round(wanted * 1_000_000)):
        shown = has if isinstance(has, str) else format_duration(has / 1_000_000)
        out.append(f"message_expiry is {shown}, iggy.topic_settings.message_expiry says"
                   f" {wanted if isinstance(wanted, str) else format_duration(wanted)}")
    size = details.max_topic_size
    if isinstance(size, iggy.MaxTopicSize.Custom):
        has_size: int | str = size.bytes
    else:
        has_size = "unlimited" if isinstance(size, iggy.MaxTopicSize.Unlimited) else "server_default"
    if settings.max_size != "server_default" and has_size != settings.max_size:
        out.append(f"max_size is {has_size}, iggy.topic_settings.max_size says {settings.max_size}")
    if details.compression_algorithm.lower() != settings.compression:
        out.append(f"compression is {details.compression_algorithm.lower()}, iggy.topic_settings.compression says"
                   f" {settings.compression}")
    return out


def _classify(what: str, exc: BaseException) -> SinkError:
    reason = str(exc) or exc.__class__.__name__
    lowered = reason.lower()
    if any(text in lowered for text in _PERMANENT):
        return SinkRefused(f"{what}: {reason}")
    return SinkError(f"{what}: {reason}")


def _is_not_found(exc: SinkError) -> bool:
    return any(text in str(exc).lower() for text in _NOT_FOUND)


def _retrieve(future: asyncio.Future) -> None:
    """Consume the outcome of an abandoned request (no 'exception never retrieved' noise)."""
    if not future.cancelled():
        future.exception()
