"""What ``check`` says beyond the problems (issue 23): a polled table no index serves, with the
``CREATE INDEX`` that would (decided from pg_index, not from a plan: a small table gets a
sequential scan either way), also logged by ``run``; and the grants the user lacks, as SQL that,
applied as it is printed, makes the check pass."""

from __future__ import annotations

import uuid

import pytest
from psycopg2 import sql

from tests.support import TEST_PASSWORD, execute, run_cli, start_service, stop_service, wait_for, write_config

NO_INDEX = "no index leads with its tracking column"


def test_a_table_no_index_serves_is_named_with_the_index_that_would(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), body text);"
                    " CREATE INDEX ON events ((lower(body)), at); CREATE INDEX ON events (at) WHERE body IS NULL;"
                    " CREATE TABLE small (id serial PRIMARY KEY, body text); INSERT INTO small (body) VALUES ('x')")
    config = write_config(tmp_path, pg_dsn, "127.0.0.1:1",
                          source={"tables": [{"name": "events", "tracking_column": "at"}, "small"]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    expected = (f"warning: table events: {NO_INDEX} 'at': every batch scans the whole table, slow once it is large;"
                ' the index that serves the keyset query: CREATE INDEX ON "public"."events" ("at", "id")')
    assert expected in result.stderr.splitlines()
    assert result.stderr.count(NO_INDEX) == 1  # small: its primary key serves it (a seq scan is chosen all the same)
    service = start_service(config)  # run says it too (Iggy is down: it waits, logging)
    try:
        wait_for(lambda: NO_INDEX in config.with_suffix(".log").read_text(), 30, message="run's warning")
    finally:
        assert stop_service(service) == 0
    execute(pg_dsn, 'CREATE INDEX ON "public"."events" ("at", "id")')
    assert NO_INDEX not in run_cli("check", "--config", str(config)).stderr


@pytest.fixture
def bare_role(pg_dsn, pg_cluster):
    """A login role with no privileges at all, dropped after the test."""
    name = f"app_{uuid.uuid4().hex[:8]}"
    password = f"{TEST_PASSWORD}-{name}"
    role = sql.Identifier(name)
    execute(pg_dsn, sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(role), (password,))
    try:
        yield name, pg_cluster.dsn(pg_dsn.rsplit("/", 1)[1], user=name, password=password)
    finally:
        execute(pg_dsn, sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(role, role))


def test_missing_grants_are_printed_as_sql_that_makes_check_pass(pg_dsn, bare_role, tmp_path):
    name, dsn = bare_role
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY, body text)")
    config = write_config(tmp_path, dsn, "127.0.0.1:1", source={"tables": ["events"], "delete_after_read": True})
    refused = run_cli("check", "--config", str(config))
    assert refused.returncode == 3
    assert [line.replace(name, "ROLE") for line in refused.stdout.splitlines()] == [
        "-- what the PostgreSQL user lacks; run as a superuser or the tables' owner:",
        'GRANT SELECT ON "public"."events" TO "ROLE";',
        'GRANT DELETE ON "public"."events" TO "ROLE";',
        'GRANT SELECT ON SEQUENCE public.events_id_seq TO "ROLE";',
        'GRANT "pg_read_all_stats" TO "ROLE";',
    ]
    execute(pg_dsn, refused.stdout)  # copied as printed
    granted = run_cli("check", "--config", str(config))
    assert granted.returncode == 0, granted.stderr
    assert "ok: polling mode, events" in granted.stdout and "GRANT" not in granted.stdout


def test_cdc_names_the_replication_attribute_as_sql(pg_dsn, bare_role, tmp_path):
    name, dsn = bare_role
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY, body text)")
    config = write_config(tmp_path, dsn, "127.0.0.1:1", source={"mode": "cdc", "tables": ["events"]})
    refused = run_cli("check", "--config", str(config))
    assert refused.returncode == 3
    assert 'ALTER ROLE "ROLE" REPLICATION;' in [line.replace(name, "ROLE") for line in refused.stdout.splitlines()]


def test_a_schema_without_usage_is_one_problem_and_its_grant_not_a_traceback(pg_dsn, bare_role, tmp_path):
    """Found by the new-user walkthrough: check printed psycopg2's InsufficientPrivilege traceback
    (exit 1) for a table in a schema the user may not use."""
    name, dsn = bare_role
    execute(pg_dsn, "CREATE SCHEMA sales; CREATE TABLE sales.orders (id serial PRIMARY KEY)")
    config = write_config(tmp_path, dsn, "127.0.0.1:1", source={"tables": ["sales.orders"]})
    refused = run_cli("check", "--config", str(config))
    assert refused.returncode == 3 and "Traceback" not in refused.stderr, refused.stderr
    assert "problem: table sales.orders: the PostgreSQL user lacks USAGE on schema sales" in refused.stderr
    assert [line.replace(name, "ROLE") for line in refused.stdout.splitlines()][1:] == [
        'GRANT USAGE ON SCHEMA "sales" TO "ROLE";',
        'GRANT SELECT ON "sales"."orders" TO "ROLE";',
        'GRANT SELECT ON SEQUENCE sales.orders_id_seq TO "ROLE";',
        'GRANT "pg_read_all_stats" TO "ROLE";',
    ]
    execute(pg_dsn, refused.stdout)
    assert run_cli("check", "--config", str(config)).returncode == 0
