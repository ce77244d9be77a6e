"""Column lists and row filters (issue 20, part 2): what PostgreSQL 15 refuses is refused by
``check`` with PostgreSQL's reason; an excluded column appears in no message of either mode
(snapshot, stream, old rows); a changed shape is applied at restart with ALTER PUBLICATION."""

from __future__ import annotations

import json

import pytest

from tests.cdc.common import TRANSPORTS, cdc_config, replay, stored, wait_slot_caught_up, wait_until_capturing
from tests.support import execute, query, run_cli, start_service, stop_service, wait_for, write_config

SECRET = "hunter2-secret"


def test_check_refuses_what_postgresql_refuses_with_its_reason(pg_dsn, iggy, tmp_path):
    """Regression: a filter on a column outside the replica identity made the application's own
    UPDATE and DELETE of the table fail once the publication existed ("cannot update table"),
    whatever capture_operations said; check passed it (exit 0)."""
    execute(pg_dsn, "CREATE TABLE people (id int PRIMARY KEY, active bool NOT NULL, ssn text);"
                    " CREATE TABLE audited (id int PRIMARY KEY, ssn text); ALTER TABLE audited REPLICA IDENTITY FULL;"
                    " CREATE TABLE dice (id int PRIMARY KEY, n int); CREATE TABLE fine (id int PRIMARY KEY, ssn text)")
    tables = [{"name": "people", "row_filter": "active"},
              {"name": "audited", "exclude_columns": ["ssn"]},
              {"name": "dice", "where": "random() > 0.5"},
              {"name": "fine", "where": "id > 2", "exclude_columns": ["ssn"]}]
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=tables, capture_operations=["INSERT"])
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line.removeprefix("problem: ") for line in result.stderr.splitlines()]
    assert any(line.startswith("table people: PostgreSQL refuses its row filter in cdc mode: cannot update table"
                               ' "people": Column used in the publication WHERE expression is not part of the'
                               " replica identity.") for line in lines), result.stderr
    assert any(line.startswith("table audited: PostgreSQL refuses its column list in cdc mode: cannot update table"
                               ' "audited": Column list used by the publication does not cover the replica identity.')
               and "REPLICA IDENTITY FULL" in line for line in lines), result.stderr
    assert any(line.startswith("table dice: PostgreSQL refuses its row filter in cdc mode: invalid publication WHERE"
                               " expression: User-defined or built-in mutable functions are not allowed.")
               for line in lines), result.stderr
    assert "table fine" not in result.stderr
    assert query(pg_dsn, "SELECT count(*) FROM pg_publication")[0][0] == 0  # the trial was rolled back
    execute(pg_dsn, "INSERT INTO people VALUES (1, true); UPDATE people SET active = false")  # the application still can
    run = run_cli("run", "--config", str(config))
    assert run.returncode == 3 and "Column used in the publication WHERE expression" in run.stderr


def _people(dsn: str) -> None:
    """A table filtered by tenant: the tenant is in the replica identity (a unique index), so
    PostgreSQL lets the filter read it and knows an old row's tenant on UPDATE and DELETE."""
    execute(dsn, "CREATE TABLE people (id int PRIMARY KEY, tenant int NOT NULL, name text, ssn text);"
                 " CREATE UNIQUE INDEX people_identity ON people (id, tenant);"
                 " ALTER TABLE people REPLICA IDENTITY USING INDEX people_identity")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_excluded_column_appears_in_no_message_of_either_mode(pg_dsn, iggy, tmp_path, transport):
    """Snapshot, INSERT, UPDATE, a row moving out of the filter (a DELETE in CDC) and back in (an
    INSERT), DELETE: no message carries the column, its value, or a row of another tenant; the
    table a consumer builds is the filtered table. Switching the table to REPLICA IDENTITY FULL
    while running cannot put the column into old rows: PostgreSQL refuses the UPDATE."""
    _people(pg_dsn)
    execute(pg_dsn, "INSERT INTO people SELECT g, 7 + g %% 2, 'p' || g, %s FROM generate_series(1, 6) g", (SECRET,))
    table = {"name": "people", "exclude_columns": ["ssn"], "row_filter": "tenant = 7"}
    (tmp_path / "cdc").mkdir()
    service = start_service(cdc_config(tmp_path / "cdc", pg_dsn, iggy, transport, tables=[table], snapshot="initial"))
    try:
        wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO people VALUES (10, 7, 'new', %s), (11, 8, 'other', %s)", (SECRET, SECRET))
        execute(pg_dsn, "UPDATE people SET name = 'renamed', ssn = 'x' || ssn WHERE id = 2")
        execute(pg_dsn, "UPDATE people SET tenant = 8 WHERE id = 4")  # moves out: a DELETE
        execute(pg_dsn, "UPDATE people SET tenant = 7 WHERE id = 5")  # moves in: an INSERT
        execute(pg_dsn, "DELETE FROM people WHERE id = 6")
        execute(pg_dsn, "ALTER TABLE people REPLICA IDENTITY FULL")
        with pytest.raises(Exception, match="Column list used by the publication does not cover the replica identity"):
            execute(pg_dsn, "UPDATE people SET name = 'full' WHERE id = 2")
        execute(pg_dsn, "ALTER TABLE people REPLICA IDENTITY USING INDEX people_identity")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    messages = stored(iggy, "people")
    operations = [(body["operation_type"], (body["data"] or body["old_data"])["id"]) for _, body, _ in messages]
    assert ("DELETE", 4) in operations and ("INSERT", 5) in operations and ("DELETE", 6) in operations
    wanted = {row[0]: {"id": row[0], "tenant": 7, "name": row[1]}
              for row in query(pg_dsn, "SELECT id, name FROM people WHERE tenant = 7")}
    assert replay(messages) == wanted
    polled = _poll(tmp_path, pg_dsn, iggy, {"name": "people", "exclude_columns": ["ssn"], "where": "tenant = 7"})
    assert {body["data"]["id"]: body["data"] for body in polled} == wanted
    for payload in [m.payload for _, _, m in messages] + [json.dumps(body).encode() for body in polled]:
        assert SECRET.encode() not in payload and b"ssn" not in payload


