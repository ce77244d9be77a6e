"""Batches near and over the server's 64 MiB request limit (a request over it closes the connection)."""

from __future__ import annotations

import pytest

from tests.real.conftest import topics_for
from tests.real.reader import message_count, read_topic
from tests.support import execute, start_service, stop_service, wait_for, write_config

# The tables' ids are set by the test, one writer at a time: no transaction commits late, and
# the late-commit guard (which refuses client-set ids) is not what this suite checks: late_commits: off.

pytestmark = pytest.mark.timeout(900)

ROW_BYTES = 1_100_000  # 60 rows ≈ 66 MB of frames: one request at 98 % of the limit; 62 rows would exceed it


@pytest.mark.parametrize(("rows", "batch_size"), [(120, 60), (124, 124)], ids=["near-the-limit", "over-the-limit"])
def test_wide_batches_arrive_once_in_order(real_iggy, real_pg_dsn, real_stream, tmp_path, rows, batch_size):
    execute(real_pg_dsn, "CREATE TABLE wide (id int PRIMARY KEY, blob text)")
    execute(real_pg_dsn, "INSERT INTO wide SELECT g, repeat(chr(64 + g %% 26), %s) FROM generate_series(1, %s) g",
            (ROW_BYTES, rows))
    config = write_config(
        tmp_path, real_pg_dsn, real_iggy.address,
        source={"tables": ["wide"], "batch_size": batch_size, "late_commits": "off"},
        iggy=real_iggy.iggy_section(real_stream, send_timeout="60s", **topics_for(real_iggy, real_stream, ["wide"])),
    )
    service = start_service(config)
    try:
        wait_for(lambda: message_count(real_iggy, real_stream, "wide") >= rows, 300, 1, message=f"{rows} wide rows")
    finally:
        assert stop_service(service) == 0
    stored = read_topic(real_iggy, real_stream, "wide")
    assert [m.body()["data"]["id"] for m in stored] == list(range(1, rows + 1))
    assert all(len(m.body()["data"]["blob"]) == ROW_BYTES for m in stored)
    assert [m.offset for m in stored] == list(range(rows))
    assert "retrying" not in config.with_suffix(".log").read_text()  # no request was refused or dropped
