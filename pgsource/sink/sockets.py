"""The TCP connections this process holds to an Iggy server, found and shut down from outside the SDK.

apache-iggy 0.9.0 has no request timeout and no way to close a client: a request the
server never answers (a batch it refused at admission, a frozen or half-open server)
keeps its future, its connection and every later request of that client pending for
ever, and cancelling the asyncio future does not release them. Such an abandoned
future also completes later from a tokio thread, possibly while the interpreter
finalizes, which aborts the process (SIGABRT). Shutting the connection's socket down
makes the SDK fail that request at once (``Disconnected``, with reconnection off), so
nothing is left pending. The SDK keeps its own descriptor; only the socket is shut.
"""

from __future__ import annotations

import os
import socket

Endpoint = tuple  # (host, port[, flowinfo, scope_id]) as getsockname() gives it

_FD_DIRS = ("/proc/self/fd", "/dev/fd")


def _socket_descriptors() -> list[int]:
    """This process's descriptors that are sockets (no descriptor is opened to find them:
    near the process's descriptor limit a dup() would fail and hide the very socket sought)."""
    for directory in _FD_DIRS:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        found = []
        for name in names:
            try:
                if directory.startswith("/proc") and not os.readlink(f"{directory}/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            found.append(int(name))
        return found
    return []


def _inspect(fd: int, shut: set | None) -> Endpoint | None:
    """The local endpoint of TCP socket ``fd`` with its peer port, shutting it down when its
    endpoint is in ``shut``. The descriptor is borrowed (detached again), never closed."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return None
        endpoint = (sock.getsockname(), sock.getpeername()[1])
        if shut is not None and endpoint in shut:
            sock.shutdown(socket.SHUT_RDWR)
        return endpoint
    except OSError:
        return None  # not connected, or already shut
    finally:
        sock.detach()


def connections_to(port: int) -> set[Endpoint]:
    """Local endpoints of every connected TCP socket of this process whose peer port is ``port``."""
    found = set()
    for fd in _socket_descriptors():
        endpoint = _inspect(fd, None)
        if endpoint is not None and endpoint[1] == port:
            found.add(endpoint[0])
    return found


def shut_down(port: int, endpoints: set[Endpoint]) -> int:
    """Shut down (both directions) this process's connections to ``port`` from ``endpoints``; how many."""
    wanted = {(endpoint, port) for endpoint in endpoints}
    count = 0
    for fd in _socket_descriptors():
        if _inspect(fd, wanted) in wanted:
            count += 1
    return count


def connections_to_any(ports: set[int]) -> set[tuple[Endpoint, int]]:
    """(local endpoint, peer port) of every connected TCP socket of this process to one of ``ports``
    (the nodes of a cluster listen on several)."""
    found = set()
    for fd in _socket_descriptors():
        endpoint = _inspect(fd, None)
        if endpoint is not None and endpoint[1] in ports:
            found.add(endpoint)
    return found


def shut_down_any(connections: set[tuple[Endpoint, int]]) -> int:
    """Shut down (both directions) these connections of this process, as ``connections_to_any`` names them."""
    count = 0
    for fd in _socket_descriptors():
        if _inspect(fd, connections) in connections:
            count += 1
    return count
