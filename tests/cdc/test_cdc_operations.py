"""CDC under observation: slot figures collected at scrape time match pg_replication_slots, and
/readyz says "stuck" while changes wait and Iggy does not answer."""

from __future__ import annotations

import json
import time

from pgsource.lsn import parse_lsn
from pgsource_testkit.postgres import free_port
from tests.cdc.test_cdc import _wait_until_capturing
from tests.polling.test_health import get
from tests.polling.test_metrics import scrape
from tests.support import bodies, execute, query, start_service, stop_service, wait_for, write_config


def _slot(dsn: str) -> tuple[int, int, int, str]:
    row = query(dsn, "SELECT confirmed_flush_lsn::text, restart_lsn::text, pg_current_wal_lsn()::text, wal_status"
                     " FROM pg_replication_slots WHERE slot_name = 'iggy_slot'")[0]
    return parse_lsn(row[0]), parse_lsn(row[1]), parse_lsn(row[2]), row[3]


def _service(tmp_path, dsn, iggy, **sections):
    port = free_port()
    config = write_config(tmp_path, dsn, iggy.address, source={"mode": "cdc", "tables": ["users"]},
                          metrics={"port": port, "host": "127.0.0.1"}, **sections)
    return port, start_service(config)


def test_slot_metrics_match_pg_replication_slots(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY, name text)")
    port, service = _service(tmp_path, pg_dsn, iggy)
    worker = (("worker", "worker-0"),)
    try:
        _wait_until_capturing(pg_dsn, "replication")
        for start in range(0, 500, 100):
            execute(pg_dsn, "INSERT INTO users SELECT g, 'n' FROM generate_series(%s, %s) g", (start + 1, start + 100))
        wait_for(lambda: len(bodies(iggy, "users")) == 500, 30, message="500 changes")

        def consistent():
            before = _slot(pg_dsn)
            samples = scrape(port)
            after = _slot(pg_dsn)
            return (before, samples, after) if before == after else None

        before, samples, after = wait_for(consistent, 30, interval=0.2, message="a quiet slot to compare")
    finally:
        assert stop_service(service) == 0
    confirmed, restart, current, status = before
    assert samples[("pgsource_cdc_slot_confirmed_lsn_bytes", worker)] == confirmed
    assert samples[("pgsource_cdc_slot_retained_wal_bytes", worker)] == current - restart
    assert samples[("pgsource_cdc_slot_unconfirmed_wal_bytes", worker)] == current - confirmed
    assert samples[("pgsource_cdc_slot_wal_status_info", (("status", status), *worker))] == 1
    assert sum(v for (name, labels), v in samples.items() if name == "pgsource_cdc_slot_wal_status_info") == 1
    assert samples[("pgsource_cdc_commit_to_ack_seconds_count", worker)] >= 1
    assert samples[("pgsource_sink_batch_size_messages_sum", worker)] == 500


def test_readyz_goes_503_while_changes_wait_and_iggy_does_not_answer(pg_dsn, iggy, tmp_path):
    stall_after = 2.0
    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY, name text)")
    port, service = _service(tmp_path, pg_dsn, iggy, readiness={"stall_after": f"{stall_after}s"})
    try:
        _wait_until_capturing(pg_dsn, "replication")
        execute(pg_dsn, "INSERT INTO users VALUES (1, 'a')")
        wait_for(lambda: len(bodies(iggy, "users")) == 1, 30, message="the first change")
        wait_for(lambda: get(port, "/readyz")[0] == 200, 15, message="ready")
        time.sleep(stall_after + 1)  # the scenario: idle for longer than stall_after, and an idle slot is not a stall
        assert get(port, "/readyz")[0] == 200, get(port, "/readyz")[1]
        iggy.freeze()
        frozen_at = time.monotonic()
        execute(pg_dsn, "INSERT INTO users VALUES (2, 'b')")
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/readyz")),
                                stall_after + 10, interval=0.1, message="/readyz 503")
        took = time.monotonic() - frozen_at  # from the freeze, before the change was written
        assert stall_after <= took <= stall_after + 2, f"503 after {took:.2f}s"  # not at once: after stall_after
        reasons = json.dumps(json.loads(body)["stuck"])
        assert "unacknowledged" in reasons or "bytes of WAL written since" in reasons, reasons
        wait_for(lambda: "a batch of worker-0 unacknowledged" in get(port, "/readyz")[1], 10, message="the send named")
        iggy.freeze(False)
        thawed_at = time.monotonic()
        wait_for(lambda: get(port, "/readyz")[0] == 200, 10, interval=0.1, message="ready again")
        assert time.monotonic() - thawed_at <= 5, f"200 only after {time.monotonic() - thawed_at:.2f}s"
        wait_for(lambda: {b["data"]["id"] for b in bodies(iggy, "users")} == {1, 2}, 30, message="both changes")
    finally:
        iggy.freeze(False)
        assert stop_service(service) == 0


