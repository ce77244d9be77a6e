"""Topics with N partitions, and partitioning by key: one row's changes stay in one partition, in order."""

from __future__ import annotations

import uuid

import pytest

from tests.cdc.common import wait_slot_caught_up
from tests.real.conftest import topics_for
from tests.real.reader import message_count, partition_counts, read_topic
from tests.support import execute, query, start_service, stop_service, wait_for, write_config

# The tables' ids are set by the test, one writer at a time: no transaction commits late, and
# the late-commit guard (which refuses client-set ids) is not what this suite checks: late_commits: off.

pytestmark = pytest.mark.timeout(900)


def test_cdc_changes_of_a_key_stay_in_one_partition_in_order(real_iggy, real_pg_dsn, real_stream, tmp_path):
    execute(real_pg_dsn, "CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL)")
    suffix = uuid.uuid4().hex[:8]
    slot = f"slot_{suffix}"
    config = write_config(
        tmp_path, real_pg_dsn, real_iggy.address,
        source={"mode": "cdc", "tables": ["items"], "replication_slot": slot, "publication_name": f"pub_{suffix}"},
        iggy=real_iggy.iggy_section(real_stream, partitioning="primary_key",
                                    **topics_for(real_iggy, real_stream, ["items"], partitions=4)),
    )
    service = start_service(config)
    try:
        wait_for(lambda: query(real_pg_dsn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)),
                 60, 0.2, message="the slot")
        execute(real_pg_dsn, "INSERT INTO items SELECT g, 0 FROM generate_series(1, 40) g")
        for version in range(1, 21):
            execute(real_pg_dsn, "UPDATE items SET version = %s WHERE id = 7", (version,))
        wait_for(lambda: message_count(real_iggy, real_stream, "items") >= 60, 60, 0.2, message="60 changes")
        wait_slot_caught_up(real_pg_dsn, slot)
    finally:
        assert stop_service(service) == 0
    assert len(partition_counts(real_iggy, real_stream, "items")) == 4
    stored = read_topic(real_iggy, real_stream, "items")
    partitions_of: dict[int, set[int]] = {}
    for message in stored:
        row = (message.body()["data"] or message.body()["old_data"])["id"]
        partitions_of.setdefault(row, set()).add(message.partition)
    assert all(len(p) == 1 for p in partitions_of.values())  # a key never changes partition
    assert len({next(iter(p)) for p in partitions_of.values()}) > 1  # 40 keys spread over the 4 partitions
    seven = [m for m in stored if (m.body()["data"] or {}).get("id") == 7]
    assert [m.body()["data"]["version"] for m in seven] == list(range(21))  # in offset order = commit order


def test_polling_into_a_topic_of_three_partitions(real_iggy, real_pg_dsn, real_stream, tmp_path):
    execute(real_pg_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    execute(real_pg_dsn, "INSERT INTO t SELECT generate_series(1, 3000)")
    config = write_config(
        tmp_path, real_pg_dsn, real_iggy.address, source={"tables": ["t"], "batch_size": 250, "late_commits": "off"},
        iggy=real_iggy.iggy_section(real_stream, **topics_for(real_iggy, real_stream, ["t"], partitions=3)),
    )
    service = start_service(config)
    try:
        wait_for(lambda: message_count(real_iggy, real_stream, "t") >= 3000, 120, 0.2, message="3000 rows")
    finally:
        assert stop_service(service) == 0
    counts = partition_counts(real_iggy, real_stream, "t")
    assert len(counts) == 3 and sum(counts) == 3000 and all(counts)
    stored = read_topic(real_iggy, real_stream, "t")
    assert sorted(m.body()["data"]["id"] for m in stored) == list(range(1, 3001))
