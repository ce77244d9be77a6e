"""Prometheus: the supervisor serves figures summed over every process, and they match what
reached Iggy and what PostgreSQL holds."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from pgsource.encode.frames import FRAME_HEADER_SIZE
from pgsource_testkit.postgres import free_port
from tests.support import bodies, execute, query, start_service, stop_service, wait_for, write_config


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics ({} while the service does not listen yet)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except (urllib.error.URLError, ConnectionError):
        return {}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


_scrape = scrape  # the name other test modules import


def names(samples) -> set[str]:
    return {name for name, _ in samples}


def test_metrics_match_iggy_and_postgresql(pg_dsn, iggy, tmp_path):
    port = free_port()
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO users (name) SELECT repeat('x', g % 50) FROM generate_series(1, 1234) g")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["users"], "batch_size": 100},
                          metrics={"port": port, "host": "127.0.0.1"})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 1234, 30, message="all rows")
        sent = ("pgsource_sink_messages_sent_total", (("table", "users"),))
        wait_for(lambda: scrape(port).get(sent) == 1234, 10, message="the sent counter")
        wait_for(lambda: scrape(port).get(("pgsource_health_ready_state", ())) == 1, 15, message="ready")
        samples = scrape(port)
    finally:
        assert stop_service(service) == 0
    stored = iggy.messages("pg", "users")
    in_database = query(pg_dsn, "SELECT count(*) FROM users")[0][0]
    worker = (("worker", "worker-0"),)
    assert samples[sent] == len(stored) == in_database == 1234
    assert samples[("pgsource_source_rows_read_total", (("table", "users"), *worker))] == in_database
    frame_bytes = sum(FRAME_HEADER_SIZE + len(m.payload) + len(m.raw_headers) for m in stored)
    assert samples[("pgsource_sink_bytes_sent_total", (("table", "users"),))] == frame_bytes
    batches = 13  # 12 × 100 + 34
    assert samples[("pgsource_state_offset_commits_total", worker)] == batches
    assert samples[("pgsource_sink_send_duration_seconds_count", ())] == batches
    assert samples[("pgsource_sink_batch_size_messages_count", worker)] == batches
    assert samples[("pgsource_sink_batch_size_messages_sum", worker)] == 1234
    assert samples[("pgsource_sink_batch_size_messages_bucket", (("le", "100.0"), *worker))] == batches
    assert samples[("pgsource_sink_batch_size_bytes_sum", worker)] == frame_bytes
    assert samples[("pgsource_sink_ack_latency_seconds_count", worker)] == batches
    assert samples[("pgsource_source_batches_in_flight", worker)] == 0
    assert samples[("pgsource_sink_queue_depth_batches", ())] == 0
    assert samples[("pgsource_source_horizon_holder_pid", (("table", "users"), *worker))] == 0
    assert not any(name.startswith("pgsource_sink_send_errors") and value for (name, _), value in samples.items())
    assert not any(dict(labels).get("pid") for _, labels in samples)  # no pid label anywhere


def test_offset_age_is_now_minus_the_newest_acknowledged_time(pg_dsn, iggy, tmp_path):
    port = free_port()
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY, at timestamptz NOT NULL)")
    execute(pg_dsn, "INSERT INTO events (at) SELECT now() - interval '1 hour' + g * interval '1 second'"
                    " FROM generate_series(1, 300) g")
    newest = query(pg_dsn, "SELECT extract(epoch FROM max(at))::float8 FROM events")[0][0]
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": [{"name": "events", "tracking_column": "at"}], "batch_size": 100,
                                  "lag": "1s"},  # values set by the test: no horizon bounds them
                          metrics={"port": port, "host": "127.0.0.1"})
    service = start_service(config)
    age = ("pgsource_source_offset_age_seconds", (("table", "events"), ("worker", "worker-0")))
    try:
        wait_for(lambda: len(bodies(iggy, "events")) >= 300, 30, message="all rows")
        wait_for(lambda: age in scrape(port), 10, message="the offset age")
        first = scrape(port)[age]
        scraped_at = time.time()
        assert abs(first - (scraped_at - newest)) < 3, (first, scraped_at - newest)
        wait_for(lambda: scrape(port)[age] >= first + 1.5, 10, message="the age growing while nothing new comes")
    finally:
        assert stop_service(service) == 0


def test_restarts_are_counted_by_cause(pg_dsn, iggy, tmp_path):
    import os
    import signal

    from tests.polling.test_health import _worker_process

    port = free_port()
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["users"]},
                          metrics={"port": port, "host": "127.0.0.1"})
    service = start_service(config)
    key = ("pgsource_supervisor_worker_restarts_total", (("cause", "signal"), ("worker", "worker-0")))
    try:
        wait_for(lambda: scrape(port).get(("pgsource_health_ready_state", ())) == 1, 30, message="ready")
        os.kill(_worker_process(service.pid, pg_dsn), signal.SIGKILL)
        wait_for(lambda: scrape(port).get(key) == 1, 30, message="the restart counted")
        execute(pg_dsn, "INSERT INTO users DEFAULT VALUES")
        wait_for(lambda: len(bodies(iggy, "users")) == 1, 30, message="a row after the restart")
    finally:
        assert stop_service(service) == 0
