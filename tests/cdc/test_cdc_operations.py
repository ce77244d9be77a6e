"""CDC under observation: slot figures collected at scrape time match pg_replication_slots, and
/readyz says "stuck" while changes wait and Iggy does not answer."""

from __future__ import annotations

import json
import time

from pgsource.pg.replication import parse_lsn
from pgsource.testkit.postgres import free_port
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
            execute(pg_dsn, f"INSERT INTO users SELECT g, 'n' FROM generate_series({start + 1}, {start + 100}) g")
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
        time.sleep(stall_after + 1)  # an idle slot is not a stall
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
