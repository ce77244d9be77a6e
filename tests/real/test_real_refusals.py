"""What no retry can fix stops the service with exit code 5 and one clear line (before: retried for ever).

(A topic deleted while running is created again when ``create_missing`` is true: that needs a
server that accepts the wheel's create options; ``tests/unit/test_frames.py`` covers it.)"""

from __future__ import annotations

import asyncio

import pytest

from tests.real import reader
from tests.real.reader import message_count
from tests.support import execute, start_service, stop_service, wait_for, write_config

# The tables' ids are set by the test, one writer at a time: no transaction commits late, and
# the late-commit guard (which refuses client-set ids) is not what this suite checks: late_commits: off.

pytestmark = pytest.mark.timeout(600)


def _run_until_exit(server, dsn, stream, tmp_path, timeout: float = 120, **iggy_keys) -> tuple[int, str]:
    execute(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    execute(dsn, "INSERT INTO t SELECT generate_series(1, 10)")
    config = write_config(tmp_path, dsn, server.address, source={"tables": ["t"], "late_commits": "off"},
                          iggy=server.iggy_section(stream, **iggy_keys))
    service = start_service(config)
    try:
        code = service.wait(timeout)
    finally:
        if service.poll() is None:
            stop_service(service)
    return code, config.with_suffix(".log").read_text()


def test_a_wrong_password(real_iggy, real_pg_dsn, real_stream, tmp_path):
    code, log = _run_until_exit(real_iggy, real_pg_dsn, real_stream, tmp_path, password="not-the-password")
    assert code == 5
    assert f"Iggy at {real_iggy.address.split(',')[0]} refused user 'iggy'" in log and "Invalid credentials" in log  # the first seed


def test_a_missing_topic_with_create_missing_false(real_iggy, real_pg_dsn, real_stream, tmp_path):
    reader.create_topics(real_iggy, real_stream, [], 1)  # the stream only
    code, log = _run_until_exit(real_iggy, real_pg_dsn, real_stream, tmp_path, create_missing=False)
    assert code == 5
    assert f"Iggy topic {real_stream}/t does not exist and iggy.create_missing is false" in log


def test_a_missing_stream_with_create_missing_false(real_iggy, real_pg_dsn, real_stream, tmp_path):
    code, log = _run_until_exit(real_iggy, real_pg_dsn, real_stream, tmp_path, create_missing=False)
    assert code == 5
    assert f"Iggy stream '{real_stream}' does not exist and iggy.create_missing is false" in log


def test_a_topic_with_fewer_partitions_than_configured(real_iggy, real_pg_dsn, real_stream, tmp_path):
    reader.create_topics(real_iggy, real_stream, ["t"], 1)
    code, log = _run_until_exit(real_iggy, real_pg_dsn, real_stream, tmp_path, partitions=3)
    assert code == 5
    assert f"Iggy topic {real_stream}/t has 1 partition(s), iggy.partitions asks for 3" in log
    assert message_count(real_iggy, real_stream, "t") == 0


def test_creating_the_topic_with_the_wheels_options(real_iggy, real_pg_dsn, real_stream, tmp_path):
    """apache-iggy 0.9.0 always sends the create-topic options ``durability`` and
    ``consumer_offset_durability``. A server older than the wheel (the 2026-08-21 source
    snapshot) refuses them with UnsupportedOptionKey: pgsource creates the topic again without
    options and says so once (WARNING, naming what was not applied). A server that accepts them
    gets the topic with them. Either way the rows arrive, in the configured partitions."""
    execute(real_pg_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    execute(real_pg_dsn, "INSERT INTO t SELECT generate_series(1, 10)")
    config = write_config(tmp_path, real_pg_dsn, real_iggy.address, source={"tables": ["t"], "late_commits": "off"},
                          iggy=real_iggy.iggy_section(real_stream, partitions=2,
                                                      topic_settings={"message_expiry": "7d"}))
    service = start_service(config)
    try:
        wait_for(lambda: message_count(real_iggy, real_stream, "t") >= 10, 60, 0.2, message="10 rows")
    finally:
        assert stop_service(service) == 0
    assert len(reader.partition_counts(real_iggy, real_stream, "t")) == 2
    log = config.with_suffix(".log").read_text()
    fallback = "refused the create-topic options apache-iggy 0.9.0 sends"
    if real_iggy.refuses_wheel_topic_options:
        assert log.count(fallback) == 1 and "iggy.topic_settings NOT applied: message_expiry 7d" in log, log
    else:
        assert fallback not in log


def _delete_topic(server, stream: str, topic: str) -> None:
    async def delete() -> None:
        client = await reader._client(server)
        await client.delete_topic(stream, topic)

    asyncio.run(delete())


def test_a_topic_deleted_while_running(real_iggy, real_pg_dsn, real_stream, tmp_path):
    """Not found is permanent only when pgsource may not create: with create_missing: false the
    service stops (exit 5) naming the topic; it never skips the rows meant for it."""
    execute(real_pg_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    execute(real_pg_dsn, "INSERT INTO t SELECT generate_series(1, 10)")
    reader.create_topics(real_iggy, real_stream, ["t"], 1)
    config = write_config(tmp_path, real_pg_dsn, real_iggy.address, source={"tables": ["t"], "late_commits": "off"},
                          iggy=real_iggy.iggy_section(real_stream, create_missing=False))
    service = start_service(config)
    try:
        wait_for(lambda: message_count(real_iggy, real_stream, "t") >= 10, 60, 0.2, message="10 rows")
        _delete_topic(real_iggy, real_stream, "t")
        execute(real_pg_dsn, "INSERT INTO t VALUES (11)")
        assert service.wait(120) == 5
    finally:
        if service.poll() is None:
            stop_service(service)
    assert f"Iggy topic {real_stream}/t does not exist and iggy.create_missing is false" in (
        config.with_suffix(".log").read_text())
