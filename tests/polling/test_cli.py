"""The command line: ``check`` and ``run`` fail with one clear line per problem, non-zero."""

from __future__ import annotations

from tests.support import execute, run_cli, write_config


def test_check_accepts_a_good_config(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, "127.0.0.1:1", source={"tables": ["users"]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "ok: polling mode, users" in result.stdout
    assert "warning: Iggy at 127.0.0.1:1:" in result.stderr and "pgsource run waits for it" in result.stderr


def test_check_names_each_missing_table_and_column(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY, name text)")
    execute(pg_dsn, "CREATE TABLE logs (at timestamptz, line text)")
    config = write_config(
        tmp_path, pg_dsn, "127.0.0.1:1",
        source={"tables": ["users", "nope", {"name": "logs", "tracking_column": "at"}], "tracking_column": "updated_at"},
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3
    assert "table users: tracking_column 'updated_at' does not exist" in result.stderr
    assert "table nope does not exist" in result.stderr
    assert "table logs: tracking_column 'at' is not unique and the table has no primary key" in result.stderr


def test_run_refuses_a_bad_table_instead_of_looping(pg_dsn, tmp_path):
    config = write_config(tmp_path, pg_dsn, "127.0.0.1:1", source={"tables": ["missing"]})
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3
    assert "table missing does not exist" in result.stderr


def test_unknown_keys_and_bad_values_are_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "source:\n  connection_string: ${PG_DSN:-postgresql://x@127.0.0.1/db}\n  mode: polling\n"
        "  tables: [users]\n  batch_sise: 10\n  poll_interval: soon\niggy:\n  adress: 127.0.0.1:8090\n"
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "source.batch_sise: unknown key; did you mean 'batch_size'?" in result.stderr
    assert "iggy.adress: unknown key; did you mean 'address'?" in result.stderr
    assert "source.poll_interval:" in result.stderr and "'soon' is not a duration" in result.stderr


def test_custom_query_without_placeholders_is_explained(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "source:\n  connection_string: postgresql://x@127.0.0.1/db\n  mode: polling\n"
        "  custom_query: SELECT * FROM users ORDER BY id LIMIT 10\n  initial_offset: 0\n"
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "custom_query must use $1 or $offset (the last offset) and $2 or $limit (the batch size)" in result.stderr


def test_max_connections_bounds_the_workers(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE TABLE c (id int PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, "127.0.0.1:1", source={"tables": ["a", "b", "c"], "max_connections": 2}, workers=3)
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3
    assert "source.max_connections is 2, but 3 worker(s) need 3 database connections" in result.stderr
