"""Issue 9, item 6: a row's changes stay on the partition of its primary key, under REPLICA IDENTITY FULL too.

pgoutput flags every column as key under FULL identity; the partition must come from the
catalog's primary key, and be the one polling and the snapshot pick for that key (the key
columns' text, NUL-joined when there are several).
"""

from __future__ import annotations

import pytest

from tests.cdc.common import TRANSPORTS, cdc_config, wait_until_capturing
from tests.support import execute, start_service, stop_service, wait_for, write_config

UPDATES = 20


def _partitions(iggy, stream: str, topic: str, operation: str) -> list[int]:
    import json

    return [m.partition for m in iggy.messages(stream, topic) if json.loads(m.payload)["operation_type"] == operation]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_updates_of_one_row_under_full_identity_land_on_its_key_partition(pg_dsn, iggy, tmp_path, transport):
    from pgsource.encode.ids import key_partition

    execute(pg_dsn, "CREATE TABLE f (id int PRIMARY KEY, v int); ALTER TABLE f REPLICA IDENTITY FULL")
    execute(pg_dsn, "CREATE TABLE g (region text, id int, v int, PRIMARY KEY (region, id));"
                    " ALTER TABLE g REPLICA IDENTITY FULL")
    execute(pg_dsn, "INSERT INTO f VALUES (7, 0); INSERT INTO g VALUES ('eu', 7, 0)")
    (tmp_path / "cdc").mkdir()
    (tmp_path / "poll").mkdir()
    partitions = {"partitions": 4}
    config = cdc_config(tmp_path / "cdc", pg_dsn, iggy, transport, tables=["f", "g"], snapshot="initial",
                        sections={"iggy": {"stream": "pg", "topic": "{table}", **partitions}})
    service = start_service(config)
    try:
        wait_until_capturing(pg_dsn, transport)
        wait_for(lambda: iggy.message_count("pg", "f") == 1 and iggy.message_count("pg", "g") == 1, 30,
                 message="the snapshot rows")
        for value in range(1, UPDATES + 1):
            execute(pg_dsn, "UPDATE f SET v = %s; UPDATE g SET v = %s", (value, value))
        wait_for(lambda: iggy.message_count("pg", "f") == 1 + UPDATES and iggy.message_count("pg", "g") == 1 + UPDATES,
                 30, message="every update")
    finally:
        assert stop_service(service) == 0
    polling = start_service(write_config(tmp_path / "poll", pg_dsn, iggy.address, source={"tables": ["f", "g"], "lag": "1s"},
                                         iggy={"stream": "polled", **partitions}))
    try:
        wait_for(lambda: iggy.message_count("polled", "f") == 1 and iggy.message_count("polled", "g") == 1, 30,
                 message="the polled rows")
    finally:
        assert stop_service(polling) == 0
    for table, key in (("f", "7"), ("g", "eu\x007")):
        updates = _partitions(iggy, "pg", table, "UPDATE")
        assert len(updates) == UPDATES
        assert set(updates) == {key_partition(key, 4)}, f"{table}: updates of one row on partitions {sorted(set(updates))}"
        assert _partitions(iggy, "pg", table, "SELECT") == [updates[0]]  # the snapshot's row: the same partition
        assert _partitions(iggy, "polled", table, "SELECT") == [updates[0]]  # polling's: the same partition
