"""Issue 18, item 7: a filled table ATTACHed as a partition of a captured partitioned table while
streaming has its rows delivered (a snapshot of the partition, under the parent's name), and the
stream goes on; a partition created empty (CREATE TABLE ... PARTITION OF) sends nothing extra."""

from __future__ import annotations

import pytest

from tests.cdc.common import TRANSPORTS, cdc_config, replay, stored, wait_slot_caught_up, wait_until_capturing
from tests.support import execute, query, start_service, stop_service, wait_for

EVENTS = """
CREATE TABLE ev (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO ev SELECT g, '2024-03-01', 'old' FROM generate_series(1, 300) g;
"""


def _table(dsn: str) -> dict:
    return {row[0]: {"id": row[0], "at": row[1], "v": row[2]} for row in query(dsn, "SELECT id, at::text, v FROM ev")}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rows_of_a_table_attached_while_streaming_are_delivered(pg_dsn, iggy, tmp_path, transport):
    execute(pg_dsn, EVENTS)
    config = cdc_config(tmp_path, pg_dsn, iggy, transport, tables=["ev"], snapshot="initial")
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        wait_for(lambda: len(stored(iggy, "ev")) >= 300, 30, message="the initial snapshot")
        execute(pg_dsn, "CREATE TABLE ev_2027 (LIKE ev INCLUDING ALL);"
                        " INSERT INTO ev_2027 SELECT g, '2027-03-01', 'filled' FROM generate_series(1001, 1100) g")
        execute(pg_dsn, "ALTER TABLE ev ATTACH PARTITION ev_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')")
        execute(pg_dsn, "UPDATE ev SET v = 'changed' WHERE id IN (1001, 1)")
        execute(pg_dsn, "CREATE TABLE ev_2026 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
        execute(pg_dsn, "INSERT INTO ev VALUES (2001, '2026-05-01', 'new')")
        try:
            wait_for(lambda: replay(stored(iggy, "ev"), "id") == _table(pg_dsn), 30, message="consumers converged on ev")
        except AssertionError:
            missing = sorted(set(_table(pg_dsn)) - set(replay(stored(iggy, "ev"), "id")))
            raise AssertionError(f"{len(missing)} rows never arrived: {missing[:5]}...") from None
        wait_slot_caught_up(pg_dsn)
    finally:
        assert stop_service(service) == 0
    bodies = [b for _, b, _ in stored(iggy, "ev")]
    assert {b["table_name"] for b in bodies} == {"ev"}
    filled = [b for b in bodies if b["operation_type"] == "SELECT" and b["data"]["id"] > 1000]
    assert sorted(b["data"]["id"] for b in filled) == list(range(1001, 1101))  # once each
    assert [b["operation_type"] for b in bodies if (b["data"] or {}).get("id") == 2001] == ["INSERT"]  # nothing extra
    log = config.with_suffix(".log").read_text()
    assert "partition ev_2027 was attached to ev" in log, log
