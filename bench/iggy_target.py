"""The Iggy the benchmark writes to (the stand-in it starts, or a real server at ``--iggy``) and its own client onto it."""

from __future__ import annotations

import asyncio
import struct

import psutil

CREATE_TOPIC = 302  # Iggy's binary command code


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process of this machine; NaN when unknown or gone."""
    if pid is None:
        return float("nan")
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return times.user + times.system


class Target:
    """The Iggy the benchmark writes to: the stand-in it starts, or a real server (--iggy)."""

    def __init__(self, address: str, kind: str, pid: int | None, username: str = "iggy", password: str = "iggy",
                 pids: list[int] | None = None) -> None:
        self.address = address
        self.kind = kind  # "stand-in" | "iggy-server"
        self.pid = pid  # its process on this machine, for CPU; None when unknown
        self.pids = pids  # every node of a cluster (--iggy-pids): CPU is their sum
        self.username = username
        self.password = password
        self.precreate = False  # True: the server refuses the wheel's create-topic options

    def cpu_seconds(self) -> float:
        if self.pids:
            return sum(process_cpu_seconds(pid) for pid in self.pids)
        return process_cpu_seconds(self.pid)


def local_listener_pid(address: str) -> int | None:
    """The process of this machine listening on ``address``'s port (the real server), if any."""
    port = int(address.rsplit(":", 1)[1])
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.Error:
        return None
    return None


async def create_topic_without_options(client, stream: str, topic: str, partitions: int = 1) -> None:
    """CreateTopic as a raw request, without the create-topic options older servers refuse."""
    stream_id, name = stream.encode(), topic.encode()  # the stream by name (kind 2), then the topic's fields
    body = bytes((2, len(stream_id))) + stream_id + struct.pack("<I", partitions) + bytes((len(name),)) + name
    await client.send_binary_request(CREATE_TOPIC, body)


async def _connect_client(address: str, username: str, password: str):
    """A plain SDK client (the bench counts and reads back with the SDK's own calls)."""
    import apache_iggy as iggy

    client = iggy.IggyClient(iggy.TcpConfig(server_address=address))
    await client.connect()
    await client.login_user(username, password)
    return client


class IggyView:
    """The benchmark's own SDK client: counts what Iggy acknowledged, reads it back."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(_connect_client(target.address, target.username, target.password))

    def refuses_wheel_topic_options(self) -> bool:
        """True when the server refuses the create-topic options apache-iggy 0.9.0 sends."""

        async def probe() -> bool:
            await self.client.create_stream("bench_probe")
            try:
                await self.client.create_topic("bench_probe", "probe", 1)
                return False
            except RuntimeError as exc:
                if "unsupported option key" not in str(exc).lower():
                    raise
                return True
            finally:
                await self.client.delete_stream("bench_probe")

        return self.loop.run_until_complete(probe())

    def precreate(self, stream: str, topic: str, partitions: int = 1) -> None:
        """The stream and the topic, created without create-topic options."""

        async def create() -> None:
            if await self.client.get_stream(stream) is not None:  # left by an interrupted run
                await self.client.delete_stream(stream)
            await self.client.create_stream(stream)
            await create_topic_without_options(self.client, stream, topic, partitions)

        self.loop.run_until_complete(create())

    def count(self, stream: str, topic: str) -> int:
        async def messages() -> int:
            details = await self.client.get_topic(stream, topic)
            return 0 if details is None else sum(partition.messages_count for partition in details.partitions)

        try:
            return self.loop.run_until_complete(messages())
        except RuntimeError:
            return 0

    def drop(self, stream: str) -> None:
        """Free Iggy's memory and disk between runs (it keeps every message it was sent)."""

        async def delete() -> None:  # the SDK's awaitables need a running loop when created
            await self.client.delete_stream(stream)

        try:
            self.loop.run_until_complete(delete())
        except RuntimeError as exc:
            raise RuntimeError(f"deleting stream {stream} from Iggy: {exc}") from None

    def read_all(self, stream: str, topic: str, total: int) -> list:
        import apache_iggy as iggy

        out: list = []
        while len(out) < total:
            async def poll(offset: int):
                return await self.client.poll_messages(
                    stream, topic, consumer=iggy.Consumer.Single("bench"),
                    polling_strategy=iggy.PollingStrategy.Offset(value=offset),
                    count=5000, auto_commit=False, partition_id=0,
                )

            polled = self.loop.run_until_complete(poll(len(out)))
            if not polled:
                break
            out.extend((m.timestamp(), m.payload()) for m in polled)
        return out
