"""A private, throw-away PostgreSQL cluster for the tests, the benchmarks and the demo.

It is started from the server binaries on the machine (``pg_ctl``/``initdb``) by
pytest-postgresql's ``PostgreSQLExecutor``, in a temporary directory, on a free port,
with ``wal_level=logical``. PostgreSQL refuses to run as root, and CI runs as root:
then every ``pg_ctl`` call goes through a two-line wrapper that drops to an
unprivileged user (``postgres`` when it exists, else ``nobody``) with ``runuser``.
The executor has no option for that, which is the only reason for the wrapper.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "64",
    "max_wal_senders": "64",
    "max_connections": "200",
    "max_prepared_transactions": "20",  # tests prepare (2PC) transactions that commit late
    "fsync": "off",  # a test cluster: speed over crash safety of the cluster itself
    "synchronous_commit": "on",  # logical decoding reads only flushed WAL: keep CDC latency real
    "full_page_writes": "off",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "wal_sender_timeout": "0",
    "timezone": "UTC",
}


def find_pg_ctl() -> str:
    """Locate ``pg_ctl``: on PATH, else in Debian's versioned directory."""
    found = shutil.which("pg_ctl")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        raise FileNotFoundError(
            "pg_ctl not found: install the PostgreSQL server (Debian: apt-get install postgresql-15)"
        )
    return candidates[-1]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) exists")


@dataclass
class LocalPostgres:
    """One private PostgreSQL cluster; ``start()`` it, ``dsn()`` to reach it, ``stop()`` it."""

    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)
    superuser: str = "postgres"
    base_dir: str = ""
    _executor: object = None

    def start(self) -> LocalPostgres:
        from pytest_postgresql.executors import PostgreSQLExecutor

        self.base_dir = tempfile.mkdtemp(prefix="pgsource-pg-")
        os.chmod(self.base_dir, 0o755)
        pg_ctl = find_pg_ctl()
        if os.geteuid() == 0:
            pg_ctl = self._drop_privileges(pg_ctl)
        merged = {**SERVER_SETTINGS, **self.settings}
        options = " ".join(f"-c {key}={value}" for key, value in merged.items())
        self._executor = PostgreSQLExecutor(
            executable=pg_ctl,
            host="127.0.0.1",
            port=self.port,
            datadir=os.path.join(self.base_dir, "data"),
            unixsocketdir=self.base_dir,
            logfile=os.path.join(self.base_dir, "postgresql.log"),
            startparams="-w",
            dbname="postgres",
            user=self.superuser,
            postgres_options=options,
            timeout=120,
        )
        self._executor.start()
        self._wait_until_accepting()
        return self

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (an outage); ``mode``: fast or immediate (a crash)."""
        import subprocess

        executor = self._executor
        if mode != "fast":
            subprocess.check_output([executor.executable, "stop", "-D", executor.datadir, "-m", mode], timeout=60)
        try:
            executor.stop()  # pg_ctl stop -m fast, then the executor forgets its process
        except subprocess.CalledProcessError:  # already stopped (immediate)
            from mirakuru import SimpleExecutor

            SimpleExecutor.stop(executor)

    def start_server(self) -> None:
        """Start the server stopped by ``stop_server`` on its data; returns once it accepts connections."""
        self._executor.start()
        self._wait_until_accepting()

    def _wait_until_accepting(self, seconds: float = 60.0) -> None:
        """pg_ctl -w returns once the postmaster answers; a loaded host may still say "starting up"."""
        import time

        import psycopg2

        deadline = time.monotonic() + seconds
        while True:
            try:
                psycopg2.connect(self.dsn(), connect_timeout=5).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _drop_privileges(self, pg_ctl: str) -> str:
        """Write a pg_ctl wrapper that runs the real one as an unprivileged user."""
        user = _unprivileged_user()
        entry = pwd.getpwnam(user)
        os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        wrapper = os.path.join(self.base_dir, "pg_ctl")
        with open(wrapper, "w") as out:
            out.write(f'#!/bin/sh\ncd /\nexec runuser -u {user} -- {pg_ctl} "$@"\n')
        os.chmod(wrapper, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        return wrapper

    def stop(self) -> None:
        if self._executor is not None:
            try:
                self._executor.stop()
            finally:
                self._executor = None
        if self.base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = ""

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URI for ``dbname`` on this cluster, as the superuser."""
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name (a fresh one per test)."""
        import psycopg2

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(self.dsn())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its sessions and dropping its replication slots first."""
        import psycopg2

        conn = psycopg2.connect(self.dsn())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                cur.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE database = %s AND NOT active",
                    (name,),
                )
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

    def databases(self) -> Iterator[str]:
        import psycopg2

        conn = psycopg2.connect(self.dsn())
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")
                yield from (row[0] for row in cur.fetchall())
        finally:
            conn.close()
