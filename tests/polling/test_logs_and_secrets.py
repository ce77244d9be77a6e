"""Logs: JSON when asked, the worker on every line, and no password anywhere, whatever fails.

Secrets come from files here (``source.connection_string_file``, ``source.password_file``,
``iggy.password_file``: Kubernetes secrets); the PostgreSQL password is the test cluster's
(every test's DSN carries it, and tests/conftest.py greps every service's output for it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from pgsource_testkit.iggy import IggyStandIn
from tests.support import (
    REPO,
    TEST_IGGY_PASSWORD,
    TEST_PASSWORD,
    bodies,
    execute,
    run_cli,
    start_service,
    stop_service,
    wait_for,
    write_config,
)


@pytest.fixture
def guarded_iggy():
    server = IggyStandIn(password=TEST_IGGY_PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()


def _secret_files(tmp_path, pg_dsn):
    assert f":{TEST_PASSWORD}@" in pg_dsn  # the cluster asks for it
    (tmp_path / "dsn").write_text(pg_dsn.replace(f":{TEST_PASSWORD}@", "@") + "\n")
    (tmp_path / "pg-password").write_text(TEST_PASSWORD + "\n")
    (tmp_path / "iggy-password").write_text(TEST_IGGY_PASSWORD)
    return {"connection_string_file": str(tmp_path / "dsn"), "password_file": str(tmp_path / "pg-password")}


def test_json_logs_from_every_process_with_secrets_from_files(pg_dsn, guarded_iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY, body text)")
    execute(pg_dsn, "INSERT INTO events (body) SELECT 'e' || g FROM generate_series(1, 20) g")
    config = write_config(tmp_path, "unused", guarded_iggy.address, source={"tables": ["events"]},
                          iggy={"password_file": str(tmp_path / "iggy-password")}, log={"format": "json"})
    raw = yaml.safe_load(config.read_text())
    del raw["source"]["connection_string"]
    raw["source"].update(_secret_files(tmp_path, pg_dsn))
    config.write_text(yaml.safe_dump(raw))
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(guarded_iggy, "events")) >= 20, 60, message="rows sent with file secrets")
    finally:
        assert stop_service(service) == 0
    log = (tmp_path / "pgsource.log").read_text()
    assert TEST_PASSWORD not in log and TEST_IGGY_PASSWORD not in log
    records = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is one JSON object
    assert {"time", "level", "worker", "logger", "message"} <= set(records[0])
    assert {r["worker"] for r in records} == {"supervisor", "worker-0", "publisher"}


def test_failures_print_no_password(pg_dsn, guarded_iggy, tmp_path):
    """A wrong PostgreSQL password, a wrong Iggy password, an unparsable DSN: errors, no secrets."""
    execute(pg_dsn, "CREATE TABLE events (id serial PRIMARY KEY)")
    wrong = pg_dsn.replace(TEST_PASSWORD, TEST_PASSWORD + "-wrong")
    config = write_config(tmp_path, wrong, guarded_iggy.address, source={"tables": ["events"]})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 3 and "password authentication failed" in result.stderr
    # the right PostgreSQL password, Iggy's wrong: a refusal run would stop on (exit 5), Iggy named, no password
    config = write_config(tmp_path, pg_dsn, guarded_iggy.address, source={"tables": ["events"]},
                          iggy={"password": TEST_IGGY_PASSWORD + "-wrong"})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 5 and f"problem: Iggy at {guarded_iggy.address} refused user 'iggy'" in result.stderr
    # libpq quotes part of a string it cannot parse: the message says so instead
    broken = f"host=127.0.0.1 password={TEST_PASSWORD} dbname"
    config = write_config(tmp_path, broken, guarded_iggy.address, source={"tables": ["events"]})
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(config))
        assert result.returncode == 2, result.stderr
        assert "source.connection_string: not a connection string libpq can parse" in result.stderr
        assert "Traceback" not in result.stderr


_PRINTER = r"""
import logging, sys
from pgsource.config import parse_config
from workers.logs import setup_logging
config = parse_config(sys.argv[1])
setup_logging(config=config)
dsn = config.source.connection_string
log = logging.getLogger("probe")
log.warning("connecting to %s", dsn)
log.warning("key/value form: host=h password=%s user=u", sys.argv[2])
log.warning("iggy password %s, as JSON %r", config.iggy.password, config.iggy.password)
try:
    raise RuntimeError(f"failed with {dsn}")
except RuntimeError:
    log.exception("caught")
print("stdout", dsn)
raise RuntimeError(f"uncaught with {dsn} and {config.iggy.password}")
"""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_redaction_covers_records_exceptions_and_raw_output(fmt):
    pg_password = TEST_PASSWORD + "/é?&\"'"  # percent-encoded in the URI, JSON-escaped in JSON logs
    from urllib.parse import quote

    text = (f"source: {{connection_string: 'postgresql://u:{quote(pg_password, safe='')}@127.0.0.1/db',"
            f" mode: polling, tables: [t]}}\niggy: {{password: '{TEST_IGGY_PASSWORD}'}}\nlog: {{format: {fmt}}}\n")
    done = subprocess.run([sys.executable, "-c", _PRINTER, text, pg_password], cwd=str(REPO), capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "uncaught with postgresql://u:***@127.0.0.1/db" in output
    assert "stdout postgresql://u:***@127.0.0.1/db" in done.stdout
    assert "password=***" in output and output.count("***") >= 7
    for secret in (TEST_PASSWORD, quote(pg_password, safe=""), TEST_IGGY_PASSWORD):
        assert secret not in output, output
    if fmt == "json":
        records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        assert len(records) == 4 and "failed with postgresql://u:***@" in records[-1]["exception"]
