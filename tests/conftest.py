"""Shared fixtures: one private PostgreSQL per test session, a fresh database per test."""

from __future__ import annotations

import pytest

from pgsource.testkit.postgres import LocalPostgres


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL 15 cluster (wal_level=logical) for the whole session."""
    cluster = LocalPostgres().start()
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


@pytest.fixture
def iggy():
    """A fresh Iggy stand-in (real SDK wire protocol) on a free port."""
    from pgsource.testkit.iggy import IggyStandIn

    server = IggyStandIn().start()
    try:
        yield server
    finally:
        server.stop()
