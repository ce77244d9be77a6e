"""The real-server suite: deploy/docker-compose.yml's apache/iggy:0.9.0 and postgres:15.

Every test here is marked ``docker`` and skipped, with the reason, when no container engine
answers (``docker info`` fails) or ``docker compose`` is missing; the check runs once, at
collection, so no pytest-docker fixture is ever set up where it cannot work.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from tests.docker.reader import delete_stream, iggy_answers

HERE = Path(__file__).resolve().parent
COMPOSE_FILE = HERE.parent.parent / "deploy" / "docker-compose.yml"
PG_USER = PG_PASSWORD = "pgsource"


def _engine_problem() -> str | None:
    """Why the suite cannot run here, or None when Docker and compose answer."""
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


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if HERE in Path(str(item.fspath)).parents]
    if not mine:
        return
    problem = _engine_problem()
    for item in mine:
        item.add_marker(pytest.mark.docker)
        if problem:
            item.add_marker(pytest.mark.skip(reason=f"real Iggy/PostgreSQL suite needs Docker: {problem}"))


# -- pytest-docker configuration ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def docker_compose_file():
    # Host ports of this run (compose reads them from the environment): never the fixed
    # 5432/8090 a developer's own servers may already hold.
    os.environ.setdefault("PGSOURCE_PG_PORT", str(_free_port()))
    os.environ.setdefault("PGSOURCE_IGGY_PORT", str(_free_port()))
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name():
    return f"pgsource-test-{os.getpid()}"


@pytest.fixture(scope="session")
def docker_setup():
    # The two servers only (the `app` profile's pgsource image is not built here). No
    # `--wait`: the `real` fixture waits with its own probes (a login to each server), so
    # the suite does not depend on the images' healthcheck commands.
    return ["up -d postgres iggy"]


@pytest.fixture(scope="session")
def docker_cleanup():
    if os.environ.get("PGSOURCE_KEEP_CONTAINERS"):
        return []
    return ["down -v --remove-orphans"]


@dataclass(frozen=True)
class RealServers:
    pg_host: str
    pg_port: int
    iggy_address: str

    def dsn(self, database: str = "app") -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@{self.pg_host}:{self.pg_port}/{database}"


def _pg_answers(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
        return True
    except psycopg2.OperationalError:
        return False


@pytest.fixture(scope="session")
def real(docker_ip, docker_services) -> RealServers:
    """Both servers up and answering (PostgreSQL login, Iggy login through the SDK)."""
    servers = RealServers(
        docker_ip,
        docker_services.port_for("postgres", 5432),
        f"{docker_ip}:{docker_services.port_for('iggy', 8090)}",
    )
    docker_services.wait_until_responsive(lambda: _pg_answers(servers.dsn()), timeout=120, pause=1)
    docker_services.wait_until_responsive(lambda: iggy_answers(servers.iggy_address), timeout=120, pause=1)
    return servers


@pytest.fixture
def real_pg_dsn(real):
    """A database of the real PostgreSQL for this test alone; its slots and itself dropped after."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(real.dsn())
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield real.dsn(name)
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active", (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def real_stream(real):
    """A stream name of the real Iggy for this test alone (pgsource creates it; deleted after)."""
    name = "pgsource-" + uuid.uuid4().hex[:10]
    yield name
    delete_stream(real.iggy_address, name)

