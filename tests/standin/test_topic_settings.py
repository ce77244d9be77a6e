"""``iggy.topic_settings``: what the topics pgsource creates carry, as Iggy reports them through the SDK.

The stand-in records what the create request gave (it enforces none of it, like it enforces
no retention): these tests show what pgsource asks for, and that an existing topic is left alone.
"""

from __future__ import annotations

import datetime as dt

from apache_iggy import HeaderKey, IggyExpiry, MaxTopicSize
from psycopg2 import sql

from tests.support import bodies, execute, start_service, stop_service, wait_for, write_config

from .conftest import logged_in, run

SETTINGS = {"message_expiry": "7d", "max_size": "10GB", "compression": "gzip"}


def _topic(address: str, topic: str):
    async def read():
        client = await logged_in(address)
        return await client.get_topic("pg", topic)

    return run(read())


def _given_options(details) -> set[str]:
    """The option keys the create request carried (the rest are the server's, in derived_options)."""
    return {key.value for key in details.options}


def _create_plain_topic(address: str, topic: str) -> None:
    async def create():
        client = await logged_in(address)
        await client.create_stream("pg")
        await client.create_topic("pg", topic, 1)

    run(create())


def _rows(dsn: str, *tables: str) -> None:
    for table in tables:
        execute(dsn, sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, v text)").format(sql.Identifier(table)))
        execute(dsn, sql.SQL("INSERT INTO {} (v) SELECT 'row ' || g FROM generate_series(1, 3) g")
                .format(sql.Identifier(table)))


def test_created_topics_carry_the_settings_and_existing_ones_are_left_alone(pg_dsn, iggy, tmp_path):
    _rows(pg_dsn, "fresh", "existing")
    _create_plain_topic(iggy.address, "existing")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["fresh", "existing"]},
                          iggy={"topic_settings": SETTINGS})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "fresh")) == 3 and len(bodies(iggy, "existing")) == 3, 60, message="rows")
        iggy.restart(keep_data=True)  # the publisher reconnects and looks at both topics again
        execute(pg_dsn, "INSERT INTO existing (v) VALUES ('after the restart')")
        wait_for(lambda: len(bodies(iggy, "existing")) == 4, 60, message="a row after Iggy's restart")
    finally:
        assert stop_service(service) == 0

    fresh = _topic(iggy.address, "fresh")
    assert isinstance(fresh.message_expiry, IggyExpiry.ExpireDuration)
    assert fresh.message_expiry.duration == dt.timedelta(days=7)
    assert isinstance(fresh.max_topic_size, MaxTopicSize.Custom) and fresh.max_topic_size.bytes == 10**10
    assert fresh.compression_algorithm == "gzip"

    existing = _topic(iggy.address, "existing")  # as it was created: never expires, unlimited, none
    assert isinstance(existing.message_expiry, IggyExpiry.NeverExpire)
    assert isinstance(existing.max_topic_size, MaxTopicSize.Unlimited)
    assert existing.compression_algorithm == "none"

    log = config.with_suffix(".log").read_text()
    assert ("created Iggy topic pg/fresh with 1 partition(s), message_expiry 7d, max_size 10000000000 bytes,"
            " compression gzip") in log
    told = [line for line in log.splitlines() if "Iggy topic pg/existing exists and is not altered" in line]
    assert len(told) == 1, told  # once, not again after the reconnect
    assert "message_expiry is never, iggy.topic_settings.message_expiry says 7d" in told[0]
    assert "max_size is unlimited, iggy.topic_settings.max_size says 10000000000" in told[0]
    assert "compression is none, iggy.topic_settings.compression says gzip" in told[0]
    assert "INFO" in told[0]
    assert "pg/fresh exists and is not altered" not in log


def test_words_never_and_unlimited_and_the_server_defaults(pg_dsn, iggy, tmp_path):
    _rows(pg_dsn, "kept", "defaults")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["kept"]},
                          iggy={"topic_settings": {"message_expiry": "never", "max_size": "unlimited"}})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "kept")) == 3, 60, message="rows")
    finally:
        assert stop_service(service) == 0
    kept = _topic(iggy.address, "kept")
    assert isinstance(kept.message_expiry, IggyExpiry.NeverExpire)
    assert isinstance(kept.max_topic_size, MaxTopicSize.Unlimited)
    assert kept.compression_algorithm == "none"
    assert {"message_expiry", "max_topic_size"} <= _given_options(kept)  # said, not left to the server

    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["defaults"]})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "defaults")) == 3, 60, message="rows")
    finally:
        assert stop_service(service) == 0
    defaults = _topic(iggy.address, "defaults")  # server_default: nothing sent, the server's own values
    assert not {"message_expiry", "max_topic_size"} & _given_options(defaults)
    assert defaults.compression_algorithm == "none"


def test_the_standin_reports_the_compression_a_create_asked_for(standin):
    async def scenario():
        client = await logged_in(standin.address)
        await client.create_stream("s")
        await client.create_topic("s", "zipped", 1, compression_algorithm="gzip")
        await client.create_topic("s", "plain", 1, compression_algorithm="none")
        await client.create_topic("s", "unsaid", 1)
        return [await client.get_topic("s", name) for name in ("zipped", "plain", "unsaid")]

    zipped, plain, unsaid = run(scenario())
    assert (zipped.compression_algorithm, plain.compression_algorithm, unsaid.compression_algorithm) == (
        "gzip", "none", "none")
    assert HeaderKey.String("compression_algorithm") in zipped.options
