"""A replicated ``iggy-server`` cluster on loopback that the real-server suite controls node by node.

``PGSOURCE_TEST_IGGY_SERVER=/path/to/iggy-server`` plus ``PGSOURCE_TEST_IGGY_CLUSTER=3``:
three processes of the same binary, told apart by ``--replica-id N`` (the server's
``args.rs``), all reading **one generated configuration file**. That file holds only the
``[cluster]`` table (``enabled = true``, the cluster's name, and one ``[[cluster.nodes]]``
entry per node with ``ip = "127.0.0.1"`` and its own ``ports``); the server merges it over
the configuration embedded in the binary (``core/server/config.toml``), so every other key
keeps the server's default. A roster array in the file replaces the embedded two-node
example roster whole. Each node has its own throw-away data directory
(``IGGY_SYSTEM_PATH``) and its listeners on the free loopback ports its roster entry names
(``IGGY_TCP_ADDRESS`` etc.: in cluster mode the roster decides the port, the address the
interface). Nothing of the server is part of this repository.

What a send's acknowledgement means here, and what the cluster can and cannot do, is in
``tests/real/README.md`` ("A 3-node cluster").
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from tests.real.server import PASSWORD, USERNAME, IggyServerProcess

GET_CLUSTER_METADATA_CODE = 12  # core/binary_protocol/src/codes.rs
ROLE_LEADER = 0  # core/common/src/types/cluster/role.rs: Leader, Follower
STATUS_HEALTHY = 0  # core/common/src/types/cluster/status.rs: Healthy, Starting, Stopping, Unreachable, ...
CLUSTER_NAME = "pgsource-test-cluster"
LISTENERS = ("tcp", "quic", "http", "websocket", "tcp_replica")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while chosen: one port picked twice
    makes a node refuse its configuration, "port conflict")."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class NodeInfo:
    """One node as a node's GetClusterMetadata reply describes it."""

    name: str
    ip: str
    tcp_port: int
    role: int
    status: int

    @property
    def leader(self) -> bool:
        return self.role == ROLE_LEADER and self.status == STATUS_HEALTHY


def decode_cluster_metadata(raw: bytes) -> list[NodeInfo]:
    """``[name_len u32][name]`` ``[count u32]`` then per node ``[name_len u32][name][ip_len u32][ip]``
    ``[tcp, quic, http, websocket u16][role u8][status u8]``
    (core/binary_protocol/src/responses/system/get_cluster_metadata.rs)."""
    (name_len,) = struct.unpack_from("<I", raw, 0)
    position = 4 + name_len
    (count,) = struct.unpack_from("<I", raw, position)
    position += 4
    nodes = []
    for _ in range(count):
        (length,) = struct.unpack_from("<I", raw, position)
        name = raw[position + 4:position + 4 + length].decode()
        position += 4 + length
        (length,) = struct.unpack_from("<I", raw, position)
        ip = raw[position + 4:position + 4 + length].decode()
        position += 4 + length
        tcp, _quic, _http, _ws, role, status = struct.unpack_from("<HHHHBB", raw, position)
        position += 10
        nodes.append(NodeInfo(name, ip, tcp, role, status))
    return nodes


async def _metadata(address: str, timeout: float) -> list[NodeInfo]:
    import apache_iggy as iggy

    tcp = iggy.TcpConfig(server_address=address, reconnection=iggy.TcpReconnectionConfig(
        max_retries=0, interval=timedelta(milliseconds=100)))
    client = iggy.IggyClient(tcp)
    await asyncio.wait_for(client.connect(), timeout)
    await asyncio.wait_for(client.login_user(USERNAME, PASSWORD), timeout)
    raw = await asyncio.wait_for(client.send_binary_request(GET_CLUSTER_METADATA_CODE, b""), timeout)
    return decode_cluster_metadata(bytes(raw))


def cluster_metadata(address: str, timeout: float = 5.0) -> list[NodeInfo] | None:
    """The roster as the node at ``address`` sees it (roles, health), or None when it does not answer.
    Runs on a thread of its own, so it may be called from inside a running event loop too."""
    out: list = [None]

    def ask() -> None:
        try:
            out[0] = asyncio.run(_metadata(address, timeout))
        except (RuntimeError, OSError, ValueError, struct.error, asyncio.TimeoutError):
            pass

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout * 3 + 1)
    return out[0]


