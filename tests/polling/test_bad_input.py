"""Bad input from the database and from the state directory: one clear error, a documented exit,
no restart loop, nothing skipped.

- a missing table, a missing or unorderable tracking column, a table without a key: exit 3;
- missing privileges (SELECT; DELETE for delete_after_read; SELECT on the sequence the
  late-commit horizon reads): exit 3 naming table and privilege; revoked while running: exit 4;
- a row far bigger than an Iggy message (a 100 MB text): exit 4 naming the table and the row's
  key, and the offset stays before it;
- a corrupt or truncated state file: exit 7 naming the file; the table is not read again from
  the start.
"""

from __future__ import annotations

import uuid

import pytest
from psycopg2 import sql

from tests.support import (
    TEST_PASSWORD,
    bodies,
    execute,
    run_cli,
    start_service,
    stop_service,
    stored_offset,
    wait_for,
    write_config,
)


def _run_to_exit(config, timeout: float = 90) -> tuple[int, str]:
    service = start_service(config)
    code = service.wait(timeout)
    return code, config.with_suffix(".log").read_text()


def test_bad_tables_are_refused_once_each(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE docs (id int PRIMARY KEY, body json); CREATE TABLE logs (at int, line text);"
                    " CREATE TABLE ok (id serial PRIMARY KEY); CREATE TABLE fine (id serial PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, "127.0.0.1:1", source={"tables": [
        "missing", {"name": "docs", "tracking_column": "body"}, {"name": "ok", "tracking_column": "nope"},
        {"name": "logs", "tracking_column": "at"}, "fine"]})
    expected = ["table missing does not exist",
                "table docs: tracking_column 'body' of type json cannot be ordered",
                "table ok: tracking_column 'nope' does not exist (columns: id)",
                "table logs: tracking_column 'at' is not unique and the table has no primary key"]
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3 and all(line in result.stderr for line in expected), result.stderr
    code, log = _run_to_exit(config)
    assert code == 3 and all(log.count(line) == 1 for line in expected), log
    assert "restarting" not in log and "Traceback" not in log


@pytest.fixture
def reader_role(pg_dsn, pg_cluster):
    """A login role without privileges (SCRAM password), dropped after the test."""
    name = f"reader_{uuid.uuid4().hex[:8]}"
    password = f"{TEST_PASSWORD}-{name}"  # holds the cluster's password: a leak is caught by conftest
    role = sql.Identifier(name)
    execute(pg_dsn, sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s; GRANT pg_read_all_stats TO {}").format(role, role),
            (password,))
    database = pg_dsn.rsplit("/", 1)[1]
    try:
        yield name, pg_cluster.dsn(database, user=name, password=password)
    finally:
        execute(pg_dsn, sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(role, role))


def test_missing_privileges_are_named(pg_dsn, reader_role, iggy, tmp_path):
    role, dsn = reader_role
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY, body text);"
                    " INSERT INTO events (body) SELECT 'e' FROM generate_series(1, 10)")
    config = write_config(tmp_path, dsn, iggy.address, source={"tables": ["events"]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3
    assert "table events: the PostgreSQL user lacks SELECT, SELECT on its sequence public.events_id_seq" in result.stderr
    code, log = _run_to_exit(config)
    assert code == 3 and "lacks SELECT" in log and "restarting" not in log
    execute(pg_dsn, sql.SQL("GRANT SELECT ON events TO {}").format(sql.Identifier(role)))
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3 and "lacks SELECT on its sequence public.events_id_seq" in result.stderr
    (tmp_path / "delete").mkdir()
    delete = write_config(tmp_path / "delete", dsn, iggy.address, source={"tables": ["events"], "delete_after_read": True})
    execute(pg_dsn, sql.SQL("GRANT SELECT ON events_id_seq TO {}").format(sql.Identifier(role)))
    result = run_cli("check", "--config", str(delete))
    assert result.returncode == 3 and "table events: the PostgreSQL user lacks DELETE;" in result.stderr
    assert run_cli("check", "--config", str(config)).returncode == 0

    # granted, running, then revoked: the worker's next read fails, the service stops (exit 4), no loop
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "events")) >= 10, 60, message="the rows")
        wait_for(lambda: stored_offset(tmp_path, "polling/events") is not None, 30, message="the offset")
        execute(pg_dsn, sql.SQL("REVOKE SELECT ON events FROM {}").format(sql.Identifier(role)))
        code = service.wait(60)
    finally:
        if service.poll() is None:
            stop_service(service)
    log = config.with_suffix(".log").read_text()
    assert code == 4, log
    assert "events: reading a batch failed: permission denied for table events" in log
    assert "restarting" not in log and stored_offset(tmp_path, "polling/events").position == ("10",)


@pytest.mark.timeout(240)
def test_a_row_bigger_than_any_iggy_message_stops_the_table_naming_it(pg_dsn, iggy, tmp_path):
    """A 100 MB text (Iggy takes 64 MB a message): refused with the table and the row's key,
    nothing after it is sent, and the offset stays before it, so it is read again once fixed."""
    execute(pg_dsn, "CREATE TABLE blobs (id serial PRIMARY KEY, body text)")
    execute(pg_dsn, "INSERT INTO blobs (body) SELECT 'small' FROM generate_series(1, 5)")
    execute(pg_dsn, "INSERT INTO blobs (body) VALUES (repeat('x', 100 * 1000 * 1000))")  # id 6
    execute(pg_dsn, "INSERT INTO blobs (body) VALUES ('after')")  # id 7
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["blobs"], "batch_size": 5})
    code, log = _run_to_exit(config, timeout=180)
    assert code == 4, log[-3000:]
    assert "table blobs, row id=6: its message is 100,000," in log and "Iggy takes at most 64,000,000" in log
    assert "restarting" not in log
    assert [m["data"]["id"] for m in bodies(iggy, "blobs")] == [1, 2, 3, 4, 5]
    assert stored_offset(tmp_path, "polling/blobs").position == ("5",)
    execute(pg_dsn, "UPDATE blobs SET body = 'fixed' WHERE id = 6")  # the operator's fix; then it goes on
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "blobs")) >= 7, 60, message="the fixed row and the one after it")
    finally:
        assert stop_service(service) == 0
    assert [m["data"]["id"] for m in bodies(iggy, "blobs")] == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong record"])
def test_a_damaged_state_file_stops_the_service(pg_dsn, iggy, tmp_path, damage):
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY); INSERT INTO events SELECT FROM generate_series(1, 20)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["events"]})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "events")) >= 20, 60, message="the rows")
        wait_for(lambda: (stored_offset(tmp_path, "polling/events") or None) and
                 stored_offset(tmp_path, "polling/events").position == ("20",), 30, message="the offset")
    finally:
        assert stop_service(service) == 0
    [path] = list((tmp_path / "state").glob("polling%2Fevents*.json"))  # the offset (polling-shapes/ holds the announced shape)
    text = path.read_text()
    path.write_text({"truncated": text[: len(text) // 2], "garbage": "\x00\x01 not json", "empty": "",
                     "wrong record": text.replace('"kind": "polling"', '"kind": "slot"')}[damage])
    code, log = _run_to_exit(config)
    assert code == 7, log[-2000:]
    assert f"state file {path}" in log and "restarting" not in log
    assert len(bodies(iggy, "events")) == 20  # not read again from the start
    assert path.read_text() != text  # left as it was found, for the operator