def _poll(tmp_path, dsn: str, iggy, table: dict) -> list[dict]:
    (tmp_path / "poll").mkdir()
    expected = query(dsn, "SELECT count(*) FROM people WHERE tenant = 7")[0][0]
    service = start_service(write_config(tmp_path / "poll", dsn, iggy.address, source={"tables": [table], "late_commits": "off"},
                                         iggy={"stream": "polled"}))
    try:
        wait_for(lambda: len(stored(iggy, "people", stream="polled")) >= expected, 30, message="polled rows")
    finally:
        assert stop_service(service) == 0
    return [body for _, body, _ in stored(iggy, "people", stream="polled")]


def test_a_changed_shape_is_applied_at_restart_with_alter_publication(pg_dsn, iggy, tmp_path):
    """The filter and the column list change in the file: the next start alters the publication
    (logged: old and new), keeps the slot, and changes written while it was stopped still come
    with the shape they were written under; changes after the restart come with the new one."""
    _people(pg_dsn)
    before = {"name": "people", "exclude_columns": ["ssn"], "where": "tenant = 7"}
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication", tables=[before])
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, "replication")
        execute(pg_dsn, "INSERT INTO people VALUES (1, 7, 'a', %s), (2, 8, 'b', %s)", (SECRET, SECRET))
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    execute(pg_dsn, "INSERT INTO people VALUES (3, 7, 'c', %s), (4, 8, 'd', %s)", (SECRET, SECRET))  # while stopped
    config = cdc_config(tmp_path, pg_dsn, iggy, "replication",
                        tables=[{"name": "people", "columns": ["id", "tenant"], "where": "tenant = 8"}])
    check = run_cli("check", "--config", str(config))
    change = ("publication iggy_publication: table people: columns id, tenant, name, rows where (tenant = 7)"
              " → columns id, tenant, rows where (tenant = 8)")
    assert check.returncode == 0 and change in check.stdout + check.stderr
    slot_before = query(pg_dsn, "SELECT xmin::text, catalog_xmin::text FROM pg_replication_slots")  # the same slot after
    service = start_service(config)
    try:
        applied = f"worker-0: {change} (the configuration changed"
        wait_for(lambda: applied in config.with_suffix(".log").read_text(), 30, message="the change applied")
        execute(pg_dsn, "INSERT INTO people VALUES (5, 7, 'e', %s), (6, 8, 'f', %s)", (SECRET, SECRET))
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    assert len(query(pg_dsn, "SELECT 1 FROM pg_replication_slots")) == len(slot_before) == 1
    messages = [body for _, body, _ in stored(iggy, "people")]
    assert [body["data"] for body in messages if body["operation_type"] == "INSERT"] == [
        {"id": 1, "tenant": 7, "name": "a"}, {"id": 3, "tenant": 7, "name": "c"}, {"id": 6, "tenant": 8},
    ]
    assert [body["operation_type"] for body in messages] == ["INSERT", "INSERT", "SCHEMA_CHANGE", "INSERT"]
    assert [column["name"] for column in messages[2]["data"]["columns"]] == ["id", "tenant"]  # the new shape, announced
    assert [column["name"] for column in messages[2]["old_data"]["columns"]] == ["id", "tenant", "name"]
    assert query(pg_dsn, "SELECT attnames, rowfilter FROM pg_publication_tables") == [(["id", "tenant"], "(tenant = 8)")]
