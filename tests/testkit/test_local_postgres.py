"""The private cluster itself: logical decoding is available and databases are isolated."""

import os
import pwd

import psycopg2

from pgsource_testkit.postgres import LocalPostgres


def test_cluster_is_ready_for_logical_replication(pg_dsn):
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("SHOW wal_level")
        assert cur.fetchone()[0] == "logical"
        cur.execute("SELECT pg_create_logical_replication_slot('probe', 'pgoutput')")
        cur.execute("SELECT pg_drop_replication_slot('probe')")


def test_each_test_gets_its_own_database(pg_dsn, pg_cluster):
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE only_here (id int)")
        cur.execute("SELECT current_database()")
        name = cur.fetchone()[0]
    assert name in set(pg_cluster.databases())
    other = pg_cluster.create_database()
    try:
        with psycopg2.connect(pg_cluster.dsn(other)) as conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('only_here')")
            assert cur.fetchone()[0] is None
    finally:
        pg_cluster.drop_database(other)


def test_start_and_stop_leave_nothing_behind():
    cluster = LocalPostgres().start()
    base = cluster.base_dir
    with psycopg2.connect(cluster.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    cluster.stop()
    assert not os.path.exists(base)


def test_starts_as_an_unprivileged_user_too():
    """The same module works when the caller is not root (CI runs as root, users do not).

    The interpreter lives under /root here, so instead of exec'ing a new one as another
    user, a forked child drops its uid and runs the module it already has loaded.
    """

    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(reader)
        status = 1
        try:
            if os.geteuid() == 0:
                entry = pwd.getpwnam("postgres" if _has_user("postgres") else "nobody")
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
            os.chdir("/tmp")
            with LocalPostgres() as pg:
                conn = psycopg2.connect(pg.dsn())
                with conn.cursor() as cur:
                    cur.execute("SHOW wal_level")
                    os.write(writer, f"{os.geteuid()} {cur.fetchone()[0]}".encode())
                conn.close()
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        reported = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    uid, wal_level = reported.split()
    assert int(uid) != 0 and wal_level == "logical"


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
