"""A private, throw-away PostgreSQL cluster for the tests, the benchmarks and the demo.

It is started from the server binaries on the machine with ``pg_ctl`` (``initdb``, then
``start -w``), in a temporary directory, on a free port, with ``wal_level=logical``.
PostgreSQL refuses to run as root, and CI runs as root: then every ``pg_ctl`` call goes
through a two-line wrapper that drops to an unprivileged user (``postgres`` when it
exists, else ``nobody``) with ``runuser``.

It calls ``pg_ctl`` itself rather than through pytest-postgresql's executor: the demo
(``pgsource demo``) starts this cluster too, so a test-only library would become a
runtime dependency of ``pip install pgsource``; and the executor cannot drop root either.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
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


def _remove(directory: str, seconds: float = 10.0) -> None:
    """Remove a cluster's directory; again while an interrupted initdb (Ctrl-C reaches it too) still
    writes into it for a moment."""
    import time

    deadline = time.monotonic() + seconds
    shutil.rmtree(directory, ignore_errors=True)
    while os.path.exists(directory) and time.monotonic() < deadline:
        time.sleep(0.1)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class LocalPostgres:
    """One private PostgreSQL cluster; ``start()`` it, ``dsn()`` to reach it, ``stop()`` it.

    ``password``: TCP connections must authenticate with SCRAM (``scram-sha-256`` in
    pg_hba.conf), as the superuser with this password, which ``dsn()`` then carries (the
    test suite's cluster does this, so that a password leaked into a log can be found).
    ``tls``: the server gets a certificate signed by a throw-away CA (``self.ca``), and
    accepts TCP connections only over TLS (``hostssl``; plain ``host`` lines reject): by
    password (SCRAM), or by client certificate (``cert``) for the roles in ``cert_users``.
    ``dsn()`` then asks for ``sslmode=verify-full`` against that CA.
    """

    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)
    superuser: str = "postgres"
    base_dir: str = ""
    password: str | None = None
    tls: bool = False
    cert_users: tuple[str, ...] = ()
    ca: object = None  # pgsource_testkit.tls.CertificateAuthority when tls
    _pg_ctl: str = ""
    _options: str = ""
    _running: bool = False

    def start(self) -> LocalPostgres:
        self._make_base_dir()
        pg_ctl = find_pg_ctl()
        if os.geteuid() == 0:
            pg_ctl = self._drop_privileges(pg_ctl)
        self._pg_ctl = pg_ctl
        self._run_pg_ctl("initdb", "-o", f"--username={self.superuser} --auth=trust --encoding=UTF8 --locale=C.UTF-8")
        merged = {**SERVER_SETTINGS, **self._tls_settings(), **self.settings}
        self._options = " ".join(
            ["-F", f"-p {self.port}", "-c log_destination=stderr", "-c logging_collector=off",
             f"-c unix_socket_directories='{self.base_dir}'"]
            + [f"-c {key}={value}" for key, value in merged.items()]
        )
        self.start_server()
        if self.password is not None or self.tls:
            self._require_authentication()
        return self

    def _make_base_dir(self) -> None:
        """The cluster's directory, named in ``base_dir`` before it exists: ``tempfile.mkdtemp`` creates
        it before returning its name, and a Ctrl-C between the two (the demo's, right after it printed
        "starting a private PostgreSQL") left a directory that ``stop()`` did not know of."""
        for _ in range(100):
            self.base_dir = os.path.join(tempfile.gettempdir(), f"pgsource-pg-{secrets.token_hex(6)}")
            try:
                os.mkdir(self.base_dir, 0o700)
            except FileExistsError:
                continue
            os.chmod(self.base_dir, 0o755)
            return
        raise FileExistsError(f"no free name for a cluster directory in {tempfile.gettempdir()}")

    @property
    def datadir(self) -> str:
        return os.path.join(self.base_dir, "data")

    def _run_pg_ctl(self, *args: str, timeout: float = 180) -> None:
        """One ``pg_ctl`` command on this cluster's data directory; its output in the error if it fails.

        In a session of its own, and waited for when this process is interrupted: Ctrl-C on the
        terminal (the demo's) would otherwise stop an initdb or a start half-way, and the orphaned
        initdb, running as another user, would go on writing into a directory being removed.
        """
        process = subprocess.Popen(
            [self._pg_ctl, *args[:1], "-D", self.datadir, *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}, start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except KeyboardInterrupt:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=timeout)  # finish what was begun; the caller cleans up after
            raise
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[0]} failed ({process.returncode}): {(stdout + stderr).strip()[-2000:]}")

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (an outage); ``mode``: fast or immediate (a crash)."""
        self._run_pg_ctl("stop", "-m", mode, "-w", "-t", "120")
        self._running = False

    def start_server(self) -> None:
        """Start the server (again, on its data); returns once it accepts connections."""
        self._run_pg_ctl("start", "-w", "-t", "120", "-l", os.path.join(self.base_dir, "postgresql.log"),
                         "-o", self._options)
        self._running = True
        self._wait_until_accepting()

    def _tls_settings(self) -> dict[str, str]:
        """A CA and a server certificate for ``tls``; the key readable by the server's user only."""
        if not self.tls:
            return {}
        from pgsource_testkit.tls import CertificateAuthority

        self.ca = CertificateAuthority.create(os.path.join(self.base_dir, "tls"))
        server = self.ca.issue("server", "localhost", server=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_unprivileged_user())
            for path in (self.ca.directory, server.key, server.cert, self.ca.cert):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        return {"ssl": "on", "ssl_cert_file": server.cert, "ssl_key_file": server.key, "ssl_ca_file": self.ca.cert}

    def client_certificate(self, user: str):
        """A client certificate for ``user`` (its common name), signed by the cluster's CA."""
        return self.ca.issue(f"client-{user}", user)

    def _require_authentication(self) -> None:
        """Set the superuser's password, then let TCP in only with it (or a certificate), over TLS if asked."""
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.dsn())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SET password_encryption = 'scram-sha-256'")
                if self.password is not None:
                    cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(sql.Identifier(self.superuser)), (self.password,))
                cur.execute("SHOW hba_file")
                hba = cur.fetchone()[0]
                lines = ["local all all trust", "local replication all trust"]
                host = "hostssl" if self.tls else "host"
                for database in ("all", "replication"):
                    for user in self.cert_users:
                        lines.append(f"hostssl {database} {user} 127.0.0.1/32 cert")
                    lines.append(f"{host} {database} all 127.0.0.1/32 scram-sha-256")
                    lines.append(f"host {database} all 0.0.0.0/0 reject")
                with open(hba, "w") as out:  # the server's file, replaced in place (owner kept)
                    out.write("\n".join(lines) + "\n")
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()
        self._wait_for_authentication()

    def _wait_for_authentication(self, seconds: float = 30.0) -> None:
        """The postmaster reloads pg_hba.conf asynchronously: wait until a password-less login is refused."""
        import time

        import psycopg2

        bare = f"postgresql://{self.superuser}@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                psycopg2.connect(bare, connect_timeout=5, sslmode="disable", passfile=os.path.join(self.base_dir, "no-passfile")).close()
            except psycopg2.OperationalError:
                return
            time.sleep(0.05)
        raise RuntimeError("pg_hba.conf was not reloaded")

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
        """Stop the server and remove its directory; also a server whose start was interrupted
        (its postmaster.pid is there) and when the server was stopped by someone else."""
        if self._running or (self.base_dir and os.path.exists(os.path.join(self.datadir, "postmaster.pid"))):
            try:
                self.stop_server("fast")
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._run_pg_ctl("stop", "-m", "immediate", "-w")
        if self.base_dir:
            _remove(self.base_dir)
            self.base_dir = ""

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def dsn(self, dbname: str = "postgres", *, user: str | None = None, password: str | None = None, **params) -> str:
        """A libpq URI for ``dbname`` on this cluster, as the superuser (with its password) or ``user``.

        ``params`` are added as URI parameters (``sslcert=...``); with ``tls``, ``sslmode=verify-full``
        and ``sslrootcert`` (the cluster's CA) come first.
        """
        from urllib.parse import quote, urlencode

        if user is None:
            user, password = self.superuser, self.password if password is None else password
        secret = f":{quote(password, safe='')}" if password is not None else ""
        query = {"sslmode": "verify-full", "sslrootcert": self.ca.cert} if self.tls else {}
        query.update(params)
        tail = f"?{urlencode(query)}" if query else ""
        return f"postgresql://{quote(user, safe='')}{secret}@127.0.0.1:{self.port}/{quote(dbname, safe='')}{tail}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name (a fresh one per test)."""
        import psycopg2
        from psycopg2 import sql

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(self.dsn())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its sessions and dropping its replication slots first."""
        import psycopg2
        from psycopg2 import sql

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
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
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
