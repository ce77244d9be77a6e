"""DDL on the columns that place a row (docs/operations.md "ALTER TABLE while running"): polling stops with a
clear error when its tracking column is renamed or becomes text; CDC follows a renamed key column."""

from __future__ import annotations

import pytest

from tests.cdc.common import TRANSPORTS, cdc_config, wait_until_capturing
from tests.support import bodies, execute, start_service, stop_service, wait_for, write_config


def test_polling_stops_naming_the_tracking_column_when_it_is_renamed(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
    execute(pg_dsn, "INSERT INTO t (note) VALUES ('before')")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"]})
    service = start_service(config)
    try:
        wait_for(lambda: bodies(iggy, "t"), 30, message="the first row")
        execute(pg_dsn, "ALTER TABLE t RENAME COLUMN id TO ident")
        execute(pg_dsn, "INSERT INTO t (note) VALUES ('after')")
        assert service.wait(60) == 3
    finally:
        if service.poll() is None:
            stop_service(service)
    log = config.with_suffix(".log").read_text()
    assert "table t: its columns changed while running" in log
    assert "table t: tracking_column 'id' does not exist (columns: ident, note)" in log
    assert [m["data"] for m in bodies(iggy, "t")] == [{"id": 1, "note": "before"}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cdc_follows_a_renamed_key_column(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"])
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO t (note) VALUES ('before')")
        wait_for(lambda: bodies(iggy, "t"), 30, message="the first change")
        execute(pg_dsn, "ALTER TABLE t RENAME COLUMN id TO ident")
        execute(pg_dsn, "INSERT INTO t (note) VALUES ('after')")
        execute(pg_dsn, "DELETE FROM t WHERE ident = 1")
        wait_for(lambda: len(bodies(iggy, "t")) >= 4, 30, message="the changes after the rename")
    finally:
        assert stop_service(service) == 0
    got = [(m["operation_type"], m["data"], m["old_data"]) for m in bodies(iggy, "t")]
    assert got == [  # the rename announced (source.schema_change_events) before the first change that has it
        ("INSERT", {"id": 1, "note": "before"}, None),
        ("SCHEMA_CHANGE", {"columns": [{"name": "ident", "type": "bigint"}, {"name": "note", "type": "text"}]},
         {"columns": [{"name": "id", "type": "bigint"}, {"name": "note", "type": "text"}]}),
        ("INSERT", {"ident": 2, "note": "after"}, None),
        ("DELETE", None, {"ident": 1}),
    ]


def test_polling_stops_when_the_tracking_column_becomes_text(pg_dsn, iggy, tmp_path):
    """docs/operations.md: a tracking column changed to a type no horizon bounds (``text``) stops, exit 3; the
    rows read before stay the only ones sent (none of the later rows is sent out of order or lost
    silently: the service stops instead)."""
    execute(pg_dsn, "CREATE TABLE t (id bigserial PRIMARY KEY, note text)")
    execute(pg_dsn, "INSERT INTO t (note) VALUES ('before')")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"]})
    service = start_service(config)
    try:
        wait_for(lambda: bodies(iggy, "t"), 30, message="the first row")
        execute(pg_dsn, "ALTER TABLE t ALTER COLUMN id TYPE text")
        execute(pg_dsn, "INSERT INTO t (id, note) VALUES ('2', 'after')")
        assert service.wait(60) == 3
    finally:
        if service.poll() is None:
            stop_service(service)
    log = config.with_suffix(".log").read_text()
    assert "table t: its columns changed while running" in log
    assert "table t: tracking_column 'id': a text column has no horizon" in log
    assert [m["data"] for m in bodies(iggy, "t")] == [{"id": 1, "note": "before"}]
