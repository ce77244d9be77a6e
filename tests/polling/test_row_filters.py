"""A row filter (``where``/``row_filter``) in polling: PostgreSQL's word on a bad one, at check."""

from __future__ import annotations

from tests.support import execute, run_cli, write_config


def test_a_bad_predicate_is_one_line_in_polling_too(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": [{"name": "t", "where": "nope > 1"}]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == ['problem: table t: where: column "nope" does not exist']
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": [{"name": "t", "where": "true) OR (true"}]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "source.tables[0].where: a ')' closes a parenthesis the predicate did not open" in result.stderr
