"""/healthz, /readyz and 404: readiness says "stuck" when rows wait and Iggy does not answer."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from pgsource_testkit.postgres import free_port
from tests.support import bodies, execute, start_service, stop_service, wait_for, write_config


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""  # not listening yet


def _service(tmp_path, pg_dsn, iggy, **sections):
    port = free_port()
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["users"], "batch_size": 50},
                          metrics={"port": port, "host": "127.0.0.1"}, **sections)
    return port, start_service(config)


def test_paths_answer_what_they_mean(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 120) g")
    port, service = _service(tmp_path, pg_dsn, iggy)
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 120, 30, message="all rows")
        wait_for(lambda: get(port, "/readyz")[0] == 200, 15, message="ready")
        status, body = get(port, "/readyz")
        assert json.loads(body) == {"status": "ready"}
        status, body = get(port, "/healthz")
        assert status == 200
        health = json.loads(body)
        assert health["status"] == "alive" and health["children"] == {"publisher": "running", "worker-0": "running"}
        assert get(port, "/")[0] == 404
        assert get(port, "/metrics/extra")[0] == 404
        assert get(port, "/healthz/")[0] == 404
        status, text = get(port, "/metrics")
        assert status == 200 and "pgsource_health_ready_state 1.0" in text
    finally:
        assert stop_service(service) == 0


def test_readyz_goes_503_while_iggy_does_not_answer_and_recovers_by_itself(pg_dsn, iggy, tmp_path):
    stall_after = 2.0
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 100) g")
    port, service = _service(tmp_path, pg_dsn, iggy, readiness={"stall_after": f"{stall_after}s"})
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 100, 30, message="the first rows")
        wait_for(lambda: get(port, "/readyz")[0] == 200, 15, message="ready")
        iggy.freeze()
        frozen_at = time.monotonic()
        execute(pg_dsn, "INSERT INTO users (name) SELECT 'v' || g FROM generate_series(1, 100) g")
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/readyz")),
                                stall_after + 10, interval=0.1, message="/readyz 503")
        took = time.monotonic() - frozen_at
        # measured from the freeze, before the rows were written, and through a 100 ms poll: the
        # product's own delay is shorter than ``took`` (poll_interval + stall_after + 1 s of judging)
        assert stall_after <= took <= stall_after + 2, f"503 after {took:.2f}s"  # not at once: after stall_after
        stuck = json.loads(body)
        assert stuck["status"] == "not ready"
        reasons = " | ".join(f"{s['what']}: {s['reason']}" for s in stuck["stuck"])
        assert "unacknowledged" in reasons and "worker-0" in reasons, reasons
        assert get(port, "/healthz")[0] == 200  # stalled is not dead: no restart of the pod for it
        iggy.freeze(False)
        thawed_at = time.monotonic()
        wait_for(lambda: get(port, "/readyz")[0] == 200, 10, interval=0.1, message="ready again")
        assert time.monotonic() - thawed_at <= 5, f"200 only after {time.monotonic() - thawed_at:.2f}s"
        wait_for(lambda: len({b["data"]["id"] for b in bodies(iggy, "users")}) == 200, 30, message="every row")
    finally:
        iggy.freeze(False)
        assert stop_service(service) == 0


def test_readyz_names_the_table_whose_rows_wait_while_its_worker_is_stopped(pg_dsn, iggy, tmp_path):
    """No batch in flight, Iggy fine, but the worker cannot read: rows newer than the offset wait."""
    import os
    import signal

    stall_after = 2.0
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO users (name) VALUES ('a')")
    port, service = _service(tmp_path, pg_dsn, iggy, readiness={"stall_after": f"{stall_after}s"},
                             supervisor={"restart_backoff": "100ms", "stop_timeout": "10s", "heartbeat_timeout": "600s"})
    worker = None
    try:
        wait_for(lambda: len(bodies(iggy, "users")) == 1, 30, message="the first row")
        wait_for(lambda: get(port, "/readyz")[0] == 200, 15, message="ready")
        time.sleep(stall_after + 1)  # idle for longer than stall_after: nothing to do is not a stall
        assert get(port, "/readyz")[0] == 200
        worker = _worker_process(service.pid, pg_dsn)
        os.kill(worker, signal.SIGSTOP)  # the worker neither reads nor beats; nothing is in flight
        execute(pg_dsn, "INSERT INTO users (name) VALUES ('b')")
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get(port, "/readyz")),
                                stall_after + 10, interval=0.1, message="/readyz 503")
        reasons = json.dumps(json.loads(body)["stuck"])
        assert "table users: rows wait after offset 1" in reasons, reasons
        os.kill(worker, signal.SIGCONT)
        wait_for(lambda: get(port, "/readyz")[0] == 200, 10, interval=0.1, message="ready again")
        wait_for(lambda: len(bodies(iggy, "users")) == 2, 30, message="the second row")
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGCONT)
        assert stop_service(service) == 0


def _worker_process(supervisor_pid: int, dsn: str) -> int:
    """The pid of the (only) worker: the supervisor's child holding a connection to PostgreSQL."""
    import psutil
    from psycopg2.extensions import parse_dsn

    pg_port = int(parse_dsn(dsn).get("port", 5432))

    def find():
        for child in psutil.Process(supervisor_pid).children():
            try:
                connections = getattr(child, "net_connections", None) or child.connections  # psutil < 6
                if any(c.raddr and c.raddr.port == pg_port for c in connections(kind="tcp")):
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        return None

    return wait_for(find, 10, message="worker-0's process")


def test_readyz_is_200_again_within_5s_of_a_long_outage_ending(pg_dsn, iggy, tmp_path):
    """Long enough for the publisher's back-off to reach its cap, with rows waiting: once Iggy takes
    connections again, /readyz says ready within 5 s (the issue's bound), by itself."""
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO users (name) VALUES ('first')")
    port, service = _service(tmp_path, pg_dsn, iggy, readiness={"stall_after": "2s"})
    try:
        wait_for(lambda: bodies(iggy, "users"), 30, message="the first row")
        wait_for(lambda: get(port, "/readyz")[0] == 200, 15, message="ready")
        iggy.refuse_connections()
        iggy.drop_connections()
        execute(pg_dsn, "INSERT INTO users (name) SELECT 'v' || g FROM generate_series(1, 50) g")
        wait_for(lambda: get(port, "/readyz")[0] == 503, 20, interval=0.1, message="/readyz 503")
        time.sleep(10)  # the outage itself: the back-off (0.1 s, doubling) reaches its cap after ~5 s
        iggy.refuse_connections(False)
        back_at = time.monotonic()
        wait_for(lambda: get(port, "/readyz")[0] == 200, 15, interval=0.1, message="ready again")
        assert time.monotonic() - back_at <= 5, f"200 only after {time.monotonic() - back_at:.2f}s"
        wait_for(lambda: len({b["data"]["id"] for b in bodies(iggy, "users")}) == 51, 30, message="every row")
    finally:
        iggy.refuse_connections(False)
        assert stop_service(service) == 0
