"""Configuration parsing without a database: defaults, durations, env, workers mapping."""

from __future__ import annotations

import pytest

from pgsource.config import parse_config
from pgsource.config.duration import parse_duration
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
