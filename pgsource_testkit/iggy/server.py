"""The stand-in's asyncio TCP server, its background thread and its control API.

A stand-in for tests and local use, not an Iggy server: it speaks enough of the
Iggy 0.9 binary protocol for the real ``apache-iggy==0.9.0`` SDK to log in, manage
streams and topics, send, poll and keep consumer offsets, and it keeps everything
in memory. Tests also use it to inject faults: refused connections, dropped
connections, added latency, frozen replies, restarts.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass

from . import commands, wire
from .batches import decode_frames
from .storage import Storage

_READ_CHUNK = 1 << 18


@dataclass(frozen=True)
class StoredMessage:
    """One stored message as the stand-in holds it; built only by :meth:`IggyStandIn.messages`."""

    partition: int
    offset: int
    id: int
    timestamp: int
    origin_timestamp: int
    payload: bytes
    headers: dict
    raw_headers: bytes


class _Connection(asyncio.BufferedProtocol):
    """One client connection: reads frames into one growing buffer, answers each in order."""

    def __init__(self, owner: IggyStandIn) -> None:
        self._owner = owner
        self._state = commands.ConnectionState()
        self._buf = bytearray(_READ_CHUNK)
        self._len = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._owner._connections.add(transport)
        self._owner._accepted += 1
        if self._owner._frozen:
            transport.pause_reading()

    def connection_lost(self, exc) -> None:
        self._owner._connections.discard(self._transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        need = self._len + max(sizehint, _READ_CHUNK)
        if self._len >= wire.HEADER_SIZE:
            need = max(need, struct.unpack_from("<I", self._buf, wire.SIZE_AT)[0])
        if need > len(self._buf):
            grown = bytearray(max(need, 2 * len(self._buf)))
            grown[: self._len] = memoryview(self._buf)[: self._len]
            self._buf = grown
        return memoryview(self._buf)[self._len :]

    def buffer_updated(self, nbytes: int) -> None:
        self._len += nbytes
        view = memoryview(self._buf)
        pos, end = 0, self._len
        try:
            while end - pos >= wire.HEADER_SIZE:
                size = struct.unpack_from("<I", view, pos + wire.SIZE_AT)[0]
                if size < wire.HEADER_SIZE or size > wire.MAX_FRAME:  # the server drops the connection
                    self._transport.abort()
                    return
                if end - pos < size:
                    break
                header = view[pos : pos + wire.HEADER_SIZE]
                if header[wire.COMMAND_AT] == wire.COMMAND_REQUEST:
                    reply = commands.handle(
                        self._owner._context, self._state, header, view[pos + wire.HEADER_SIZE : pos + size]
                    )
                else:
                    reply = commands.unknown_frame_reply(header)
                self._reply(reply)
                pos += size
        finally:
            view.release()
        if pos:
            remaining = end - pos
            self._buf[:remaining] = self._buf[pos:end]
            self._len = remaining

    def _reply(self, reply: bytes | None) -> None:
        if reply is None:
            return  # dropped without an answer, like the server's refused batches
        latency = self._owner._latency
        if latency > 0:
            asyncio.get_running_loop().call_later(latency, self._write_later, reply)
        else:
            self._transport.write(reply)

    def _write_later(self, reply: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(reply)


class IggyStandIn:
    """An in-process Iggy stand-in running its asyncio loop in a daemon thread."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, username: str = "iggy", password: str = "iggy",
        accept_wheel_topic_options: bool = True,
    ) -> None:
        """``accept_wheel_topic_options``: accept the create-topic options apache-iggy 0.9.0 sends
        (``durability``, ``consumer_offset_durability``), as the released 0.9.0 server does; False
        refuses them like the 2026-08-21 source snapshot the golden transcripts come from."""
        self._host = host
        self._port = port
        self._credentials = commands.Credentials(username, password)
        self._storage = Storage()
        self._latency = 0.0
        self._frozen = False
        self._accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set = set()
        self._context = commands.Context(self._storage, self._credentials, self._advertised_host(), port)
        self._context.accept_wheel_topic_options = accept_wheel_topic_options

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> IggyStandIn:
        """Run the server in a daemon thread; returns once it is listening."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"iggy-standin-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Close the listener and every connection, then end the loop thread."""
        if self._thread is None:
            return
        self._call(self._close(drop=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def restart(self, keep_data: bool = True) -> None:
        """Drop every connection and listen again on the same port, with or without the data."""
        self._call(self._close(drop=True))
        if not keep_data:
            self._storage = Storage()
            self._context.storage = self._storage
        self._call(self._listen())

    def refuse_connections(self, refuse: bool = True) -> None:
        """Stop listening (new connects fail; open connections stay) or listen again."""
        self._call(self._close(drop=False) if refuse else self._listen())

    def drop_connections(self) -> None:
        """Abort every open client connection now."""
        self._call(self._abort_all())

    def set_latency(self, seconds: float) -> None:
        """Delay every reply by ``seconds`` (0 = none)."""
        self._latency = max(float(seconds), 0.0)

    def freeze(self, frozen: bool = True) -> None:
        """Stop reading from every connection, new ones included (what a SIGSTOPped server
        looks like: connects succeed, requests are accepted by the kernel, nothing answers);
        ``freeze(False)`` reads and answers what piled up."""
        self._call(self._set_frozen(frozen))

    async def _set_frozen(self, frozen: bool) -> None:
        self._frozen = frozen
        for transport in list(self._connections):
            if transport.is_closing():
                continue
            if frozen:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def connection_count(self) -> int:
        """Client connections open now (while frozen, a connection the client closed still counts)."""
        return sum(1 for t in list(self._connections) if not t.is_closing())

    def connections_accepted(self) -> int:
        """Client connections accepted since start."""
        return self._accepted

    def confirm_without_offsets(self, enabled: bool = True) -> None:
        """Answer every send with ``count = 0`` after storing it: the server's "committed, no
        offsets to report" (it does so for a send that commits after a purge of its topic)."""
        self._context.confirm_without_offsets = enabled

    def __enter__(self) -> IggyStandIn:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        return f"{self._advertised_host()}:{self._port}"

    # -- inspection (any thread) ---------------------------------------------------------

    def streams(self) -> list[str]:
        with self._storage.lock:
            return [s.name for s in self._storage.streams.values()]

    def topics(self, stream: str) -> list[str]:
        with self._storage.lock:
            return [t.name for t in self._storage.stream(stream).topics.values()]

    def message_count(self, stream: str, topic: str) -> int:
        """How many messages a topic holds (0 when it does not exist), without decoding them."""
        with self._storage.lock:
            stream_found = self._storage.find_stream(stream)
            if stream_found is None or topic not in [t.name for t in stream_found.topics.values()]:
                return 0
            return self._storage.topic(stream, topic)[1].messages_count

    def consumer_offsets(self, stream: str, topic: str) -> dict[tuple[int, int, bytes], int]:
        """Every consumer offset stored for a topic: (partition, consumer kind, consumer id) → offset
        (what a reader that must leave no trace, ``pgsource tail``, is checked against)."""
        with self._storage.lock:
            stream_found = self._storage.find_stream(stream)
            if stream_found is None or topic not in [t.name for t in stream_found.topics.values()]:
                return {}
            partitions = self._storage.topic(stream, topic)[1].partitions
            return {(p.id, *consumer): offset for p in partitions for consumer, offset in p.consumer_offsets.items()}

    def last_stored_at(self, stream: str, topic: str) -> int:
        """When the newest batch of a topic was stored (server time, µs since the epoch; 0 when none),
        without decoding any message."""
        with self._storage.lock:
            stream_found = self._storage.find_stream(stream)
            if stream_found is None or topic not in [t.name for t in stream_found.topics.values()]:
                return 0
            partitions = self._storage.topic(stream, topic)[1].partitions
            return max((p.base_timestamps[-1] for p in partitions if p.base_timestamps), default=0)

    def messages(self, stream: str, topic: str, partition: int | None = None) -> list[StoredMessage]:
        """Every stored message, by partition then offset (one partition when given)."""
        storage = self._storage
        with storage.lock:
            _, found = storage.topic(stream, topic)
            chosen = found.partitions if partition is None else [found.partition(partition)]
            # Stored blobs are never mutated once appended: decode them outside the lock.
            snapshot = [(p.id, list(zip(p.blobs, p.starts, strict=True))) for p in chosen]
        return self._decode(snapshot)

    def messages_after(self, stream: str, topic: str, cursor: dict[int, int] | None = None
                       ) -> tuple[list[StoredMessage], dict[int, int]]:
        """The messages stored since ``cursor`` (what the previous call returned; None: since the
        start), by partition then offset, and the cursor for the next call: a reader that keeps
        up with a large topic decodes each message once. Nothing when the topic does not exist."""
        storage = self._storage
        cursor = dict(cursor or {})
        with storage.lock:
            stream_found = storage.find_stream(stream)
            if stream_found is None or topic not in [t.name for t in stream_found.topics.values()]:
                return [], cursor
            _, found = storage.topic(stream, topic)
            snapshot = []
            for p in found.partitions:
                done = cursor.get(p.id, 0)
                snapshot.append((p.id, list(zip(p.blobs[done:], p.starts[done:], strict=True))))
                cursor[p.id] = len(p.blobs)
        return self._decode(snapshot), cursor

    @staticmethod
    def _decode(snapshot) -> list[StoredMessage]:
        out = []
        for partition_id, stored in snapshot:
            for blob, starts in stored:
                for offset, msg_id, ts, origin, payload, raw in decode_frames(blob, starts):
                    headers = wire.decode_typed_pairs(raw) if raw else {}
                    out.append(StoredMessage(partition_id, offset, msg_id, ts, origin, payload, headers, raw))
        return out

    # -- loop side -------------------------------------------------------------------------

    def _advertised_host(self) -> str:
        return "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host

    def _call(self, coro, timeout: float = 10.0):
        if self._loop is None:
            coro.close()
            raise RuntimeError("the stand-in is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self._host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._context.port = self._port

    async def _close(self, drop: bool) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if drop:
            await self._abort_all()

    async def _abort_all(self) -> None:
        for transport in list(self._connections):
            transport.abort()
        self._connections.clear()
        await asyncio.sleep(0)
