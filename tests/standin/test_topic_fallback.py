"""A server that refuses the create-topic options the SDK sends (``UnsupportedOptionKey``: a server
older than apache-iggy 0.9.0, such as the 0.9.0-edge.5 source snapshot the transcripts come from)
gets the topic created again without options; one WARNING says what was not applied; the topic is
then checked as an existing one (issue 23). Before, pgsource stopped with exit 5."""

from __future__ import annotations

import asyncio
import logging

from apache_iggy import IggyClient

from pgsource.config.model import IggyConfig
from pgsource.encode import frames
from pgsource.sink import IggySink
from pgsource_testkit.iggy import IggyStandIn
from tests.support import bodies, execute, start_service, stop_service, wait_for, write_config

FALLBACK = "refused the create-topic options apache-iggy 0.9.0 sends"


def test_the_topic_is_created_without_options_and_the_warning_names_what_was_lost(caplog):
    config = IggyConfig(address="127.0.0.1:1", stream="s", partitions=2,
                        topic_settings={"message_expiry": "7d", "compression": "gzip"})
    parts = frames.encode_partition_frames([1, 2], [0, 1], ["a", "b"])

    async def scenario(server) -> tuple[int, int]:
        sink = IggySink(config.model_copy(update={"address": server.address}))
        await sink.connect()
        sent = await sink.send_frames("s", "t", parts)
        again = IggySink(config.model_copy(update={"address": server.address}))  # a restart: the topic exists
        await again.connect()
        sent += await again.send_frames("s", "t", parts)
        admin = IggyClient(server.address)
        await admin.connect()
        await admin.login_user("iggy", "iggy")
        return sent, (await admin.get_topic("s", "t")).partitions_count

    with caplog.at_level(logging.INFO, logger="pgsource.sink.iggy"), IggyStandIn(accept_wheel_topic_options=False) as server:
        sent, partitions = asyncio.run(scenario(server))
        assert [m.payload for m in server.messages("s", "t")] == [b"a", b"a", b"b", b"b"]
    assert sent == 4 and partitions == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert FALLBACK in warnings[0] and "created Iggy topic s/t without options: 2 partition(s)" in warnings[0]
    assert "iggy.topic_settings NOT applied: message_expiry 7d, compression gzip" in warnings[0]


def test_run_against_a_server_that_refuses_them_delivers(pg_dsn, tmp_path):
    execute(pg_dsn, "CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t SELECT FROM generate_series(1, 20)")
    with IggyStandIn(accept_wheel_topic_options=False) as server:
        config = write_config(tmp_path, pg_dsn, server.address, source={"tables": ["t"]})
        service = start_service(config)
        try:
            wait_for(lambda: len(bodies(server, "t")) == 20, 60, message="20 rows")
        finally:
            assert stop_service(service) == 0
    log = config.with_suffix(".log").read_text()
    assert log.count(FALLBACK) == 1 and "iggy.topic_settings asks for nothing else" in log
