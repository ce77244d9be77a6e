"""The real-server suite: pgsource end to end against a real Iggy server, never the stand-in.

Which server (the first that applies):

1. ``PGSOURCE_TEST_IGGY_SERVER=/path/to/iggy-server``: the suite runs its own instances
   (``tests/real/server.py``: loopback, free ports for all four listeners, a throw-away
   data directory, root ``iggy``/``iggy``); tests that restart, stop or freeze the server
   get an instance of their own. PostgreSQL is the private test cluster.
2. ``PGSOURCE_TEST_IGGY=HOST:PORT`` (credentials ``PGSOURCE_TEST_IGGY_USERNAME`` /
   ``PGSOURCE_TEST_IGGY_PASSWORD``, default ``iggy``/``iggy``): a running server. Tests that
   need to control the server process skip, saying so. PostgreSQL is the private cluster.
   With ``PGSOURCE_TEST_IGGY_CLUSTER=3`` as well, the server of the session is a replicated
   cluster of that many nodes of the binary on loopback (``tests/real/cluster.py``), and the
   cluster tests (``test_real_cluster*.py``) run; without it they skip, saying so.
3. A container engine with ``docker compose``: ``deploy/docker-compose.yml`` (the
   ``apache/iggy:0.9.0`` and ``postgres:15`` images); the server is controlled with
   ``docker compose stop/start/pause/unpause``.

With none of them, every test here is skipped at collection with the reason (the one
allowed skip). All tests carry the ``real_iggy`` marker.

A server older than the ``apache-iggy`` 0.9.0 wheel (the 2026-08-21 source snapshot)
refuses the create-topic options the wheel sends. The session probes for it once; where
it refuses, tests that need topics pre-create them without options (:func:`topics_for`)
and run pgsource with ``create_missing: false``, and ``test_real_refusals.py`` keeps the
refusal itself on record.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

from tests.real import reader
from tests.real.cluster import IggyCluster
from tests.real.server import IggyServerProcess, free_port, login_works

HERE = Path(__file__).resolve().parent
COMPOSE_FILE = HERE.parent.parent / "deploy" / "docker-compose.yml"
PG_USER = PG_PASSWORD = "pgsource"
CREATE_TOPIC_CODE = 302


def _engine_problem() -> str | None:
    """Why the compose stack cannot run here, or None when Docker and compose answer."""
    if shutil.which("docker") is None:
        return "no `docker` client on PATH"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 10s"
    if info.returncode != 0:
        detail = (info.stderr or info.stdout).strip().splitlines()
        return "no container engine answers (`docker info`: " + (detail[-1] if detail else f"exit {info.returncode}") + ")"
    try:
        compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "`docker compose version` did not answer within 10s"
    if compose.returncode != 0:
        return "the `docker compose` plugin is not installed"
    return None


def _cluster_size() -> tuple[int | None, str]:
    """(nodes, why not) from ``PGSOURCE_TEST_IGGY_CLUSTER``: None when unset or unusable."""
    value = os.environ.get("PGSOURCE_TEST_IGGY_CLUSTER", "")
    if not value:
        return None, ("needs a replicated Iggy: set PGSOURCE_TEST_IGGY_SERVER=/path/to/iggy-server and"
                      " PGSOURCE_TEST_IGGY_CLUSTER=3")
    if not value.isdigit() or int(value) < 3:
        return None, f"PGSOURCE_TEST_IGGY_CLUSTER={value}: give the number of nodes, at least 3"
    if not os.environ.get("PGSOURCE_TEST_IGGY_SERVER"):
        return None, "PGSOURCE_TEST_IGGY_CLUSTER needs PGSOURCE_TEST_IGGY_SERVER=/path/to/iggy-server as well"
    return int(value), ""


def _mode() -> tuple[str | None, str]:
    """(mode, why not) — mode is "binary", "cluster", "address", "compose" or None."""
    if os.environ.get("PGSOURCE_TEST_IGGY_SERVER"):
        binary = os.environ["PGSOURCE_TEST_IGGY_SERVER"]
        if not os.access(binary, os.X_OK):
            return None, f"PGSOURCE_TEST_IGGY_SERVER={binary} is not an executable"
        if os.environ.get("PGSOURCE_TEST_IGGY_CLUSTER"):
            size, problem = _cluster_size()
            return ("cluster", "") if size else (None, problem)
        return "binary", ""
    if os.environ.get("PGSOURCE_TEST_IGGY"):
        return "address", ""
    problem = _engine_problem()
    if problem is None:
        return "compose", ""
    return None, ("needs a real Iggy: set PGSOURCE_TEST_IGGY_SERVER=/path/to/iggy-server or"
                  f" PGSOURCE_TEST_IGGY=HOST:PORT, or a container engine ({problem})")


MODE, WHY_NOT = _mode()
CLUSTER_SIZE, WHY_NO_CLUSTER = _cluster_size()


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if HERE in Path(str(item.fspath)).parents]
    for item in mine:
        item.add_marker(pytest.mark.real_iggy)
        if MODE is None:
            item.add_marker(pytest.mark.skip(reason=f"real-server suite {WHY_NOT}"))


# -- the server -----------------------------------------------------------------------------


class ComposeControl:
    """The compose stack's iggy service, stopped, started and frozen through ``docker compose``."""

    def __init__(self, project: str) -> None:
        self.project = project

    def _compose(self, *args: str) -> None:
        subprocess.run(["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args, "iggy"],
                       check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        self._compose("stop")

    def start(self) -> None:
        self._compose("start")

    def restart(self, down_for: float = 0.0) -> None:
        import time

        self.stop()
        if down_for:
            time.sleep(down_for)  # the outage itself is what is being tested
        self.start()

    def freeze(self) -> None:
        self._compose("pause")

    def thaw(self) -> None:
        self._compose("unpause")


class WholeClusterControl:
    """Every node of a cluster at once: the outage tests' "server" restarted, stopped, frozen."""

    def __init__(self, cluster: IggyCluster) -> None:
        self.cluster = cluster

    def stop(self) -> None:
        for node in self.cluster.nodes:
            node.stop()

    def start(self) -> None:
        for node in self.cluster.nodes:
            node.launch()
        self.cluster.wait_until_serving()

    def restart(self, down_for: float = 0.0) -> None:
        import time

        self.stop()
        if down_for:
            time.sleep(down_for)  # the outage itself is what is being tested
        self.start()

    def freeze(self) -> None:
        for node in self.cluster.nodes:
            node.freeze()

    def thaw(self) -> None:
        for node in self.cluster.nodes:
            node.thaw()


@dataclass
class RealIggy:
    address: str  # what pgsource's iggy.address is set to
    username: str
    password: str
    control: object | None  # IggyServerProcess, ComposeControl or WholeClusterControl: restart(down_for), stop(), start(), freeze(), thaw()
    refuses_wheel_topic_options: bool = False
    cluster: IggyCluster | None = None  # the nodes, one by one (cluster mode)

    @property
    def addresses(self) -> list[str]:
        """Where a reader may connect, in order (every node of a cluster, the running ones first)."""
        if self.cluster is None:
            return [self.address]
        nodes = sorted(self.cluster.nodes, key=lambda node: not node.running)
        return [node.address for node in nodes]

    def iggy_section(self, stream: str, **keys) -> dict:
        """The ``iggy:`` section of a pgsource config for this server."""
        return {"address": self.address, "username": self.username, "password": self.password, "stream": stream, **keys}


def _probe_topic_options(address: str, username: str, password: str) -> bool:
    """True when the server refuses the create-topic options apache-iggy 0.9.0 sends."""
    import apache_iggy as iggy

    stream = "pgsource-probe-" + uuid.uuid4().hex[:8]

    async def probe() -> bool:
        client = iggy.IggyClient(iggy.TcpConfig(server_address=address))
        await client.connect()
        await client.login_user(username, password)
        await client.create_stream(stream)
        try:
            await client.create_topic(stream, "probe", 1)
            return False
        except RuntimeError as exc:
            if "unsupported option key" not in str(exc).lower():
                raise
            return True
        finally:
            await client.delete_stream(stream)

    return asyncio.run(probe())


def _wait_for(predicate, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)  # the pace of this condition loop
    raise RuntimeError(f"{what} did not answer within {timeout:.0f}s")


@pytest.fixture(scope="session")
def compose_stack():
    """``docker compose up -d postgres iggy`` on free ports; ``down -v`` at the end."""
    if MODE != "compose":
        yield None
        return
    project = f"pgsource-test-{os.getpid()}"
    os.environ.setdefault("PGSOURCE_PG_PORT", str(free_port()))
    os.environ.setdefault("PGSOURCE_IGGY_PORT", str(free_port()))
    base = ["docker", "compose", "-p", project, "-f", str(COMPOSE_FILE)]
    subprocess.run([*base, "up", "-d", "postgres", "iggy"], check=True, timeout=900)
    try:
        yield project
    finally:
        if not os.environ.get("PGSOURCE_KEEP_CONTAINERS"):
            subprocess.run([*base, "down", "-v", "--remove-orphans"], timeout=300)


@pytest.fixture(scope="session")
def real_iggy(compose_stack, tmp_path_factory) -> RealIggy:
    """The real server of this session (see the module docstring)."""
    username = os.environ.get("PGSOURCE_TEST_IGGY_USERNAME", "iggy")
    password = os.environ.get("PGSOURCE_TEST_IGGY_PASSWORD", "iggy")
    server = cluster = None
    if MODE == "binary":
        server = IggyServerProcess(os.environ["PGSOURCE_TEST_IGGY_SERVER"],
                                   data_dir=str(tmp_path_factory.mktemp("iggy-session"))).start()
        address, control = server.address, None
    elif MODE == "cluster":
        server = cluster = IggyCluster(os.environ["PGSOURCE_TEST_IGGY_SERVER"], CLUSTER_SIZE,
                                       data_dir=str(tmp_path_factory.mktemp("iggy-cluster"))).start()
        address, control = cluster_address(cluster), None
    elif MODE == "address":
        address, control = os.environ["PGSOURCE_TEST_IGGY"], None
    else:
        address, control = f"127.0.0.1:{os.environ['PGSOURCE_IGGY_PORT']}", ComposeControl(compose_stack)
        _wait_for(lambda: login_works(address, username, password), 120, f"Iggy at {address}")
    try:
        yield RealIggy(address, username, password, control, _probe_topic_options(address.split(",")[0], username, password), cluster)
    finally:
        if server is not None:
            server.close()


@pytest.fixture
def controlled_iggy(real_iggy, tmp_path) -> RealIggy:
    """A server this test may restart, stop and freeze: its own instance (binary), or the compose one."""
    if MODE == "address":
        pytest.skip("needs control of the server process (restart, outage, freeze): set"
                    " PGSOURCE_TEST_IGGY_SERVER=/path/to/iggy-server, or run with a container engine")
    if MODE == "compose":
        yield real_iggy
        return
    if MODE == "cluster":
        with IggyCluster(os.environ["PGSOURCE_TEST_IGGY_SERVER"], CLUSTER_SIZE, data_dir=str(tmp_path / "iggy")) as cluster:
            yield RealIggy(cluster_address(cluster), "iggy", "iggy", WholeClusterControl(cluster),
                           real_iggy.refuses_wheel_topic_options, cluster)
        return
    server = IggyServerProcess(os.environ["PGSOURCE_TEST_IGGY_SERVER"], data_dir=str(tmp_path / "iggy")).start()
    try:
        yield RealIggy(server.address, "iggy", "iggy", server, real_iggy.refuses_wheel_topic_options)
    finally:
        server.close()


def cluster_address(cluster: IggyCluster) -> str:
    """``iggy.address`` for pgsource against a cluster: every node, as a seed list."""
    return ",".join(cluster.addresses)


@pytest.fixture
def iggy_cluster(real_iggy, tmp_path) -> RealIggy:
    """A cluster of its own for a test that kills, stops or freezes single nodes."""
    if MODE != "cluster":
        pytest.skip(f"cluster test: {WHY_NO_CLUSTER}")
    with IggyCluster(os.environ["PGSOURCE_TEST_IGGY_SERVER"], CLUSTER_SIZE, data_dir=str(tmp_path / "iggy")) as cluster:
        yield RealIggy(cluster_address(cluster), "iggy", "iggy", None, real_iggy.refuses_wheel_topic_options, cluster)


# -- PostgreSQL -------------------------------------------------------------------------------


def _compose_dsn(database: str = "app") -> str:
    return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{os.environ['PGSOURCE_PG_PORT']}/{database}"


def _pg_answers(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


@pytest.fixture
def real_pg_dsn(request, compose_stack):
    """A database of its own: on the compose PostgreSQL, else on the private test cluster."""
    if compose_stack is None:
        cluster = request.getfixturevalue("pg_cluster")
        # under load the private cluster can still be "starting up" when its first test begins
        _wait_for(lambda: _pg_answers(cluster.dsn()), 120, "the private PostgreSQL cluster")
        yield request.getfixturevalue("pg_dsn")
        return
    _wait_for(lambda: _pg_answers(_compose_dsn()), 120, "PostgreSQL")
    name = "t_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(_compose_dsn())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield _compose_dsn(name)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                        " WHERE database = %s AND NOT active", (name,))
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        admin.close()


@pytest.fixture
def real_stream(real_iggy):
    """A stream name for this test alone, deleted afterwards."""
    name = "pgsource-" + uuid.uuid4().hex[:10]
    yield name
    reader.delete_stream(real_iggy, name)


def topics_for(iggy: RealIggy, stream: str, topics: list[str], partitions: int = 1) -> dict:
    """The ``iggy:`` keys for pgsource to write ``topics`` with ``partitions`` partitions.

    On a server that accepts the wheel's create-topic options pgsource creates them
    (``create_missing: true``, the default). On one that refuses them (older than the
    wheel), they are created here without options and pgsource runs with
    ``create_missing: false``, which then checks them (partition count included).
    """
    if not iggy.refuses_wheel_topic_options:
        return {"partitions": partitions}
    reader.create_topics(iggy, stream, topics, partitions)
    return {"partitions": partitions, "create_missing": False}
