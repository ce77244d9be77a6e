"""TLS to Iggy: the SDK's TcpConfig TLS options from ``iggy.tls``, against a TLS front of the stand-in.

The stand-in speaks plain TCP; ``TlsProxy`` terminates TLS with a certificate of a
throw-away CA and forwards the bytes, so the SDK's rustls client does the real handshake.
"""

from __future__ import annotations

import pytest

from pgsource_testkit.tls import CertificateAuthority, TlsProxy
from tests.support import bodies, execute, run_cli, start_service, stop_service, wait_for, write_config


@pytest.fixture
def tls_iggy(iggy, tmp_path):
    ca = CertificateAuthority.create(str(tmp_path / "iggy-ca"))
    proxy = TlsProxy(ca.issue("iggy", "localhost", server=True), iggy.address).start()
    try:
        yield iggy, proxy, ca
    finally:
        proxy.stop()


def test_messages_reach_iggy_over_tls(pg_dsn, tls_iggy, tmp_path):
    iggy, proxy, ca = tls_iggy
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY); INSERT INTO events SELECT FROM generate_series(1, 30)")
    config = write_config(tmp_path, pg_dsn, proxy.address, source={"tables": ["events"]},
                          iggy={"tls": {"enabled": True, "ca_file": ca.cert, "domain": "localhost"}})
    assert "warning" not in run_cli("check", "--config", str(config)).stderr
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "events")) >= 30, 60, message="rows through TLS")
    finally:
        assert stop_service(service) == 0
    assert proxy.handshakes >= 2  # check's and the publisher's sessions went through the TLS front


@pytest.mark.parametrize("tls", [{"enabled": True}, {"enabled": False}], ids=["untrusted CA", "TLS off"])
def test_a_tls_endpoint_refuses_what_it_cannot_trust(pg_dsn, tls_iggy, tmp_path, tls):
    """Without the CA (the system's roots do not know it), or speaking plain TCP to it: no session."""
    iggy, proxy, _ = tls_iggy
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, proxy.address, source={"tables": ["events"]}, iggy={"tls": tls})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0 and f"warning: Iggy at {proxy.address}" in result.stderr  # run waits for it
    assert proxy.handshakes == 0
