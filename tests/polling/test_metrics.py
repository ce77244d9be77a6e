"""Prometheus: the supervisor serves counters summed over every process."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from pgsource.testkit.postgres import free_port
from tests.support import bodies, execute, start_service, stop_service, wait_for, write_config


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_rows_read_and_messages_acknowledged(pg_dsn, iggy, tmp_path):
    port = free_port()
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO users SELECT FROM generate_series(1, 1234)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["users"], "batch_size": 100},
                          metrics={"port": port, "host": "127.0.0.1"})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 1234, 30, message="all rows")
        sent = ("pgsource_sink_messages_sent_total", (("table", "users"),))
        read = ("pgsource_source_rows_read_total", (("table", "users"), ("worker", "worker-0")))
        wait_for(lambda: _scrape(port).get(sent) == 1234, 10, message="the sent counter")
        samples = _scrape(port)
    finally:
        assert stop_service(service) == 0
    assert samples[read] == 1234
    assert samples[("pgsource_state_offset_commits_total", (("worker", "worker-0"),))] == 13
    assert samples[("pgsource_sink_send_duration_seconds_count", ())] == 13
