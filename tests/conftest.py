"""Shared fixtures: one private PostgreSQL per test session, a fresh database per test."""

from __future__ import annotations

import os
import sys

import pytest

from pgsource_testkit.postgres import LocalPostgres
from tests import support


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL 15 cluster (wal_level=logical) for the whole session; TCP logins need
    the superuser's password (scram-sha-256), which every ``pg_dsn`` carries."""
    cluster = LocalPostgres(password=support.TEST_PASSWORD).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster):
    """The DSN of a database created for this test alone and dropped after it."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.dsn(name)
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(autouse=True)
def no_secret_in_service_output():
    """Fails a test whose services (``support.start_service``, ``support.run_cli``) printed the
    test cluster's password anywhere: logs, tracebacks, CLI lines. Passwords are redacted."""
    support.SERVICE_LOGS.clear()
    support.CLI_OUTPUTS.clear()
    yield
    output = support.service_output()
    secrets = [secret for secret in support.SECRETS_TO_HUNT if secret in output]
    support.SERVICE_LOGS.clear()
    support.CLI_OUTPUTS.clear()
    if secrets:
        line = next(line for line in output.splitlines() if any(secret in line for secret in secrets))
        for secret in secrets:
            line = line.replace(secret, "<the secret>")
        pytest.fail(f"a service printed a secret ({len(secrets)} of them); first line: {line[:300]}")


@pytest.fixture
def iggy():
    """A fresh Iggy stand-in (real SDK wire protocol) on a free port."""
    from pgsource_testkit.iggy import IggyStandIn

    server = IggyStandIn().start()
    try:
        yield server
    finally:
        server.stop()


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process with pytest's own status once everything is reported.

    apache-iggy 0.9.0 completes its futures from tokio threads; one that lands while the
    interpreter finalizes makes that thread's ``PyThread_exit_thread`` unwind through Rust
    frames, which aborts the process (SIGABRT, exit 134) after every test passed (seen with
    gdb in about one run in seven of a failed ``connect``). Nothing is left to run here.
    """
    if "apache_iggy" in sys.modules and _EXIT_STATUS and "PYTEST_XDIST_WORKER" not in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
