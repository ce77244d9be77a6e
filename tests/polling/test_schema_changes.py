"""Schema changes, visible in polling (issue 20, part 4): the same SCHEMA_CHANGE message CDC sends,
between the last row of the old shape and the first of the new one, for ADD COLUMN, DROP COLUMN,
ALTER TYPE and RENAME COLUMN; nothing for an ALTER that leaves the columns alone, nothing twice."""

from __future__ import annotations

import json

from tests.support import execute, start_service, stop_service, wait_for, write_config

BEFORE = [("id", "integer"), ("a", "integer"), ("b", "text"), ("c", "character varying(10)")]
STEPS = [  # (DDL, the row inserted after it, the columns after it)
    ("ALTER TABLE t ADD COLUMN d numeric(8,2)", "INSERT INTO t (a, b, c, d) VALUES (2, 'x', 'y', 1.5)",
     BEFORE + [("d", "numeric(8,2)")]),
    ("ALTER TABLE t DROP COLUMN b", "INSERT INTO t (a, c, d) VALUES (3, 'z', 2.5)",
     [("id", "integer"), ("a", "integer"), ("c", "character varying(10)"), ("d", "numeric(8,2)")]),
    ("ALTER TABLE t ALTER COLUMN a TYPE bigint", "INSERT INTO t (a, c, d) VALUES (4, 'w', 3.5)",
     [("id", "integer"), ("a", "bigint"), ("c", "character varying(10)"), ("d", "numeric(8,2)")]),
    ("ALTER TABLE t RENAME COLUMN c TO code", "INSERT INTO t (a, code, d) VALUES (5, 'v', 4.5)",
     [("id", "integer"), ("a", "bigint"), ("code", "character varying(10)"), ("d", "numeric(8,2)")]),
    ("ALTER TABLE t ADD CONSTRAINT positive CHECK (a > 0)", "INSERT INTO t (a, code, d) VALUES (6, 'u', 5.5)", None),
]


def _bodies(iggy) -> list[dict]:
    if "pg" not in iggy.streams() or "t" not in iggy.topics("pg"):
        return []
    return [json.loads(m.payload) for m in iggy.messages("pg", "t")]


def _columns(shape: dict) -> list[tuple[str, str]]:
    return [(column["name"], column["type"]) for column in shape["columns"]]


def test_each_change_of_the_columns_is_announced_once_between_the_shapes(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY, a int, b text, c varchar(10));"
                    " INSERT INTO t (a, b, c) VALUES (1, 'a', 'b')")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["t"], "poll_interval": "50ms"})
    service = start_service(config)
    try:
        wait_for(lambda: len(_bodies(iggy)) == 1, 30, message="the first row")
        for count, (ddl, insert, _) in enumerate(STEPS, start=2):
            execute(pg_dsn, ddl)
            execute(pg_dsn, insert)
            wait_for(lambda count=count: sum(b["operation_type"] == "SELECT" for b in _bodies(iggy)) == count, 60,
                     message=f"row {count}")
    finally:
        assert stop_service(service) == 0
    bodies = _bodies(iggy)
    assert [b["operation_type"] for b in bodies] == ["SELECT"] + ["SCHEMA_CHANGE", "SELECT"] * 4 + ["SELECT"]
    shapes = [BEFORE] + [after for _, _, after in STEPS if after]
    events = [b for b in bodies if b["operation_type"] == "SCHEMA_CHANGE"]
    assert [(_columns(e["old_data"]), _columns(e["data"])) for e in events] == list(zip(shapes, shapes[1:]))
    for event, row in zip(bodies[1::2], bodies[2::2]):  # the row after each event has the event's columns
        assert list(row["data"]) == [name for name, _ in _columns(event["data"])]
