"""Configuration parsing without a database: defaults, durations, env, workers mapping."""

from __future__ import annotations

import pytest

from pgsource.config import parse_config
from pgsource.config.duration import parse_duration
from pgsource.config.size import parse_size
from pgsource.errors import ConfigError

MINIMAL = "source: {connection_string: 'postgresql://u@h/db', mode: polling, tables: [users]}\n"


def test_seed_defaults_are_kept():
    source = parse_config(MINIMAL).source
    assert (source.batch_size, source.tracking_column, source.max_connections) == (1000, "id", 10)
    assert (source.publication_name, source.replication_slot, source.cdc_backend) == ("iggy_publication", "iggy_slot", "builtin")
    assert [op.value for op in source.capture_operations] == ["INSERT", "UPDATE", "DELETE"]
    assert source.include_metadata is True and source.snake_case_columns is False and source.poll_interval == 1.0


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), (2, 2.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_days_only_where_retention_is_meant():
    assert parse_duration("7d", days=True) == 7 * 86400
    with pytest.raises(ValueError, match="'7d' is not a duration"):
        parse_duration("7d")


@pytest.mark.parametrize(("text", "size"), [(1000000, 1000000), ("1000000", 1000000), ("10GB", 10**10),
                                            ("512MiB", 512 * 2**20), ("1.5 kb", 1500), ("2TiB", 2 * 2**40)])
def test_sizes(text, size):
    assert parse_size(text) == size


def test_topic_settings_default_to_the_server_and_take_user_forms():
    assert parse_config(MINIMAL).iggy.topic_settings.model_dump() == {
        "message_expiry": "server_default", "max_size": "server_default", "compression": "none"}
    text = MINIMAL + "iggy: {topic_settings: {message_expiry: 7d, max_size: 10GB, compression: gzip}}\n"
    settings = parse_config(text).iggy.topic_settings
    assert (settings.message_expiry, settings.max_size, settings.compression) == (7 * 86400, 10**10, "gzip")
    assert settings.describe() == "message_expiry 7d, max_size 10000000000 bytes, compression gzip"
    words = parse_config(MINIMAL + "iggy: {topic_settings: {message_expiry: never, max_size: unlimited}}\n")
    assert (words.iggy.topic_settings.message_expiry, words.iggy.topic_settings.max_size) == ("never", "unlimited")


def test_seed_json_is_accepted_under_source():
    config = parse_config(
        '{"source": {"connection_string": "postgresql://u@h/db", "mode": "cdc", "tables": ["users", "orders"],'
        ' "poll_interval": "30s", "capture_operations": ["insert", "DELETE"]}}'
    )
    assert config.source.cdc and [op.value for op in config.source.capture_operations] == ["INSERT", "DELETE"]


def test_environment_variables_fill_secrets():
    text = MINIMAL + "iggy: {password: '${IGGY_PASSWORD}', username: '${IGGY_USER:-iggy}'}\n"
    config = parse_config(text, environ={"IGGY_PASSWORD": "s3cret"})
    assert (config.iggy.password, config.iggy.username) == ("s3cret", "iggy")
    with pytest.raises(ConfigError, match=r"iggy.password: environment variable IGGY_PASSWORD is not set"):
        parse_config(text, environ={})


def test_workers_mapping_must_cover_every_table_once():
    text = "source: {connection_string: x, mode: polling, tables: [a, b, c]}\nworkers: {w1: [a], w2: [a, d]}\n"
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    assert "workers.w2: table 'd' is not in source.tables" in str(error.value)


def test_table_names_keep_their_case_and_schema():
    config = parse_config("source: {connection_string: x, mode: polling, tables: ['Order Items', sales.orders]}\n")
    assert [t.qualified for t in config.source.tables] == ["Order Items", "sales.orders"]
    assert config.iggy.topic_for(config.source.tables[1]) == "orders"


def test_legacy_enable_wal_cdc_must_agree_with_mode():
    with pytest.raises(ConfigError, match="enable_wal_cdc: true contradicts mode: polling"):
        parse_config("source: {connection_string: x, mode: polling, tables: [t], enable_wal_cdc: true}\n")
    assert parse_config("source: {connection_string: x, mode: cdc, tables: [t], enable_wal_cdc: true}\n").source.cdc


def test_a_dotted_string_is_schema_and_table_and_exact_names_stay_apart():
    """The one naming rule: ``a.b`` is schema a, table b; public."a.b" is written {name: a.b} or quoted."""
    from pgsource.plan.assignment import assign_units

    text = (
        "source: {connection_string: x, mode: polling, tables: ['a.b', {name: a.b}, {schema: 'x.y', name: 'q\"t'},"
        " '\"c.d\".e', 'public.plain']}\n"
        "iggy: {topic: '{schema}.{table}'}\n"
        "workers: {w1: ['a.b', 'public.plain'], w2: ['\"a.b\"', {schema: 'x.y', name: 'q\"t'}, 'c.d'.e]}\n"
    ).replace("'c.d'.e", "'\"c.d\".e'")
    config = parse_config(text)
    tables = config.source.tables
    assert [(t.schema_, t.name) for t in tables] == [("a", "b"), ("public", "a.b"), ("x.y", 'q"t'), ("c.d", "e"),
                                                      ("public", "plain")]
    assert [t.qualified for t in tables] == ["a.b", '"a.b"', '"x.y"."q""t"', '"c.d".e', "plain"]
    assert [t.message_name for t in tables] == ["a.b", "a.b", 'x.y.q"t', "c.d.e", "plain"]  # PostgreSQL's names
    assert [config.iggy.topic_for(t) for t in tables] == ["a.b", "public.a.b", 'x.y.q"t', "c.d.e", "public.plain"]
    units = assign_units(config)
    assert {w: [u.key for u in us] for w, us in units.items()} == {
        "w1": ["polling/a.b", "polling/plain"], "w2": ['polling/"a.b"', 'polling/"x.y"."q""t"', 'polling/"c.d".e']}
    from pgsource.state import FileStateStore

    store = FileStateStore("/tmp/unused")
    assert len({store.path(u.key) for us in units.values() for u in us}) == 5  # five files, no collision
    # a reference read back is the same table: the syntax round-trips
    for table in tables:
        again = parse_config(f"source: {{connection_string: x, mode: polling, tables: [{table.qualified!r}]}}\n")
        assert (again.source.tables[0].schema_, again.source.tables[0].name) == (table.schema_, table.name)


def test_names_that_would_mix_up_messages_are_refused():
    with pytest.raises(ConfigError, match=r"a\.b and \"a\.b\" would both be sent to topic 'events' as table_name 'a\.b'"):
        parse_config("source: {connection_string: x, mode: polling, tables: [a.b, {name: a.b}]}\niggy: {topic: events}\n")
    with pytest.raises(ConfigError, match="a dotted string is schema.table"):
        parse_config("source: {connection_string: x, mode: polling, tables: [a.b.c]}\n")
    with pytest.raises(ConfigError, match=r"workers.w: table '\"a.b\"' is not in source.tables"):
        parse_config("source: {connection_string: x, mode: polling, tables: [a.b]}\nworkers: {w: ['\"a.b\"']}\n")
    with pytest.raises(ConfigError, match="cannot hold a NUL"):
        parse_config('source: {connection_string: x, mode: polling, tables: [{name: "a\\0b"}]}\n')
