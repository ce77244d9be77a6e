"""TLS to PostgreSQL: a private cluster with a self-signed CA that accepts TCP only over TLS.

The connection string carries libpq's own parameters (``sslmode``, ``sslrootcert``,
``sslcert``, ``sslkey``): verify-full against the CA works, by password or by client
certificate; no TLS, or another CA, is refused by ``check`` with the server's or libpq's
reason (exit 3), and ``run`` stops the same way instead of retrying forever.
"""

from __future__ import annotations

import pytest
from psycopg2 import sql

from pgsource_testkit.postgres import LocalPostgres
from pgsource_testkit.tls import CertificateAuthority
from tests.support import (
    TEST_PASSWORD,
    bodies,
    execute,
    query,
    run_cli,
    start_service,
    stop_service,
    wait_for,
    write_config,
)

CERT_USER = "pgsource_cert"


@pytest.fixture(scope="module")
def tls_cluster():
    cluster = LocalPostgres(password=TEST_PASSWORD, tls=True, cert_users=(CERT_USER,)).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def tls_db(tls_cluster):
    name = tls_cluster.create_database()
    execute(tls_cluster.dsn(name), "CREATE TABLE events (id serial PRIMARY KEY, body text);"
                                   " INSERT INTO events (body) SELECT 'e' || g FROM generate_series(1, 25) g")
    try:
        yield name
    finally:
        tls_cluster.drop_database(name)


def _ssl_sessions(cluster, database: str) -> list[tuple]:
    return query(cluster.dsn(database), "SELECT s.ssl, s.version, a.usename, s.client_dn FROM pg_stat_ssl s"
                                        " JOIN pg_stat_activity a USING (pid) WHERE a.application_name LIKE 'pgsource-worker%'")


def test_verify_full_with_the_ca_streams_over_tls(tls_cluster, tls_db, iggy, tmp_path):
    dsn = tls_cluster.dsn(tls_db)
    assert "sslmode=verify-full" in dsn and "sslrootcert=" in dsn
    config = write_config(tmp_path, dsn, iggy.address, source={"tables": ["events"]})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "events")) >= 25, 60, message="rows over TLS")
        sessions = wait_for(lambda: _ssl_sessions(tls_cluster, tls_db), 10, message="the worker's session")
    finally:
        assert stop_service(service) == 0
    assert sessions and all(ssl and version.startswith("TLS") for ssl, version, _, _ in sessions)


def test_client_certificate_authentication(tls_cluster, tls_db, iggy, tmp_path):
    user = sql.Identifier(CERT_USER)
    execute(tls_cluster.dsn(tls_db), sql.SQL("CREATE ROLE {} LOGIN; GRANT SELECT ON events, events_id_seq TO {};"
                                             " GRANT pg_read_all_stats TO {}").format(user, user, user))
    try:
        files = tls_cluster.client_certificate(CERT_USER)
        dsn = tls_cluster.dsn(tls_db, user=CERT_USER, sslcert=files.cert, sslkey=files.key)
        assert "@" in dsn and ":" not in dsn.split("@")[0].removeprefix("postgresql://")  # no password at all
        config = write_config(tmp_path, dsn, iggy.address, source={"tables": ["events"]})
        assert run_cli("check", "--config", str(config)).returncode == 0
        service = start_service(config)
        try:
            wait_for(lambda: len(bodies(iggy, "events")) >= 25, 60, message="rows read as the certificate's user")
            sessions = wait_for(lambda: _ssl_sessions(tls_cluster, tls_db), 10, message="the worker's session")
        finally:
            assert stop_service(service) == 0
        assert [(user, dn) for _, _, user, dn in sessions] == [(CERT_USER, f"/CN={CERT_USER}")]
        without = tls_cluster.dsn(tls_db, user=CERT_USER)  # the certificate is the only way in for this role
        result = run_cli("check", "--config", str(write_config(tmp_path, without, iggy.address,
                                                                source={"tables": ["events"]})))
        assert result.returncode == 3 and "certificate" in result.stderr
    finally:
        execute(tls_cluster.dsn(tls_db), sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(user, user))


@pytest.mark.parametrize("case", ["no TLS", "another CA", "wrong host name"])
def test_what_tls_refuses_stops_with_the_reason(tls_cluster, tls_db, iggy, tmp_path, case):
    dsn = tls_cluster.dsn(tls_db)
    if case == "no TLS":
        dsn, reason = tls_cluster.dsn(tls_db, sslmode="disable"), "no encryption"
    elif case == "another CA":
        other = CertificateAuthority.create(str(tmp_path / "other-ca"), "someone else")
        dsn, reason = tls_cluster.dsn(tls_db, sslrootcert=other.cert), "certificate verify failed"
    else:  # the certificate names localhost and 127.0.0.1, not db.example (reached at 127.0.0.1 all the same)
        dsn = tls_cluster.dsn(tls_db, hostaddr="127.0.0.1").replace("@127.0.0.1:", "@db.example:")
        reason = 'does not match host name "db.example"'
    config = write_config(tmp_path, dsn, iggy.address, source={"tables": ["events"]})
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(config))
        assert result.returncode == 3, result.stderr
        assert "cannot connect to PostgreSQL" in result.stderr and reason in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
