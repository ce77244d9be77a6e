"""``RecordingProxy``: what crossed the wire between the SDK and a real server, recorded for a transcript."""

from __future__ import annotations

import asyncio
import threading
import time

from . import wire
from .wire import frame_size


class RecordingProxy:
    """A TCP proxy in a thread: forwards to ``upstream`` and records the frames of each
    connection in order (client → server requests, server → client replies).

    A request whose size is over ``store_limit`` is recorded by its size only (the
    transcript regenerates it). A connection the server closed is marked ``closed``.
    """

    def __init__(self, upstream: str, store_limit: int = 1 << 20) -> None:
        self.upstream = upstream
        self.store_limit = store_limit
        self.connections: list[list[tuple[str, bytes | int, float]]] = []
        self.closed_by_server: list[bool] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="iggy-recording-proxy")
        self._server = None
        self.port = 0

    def start(self) -> RecordingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_reader, client_writer) -> None:
        host, port = self.upstream.rsplit(":", 1)
        server_reader, server_writer = await asyncio.open_connection(host, int(port))
        index = len(self.connections)
        self.connections.append([])
        self.closed_by_server.append(False)
        frames = self.connections[index]
        up = asyncio.create_task(self._pump(client_reader, server_writer, frames, "request"))
        down = asyncio.create_task(self._pump(server_reader, client_writer, frames, "reply"))
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down in done:
            self.closed_by_server[index] = True
        for task in pending:
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()

    async def _pump(self, reader, writer, frames: list, direction: str) -> None:
        try:
            while True:
                header = await reader.readexactly(wire.HEADER_SIZE)
                size = frame_size(header)
                if size > self.store_limit:
                    frames.append((direction, size, time.monotonic()))
                    writer.write(header)
                    remaining = size - wire.HEADER_SIZE
                    while remaining:
                        chunk = await reader.read(min(remaining, 1 << 20))
                        if not chunk:
                            return
                        writer.write(chunk)
                        remaining -= len(chunk)
                        await writer.drain()
                    continue
                body = await reader.readexactly(size - wire.HEADER_SIZE)
                frames.append((direction, header + body, time.monotonic()))
                writer.write(header + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    def mark(self) -> tuple[int, int]:
        """(connection count, frames in the last connection): where the next step starts."""
        if not self.connections:
            return 0, 0
        return len(self.connections), len(self.connections[-1])
