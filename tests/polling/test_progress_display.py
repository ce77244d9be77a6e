"""The bulk-load progress display: on a terminal rows done out of the estimate per table and
chunk; nothing of it when the output is not a terminal."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

from tests.support import REPO, bodies, execute, start_service, stop_service, wait_for, write_config


def test_a_terminal_shows_rows_done_out_of_the_estimate_per_chunk(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 4000) g; ANALYZE users")
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": [{"name": "users", "chunks": 2}], "batch_size": 200})
    master, slave = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160", "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "run", "--config", str(config)], cwd=str(REPO),
                               env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    screen = b""
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 4000, 60, message="all rows")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not re.search(rb"chunk 2/2 .*2000/2000", screen):
            if select.select([master], [], [], 0.2)[0]:
                screen += os.read(master, 65536)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    text = screen.decode("utf-8", "replace")
    assert re.search(r"users chunk 1/2 .*2000/2000", text), text[-2000:]
    assert re.search(r"users chunk 2/2 .*2000/2000", text), text[-2000:]
    assert "rows/s" in text


def test_nothing_of_it_when_the_output_is_not_a_terminal(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY)")
    execute(pg_dsn, "INSERT INTO users SELECT FROM generate_series(1, 500); ANALYZE users")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["users"], "batch_size": 100})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 500, 30, message="all rows")
    finally:
        assert stop_service(service) == 0
    log = config.with_suffix(".log").read_text()
    assert "users" in log and "rows/s" not in log and "500/500" not in log and "\x1b[" not in log