class ClusterNode(IggyServerProcess):
    """One node: the shared generated configuration, its replica id, its own data and ports."""

    def __init__(self, binary: str, data_dir: str, replica_id: int, ports: dict[str, int], config_path: str) -> None:
        super().__init__(binary, data_dir=data_dir, ports=ports)
        self._own_dir = False  # the cluster removes its directory
        self.replica_id = replica_id
        self.config_path = config_path

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "IGGY_CONFIG_PATH": self.config_path}

    def arguments(self) -> list[str]:
        return ["--with-default-root-credentials", "--replica-id", str(self.replica_id)]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class IggyCluster:
    """``size`` nodes of one binary on loopback: started together, then killed, stopped, frozen one by one."""

    def __init__(self, binary: str, size: int = 3, data_dir: str | None = None) -> None:
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="iggy-cluster-")
        os.makedirs(self.data_dir, exist_ok=True)
        self.config_path = os.path.join(self.data_dir, "cluster.toml")
        ports = iter(free_ports(size * len(LISTENERS)))
        self.nodes = [
            ClusterNode(binary, os.path.join(self.data_dir, f"node{index}"), index,
                        {name: next(ports) for name in LISTENERS}, self.config_path)
            for index in range(size)
        ]

    def configuration(self) -> str:
        """The one configuration file every node reads (merged over the binary's own)."""
        lines = ["[cluster]", "enabled = true", f'name = "{CLUSTER_NAME}"', ""]
        for node in self.nodes:
            ports = ", ".join(f"{name} = {node.ports[name]}" for name in LISTENERS)
            lines += ["[[cluster.nodes]]", f'name = "node-{node.replica_id}"', 'ip = "127.0.0.1"',
                      f"replica_id = {node.replica_id}", f"ports = {{ {ports} }}", ""]
        return "\n".join(lines)

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    def start(self, timeout: float = 120.0) -> IggyCluster:
        with open(self.config_path, "w") as config:
            config.write(self.configuration())
        for node in self.nodes:
            node.launch()
        self.wait_until_serving(timeout)
        return self

    def wait_until_serving(self, timeout: float = 120.0) -> int:
        """Every running node answers, and they agree on one healthy leader; its index."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"iggy-server node {node.replica_id} exited with {node.process.returncode}:\n"
                                       + self.log_tail(node.replica_id))
            views = [cluster_metadata(node.address, 3.0) for node in self.nodes if node.running]
            leaders = {self._index_of(info) for view in views if view for info in view if info.leader}
            seen = (views, leaders)
            if views and all(views) and len(leaders) == 1:
                return leaders.pop()
            time.sleep(0.2)  # the pace of this condition loop
        raise RuntimeError(f"the cluster did not settle on one leader within {timeout:.0f}s: {seen}")

    def _index_of(self, info: NodeInfo) -> int:
        return next(node.replica_id for node in self.nodes if node.ports["tcp"] == info.tcp_port)

    def leader(self) -> int:
        """The index of the node the running nodes name as the healthy leader (the metadata primary)."""
        return self.wait_until_serving(60)

    def log_tail(self, index: int, chars: int = 3000) -> str:
        try:
            with open(self.nodes[index].log_path, errors="replace") as log:
                return log.read()[-chars:]
        except FileNotFoundError:
            return ""

    def fallen_behind(self) -> str | None:
        """The first line in which a node dropped a prepare for a gap (``dropping out-of-order prepare
        (gap)``, iggy_partition.rs / the metadata plane), naming the node; None while every node kept up.

        A node that logged it stays behind (tests/real/README.md, "What the cluster cannot do"): with it
        behind, the loss of one more node leaves no quorum and no send is acknowledged."""
        for index, node in enumerate(self.nodes):
            try:
                with open(node.log_path, errors="replace") as log:
                    for line in log:
                        if "dropping out-of-order prepare (gap)" in line:
                            return f"node {index}: " + re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
            except FileNotFoundError:
                continue
        return None

    def kill(self, index: int) -> None:
        """kill -9 of one node (no flush, no goodbye to its peers)."""
        node = self.nodes[index]
        if node.running:
            node.process.kill()
            node.process.wait()
        node.stop()

    def restart(self, index: int) -> None:
        """Start a stopped or killed node again on its ports and data directory (it rejoins)."""
        self.nodes[index].stop()
        self.nodes[index].launch()

    def freeze(self, index: int) -> None:
        """SIGSTOP of one node: its connections stay open, it answers nothing."""
        if self.nodes[index].running:
            self.nodes[index].freeze()

    def thaw(self, index: int) -> None:
        if self.nodes[index].running:
            self.nodes[index].thaw()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> IggyCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()