def test_status_and_verify_compare_the_slot(pg_dsn, iggy, tmp_path):
    from tests.support import run_cli

    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY, name text)")
    port, service = _service(tmp_path, pg_dsn, iggy)
    config = tmp_path / "pgsource.yaml"
    try:
        _wait_until_capturing(pg_dsn, "replication")
        execute(pg_dsn, "INSERT INTO users VALUES (1, 'a'), (2, 'b')")
        wait_for(lambda: len(bodies(iggy, "users")) == 2, 30, message="2 changes")
    finally:
        assert stop_service(service) == 0
    status = run_cli("status", "--config", str(config), "--json")
    assert status.returncode == 0, status.stderr
    slot = json.loads(status.stdout)["slots"][0]
    confirmed, restart, current, wal_status = _slot(pg_dsn)
    assert slot["slot"] == "iggy_slot" and slot["exists"] and slot["wal_status"] == wal_status
    assert slot["confirmed_lsn"] == query(pg_dsn, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots")[0][0]
    assert slot["retained_wal_bytes"] >= 0 and slot["bytes_behind"] >= 0
    newest = max(m.id >> 64 for m in iggy.messages("pg", "users"))
    ok = run_cli("verify", "--config", str(config))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"newest commit in Iggy {newest >> 32:X}/{newest & 0xFFFFFFFF:X}" in ok.stdout
    assert run_cli("drop-slot", "--config", str(config)).returncode == 0
    gone = run_cli("verify", "--config", str(config))
    assert gone.returncode == 10 and "slot iggy_slot (worker-0) does not exist" in gone.stderr


def test_cdc_metrics_name_tables_and_match_iggy_and_postgresql(pg_dsn, iggy, tmp_path):
    """Two tables (one outside public) share one topic; a snapshot, a transaction writing both, one
    larger than a batch. Per table, what was read, sent and snapshotted is what Iggy holds; every
    change batch observes commit→ack, cut batches of the large transaction too; the confirmed LSN
    is the slot's; after a restart, commit→ack counts from the commit in PostgreSQL."""
    from pgsource.encode.frames import FRAME_HEADER_SIZE

    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY, name text)")
    execute(pg_dsn, "CREATE SCHEMA sales")
    execute(pg_dsn, "CREATE TABLE sales.orders (id int PRIMARY KEY, total int)")
    execute(pg_dsn, "INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 300) g")
    execute(pg_dsn, "INSERT INTO sales.orders SELECT g, g FROM generate_series(1, 120) g")
    execute(pg_dsn, "ANALYZE users")
    execute(pg_dsn, "ANALYZE sales.orders")
    estimates = dict(query(pg_dsn, "SELECT relname, reltuples::bigint FROM pg_class WHERE relname IN ('users', 'orders')"))
    port = free_port()
    config = write_config(tmp_path, pg_dsn, iggy.address, iggy={"topic": "changes"},
                          source={"mode": "cdc", "tables": ["users", "sales.orders"], "snapshot": "initial",
                                  "batch_size": 50},
                          metrics={"port": port, "host": "127.0.0.1"})
    worker = (("worker", "worker-0"),)
    snapshot_batches = 6 + 3  # 300 and 120 rows by 50

    def by_table(operation=None) -> dict[str, list]:
        out: dict[str, list] = {}
        there = "pg" in iggy.streams() and "changes" in iggy.topics("pg")
        for m in iggy.messages("pg", "changes") if there else []:
            body = json.loads(m.payload)
            if operation is None or body["operation_type"] == operation:
                out.setdefault(body["table_name"], []).append(m)
        return out

    def counted(wanted: dict[str, int]):
        return lambda: {t: len(ms) for t, ms in by_table().items()} == wanted

    service = start_service(config)
    try:
        wait_for(counted({"users": 300, "sales.orders": 120}), 60, message="the snapshot")
        execute(pg_dsn, "BEGIN; INSERT INTO users SELECT g, 'a' FROM generate_series(301, 340) g;"
                        " INSERT INTO sales.orders SELECT g, g FROM generate_series(121, 130) g; COMMIT")
        execute(pg_dsn, "INSERT INTO users SELECT g, 'b' FROM generate_series(341, 470) g")  # 130 changes: 3+ batches
        wanted = {"users": 470, "sales.orders": 130}
        wait_for(counted(wanted), 30, message="every change")
        sent = {t: ("pgsource_sink_messages_sent_total", (("table", t),)) for t in wanted}

        def settled():
            before = _slot(pg_dsn)
            samples = scrape(port)
            done = all(samples.get(sent[t]) == n for t, n in wanted.items())
            same = samples.get(("pgsource_cdc_confirmed_lsn_bytes", worker)) == before[0]
            return (before, samples) if done and same and _slot(pg_dsn) == before else None

        (confirmed, *_), samples = wait_for(settled, 30, interval=0.2, message="figures and slot at rest")
    finally:
        assert stop_service(service) == 0
    stored = by_table()
    for table, count in wanted.items():
        labels = (("table", table), *worker)
        assert samples[("pgsource_source_rows_read_total", labels)] == count == len(stored[table])
        frame_bytes = sum(FRAME_HEADER_SIZE + len(m.payload) + len(m.raw_headers) for m in stored[table])
        assert samples[("pgsource_sink_bytes_sent_total", (("table", table),))] == frame_bytes
    assert not {dict(labels).get("table") for _, labels in samples} & {"changes"}  # never the topic
    snapshotted = by_table("SELECT")
    for table, name in (("users", "users"), ("sales.orders", "orders")):
        labels = (("table", table), *worker)
        assert samples[("pgsource_cdc_snapshot_rows_read_total", labels)] == len(snapshotted[table])
        assert samples[("pgsource_cdc_snapshot_estimated_rows", labels)] == estimates[name]
    batches = samples[("pgsource_sink_batch_size_messages_count", worker)]
    assert batches >= snapshot_batches + 1 + 3
    assert samples[("pgsource_source_batches_queued_total", worker)] == batches
    assert samples[("pgsource_cdc_commit_to_ack_seconds_count", worker)] == batches - snapshot_batches
    assert samples[("pgsource_source_batches_in_flight", worker)] == 0
    assert samples[("pgsource_cdc_confirmed_lsn_bytes", worker)] == confirmed
    assert samples[("pgsource_cdc_slot_confirmed_lsn_bytes", worker)] == confirmed

    execute(pg_dsn, "INSERT INTO users VALUES (1000, 'while stopped')")
    committed = time.time()
    service = start_service(config)
    try:
        wait_for(lambda: len(by_table().get("users", ())) == 471, 60, message="the change made while stopped")
        seen = time.time()
        count = ("pgsource_cdc_commit_to_ack_seconds_count", worker)
        samples = wait_for(lambda: (lambda s: s if s.get(count) else None)(scrape(port)), 10, message="commit→ack")
    finally:
        assert stop_service(service) == 0
    observed = samples[count]
    assert observed == samples[("pgsource_sink_batch_size_messages_count", worker)]
    commit_to_ack = samples[("pgsource_cdc_commit_to_ack_seconds_sum", worker)]
    # from the commit, before pgsource even started: more than from queuing, at most until it was seen
    assert commit_to_ack > samples[("pgsource_sink_ack_latency_seconds_sum", worker)]
    assert commit_to_ack <= observed * (seen - committed + 1)
