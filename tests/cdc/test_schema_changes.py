"""Schema changes, visible (issue 20, part 4): ADD COLUMN, DROP COLUMN, ALTER TYPE and RENAME COLUMN
each give one SCHEMA_CHANGE message, with the old and new columns and their types, in the table's
topic before the first change of the new shape; an ALTER that leaves the columns alone gives none;
a change made while the service was stopped is announced at the next start, and nothing twice."""

from __future__ import annotations

import pytest

from tests.cdc.common import TRANSPORTS, cdc_config, stored, wait_slot_caught_up, wait_until_capturing
from tests.support import execute, start_service, stop_service

BEFORE = [("id", "integer"), ("a", "integer"), ("b", "text"), ("c", "character varying(10)")]
STEPS = [  # (DDL, the DML after it, the columns after it)
    ("ALTER TABLE t ADD COLUMN d numeric(8,2)", "INSERT INTO t VALUES (2, 2, 'x', 'y', 1.5)",
     BEFORE + [("d", "numeric(8,2)")]),
    ("ALTER TABLE t DROP COLUMN b", "UPDATE t SET a = 20 WHERE id = 2",
     [("id", "integer"), ("a", "integer"), ("c", "character varying(10)"), ("d", "numeric(8,2)")]),
    ("ALTER TABLE t ALTER COLUMN a TYPE bigint", "INSERT INTO t VALUES (3, 3, 'z', 2.5)",
     [("id", "integer"), ("a", "bigint"), ("c", "character varying(10)"), ("d", "numeric(8,2)")]),
    ("ALTER TABLE t RENAME COLUMN c TO code", "INSERT INTO t VALUES (4, 4, 'w', 3.5)",
     [("id", "integer"), ("a", "bigint"), ("code", "character varying(10)"), ("d", "numeric(8,2)")]),
    ("ALTER TABLE t ADD CONSTRAINT positive CHECK (a > 0)", "DELETE FROM t WHERE id = 4", None),  # same columns
]


def _columns(shape: dict) -> list[tuple[str, str]]:
    return [(column["name"], column["type"]) for column in shape["columns"]]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_change_of_the_columns_is_announced_once_before_the_first_change_of_its_shape(pg_dsn, iggy, tmp_path,
                                                                                           transport):
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, a int, b text, c varchar(10))")
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["t"])
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO t VALUES (1, 1, 'a', 'b')")
        for ddl, dml, _ in STEPS:
            execute(pg_dsn, ddl)
            execute(pg_dsn, dml)
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    execute(pg_dsn, "ALTER TABLE t ADD COLUMN e bool")  # while stopped
    execute(pg_dsn, "INSERT INTO t VALUES (5, 5, 'v', 4.5, true)")
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        execute(pg_dsn, "INSERT INTO t VALUES (6, 6, 'u', 5.5, false)")
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    messages = [(body, message) for _, body, message in stored(iggy, "t")]
    operations = [body["operation_type"] for body, _ in messages]
    assert operations == ["INSERT", "SCHEMA_CHANGE", "INSERT", "SCHEMA_CHANGE", "UPDATE", "SCHEMA_CHANGE", "INSERT",
                          "SCHEMA_CHANGE", "INSERT", "DELETE", "SCHEMA_CHANGE", "INSERT", "INSERT"]
    events = [body for body, _ in messages if body["operation_type"] == "SCHEMA_CHANGE"]
    shapes = [BEFORE] + [after for _, _, after in STEPS if after] + [STEPS[3][2] + [("e", "boolean")]]
    assert [(_columns(e["old_data"]), _columns(e["data"])) for e in events] == list(zip(shapes, shapes[1:]))
    assert all(e["table_name"] == "t" for e in events)
    for (body, message), (after, _) in zip(messages, messages[1:]):
        if body["operation_type"] == "SCHEMA_CHANGE":  # the change that follows has the new shape
            assert message.headers["operation"] == "SCHEMA_CHANGE"
            assert set((after["data"] or after["old_data"]).keys()) <= {n for n, _ in _columns(body["data"])}
