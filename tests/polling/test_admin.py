"""Admin commands: status, reset (the one deliberate backward move), verify, and confirmations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pgsource.encode.ids import polling_message_id
from tests.support import (
    REPO,
    bodies,
    execute,
    run_cli,
    start_service,
    stop_service,
    stored_offset,
    wait_for,
    write_config,
)


def run_on_terminal(*args: str, answer: str | None) -> subprocess.CompletedProcess:
    """The CLI with stdin a terminal (a pty); ``answer`` is typed once a question was printed."""
    master, slave = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", *args], cwd=str(REPO), env=env,
                               stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    try:
        if answer is not None:
            os.write(master, answer.encode() + b"\n")
        out, err = process.communicate(timeout=60)
    finally:
        os.close(master)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _deliver(tmp_path, pg_dsn, iggy, rows: int, **source):
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, %s) g", (rows,))
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["users"], "batch_size": 10, **source})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= rows, 30, message=f"{rows} rows")
        wait_for(lambda: (stored_offset(tmp_path, "polling/users") or 0) and stored_offset(tmp_path, "polling/users").position == (str(rows),),
                 10, message="the committed offset")
    finally:
        assert stop_service(service) == 0
    return config


def test_status_shows_the_offset_and_rows_behind(pg_dsn, iggy, tmp_path):
    config = _deliver(tmp_path, pg_dsn, iggy, 30)
    execute(pg_dsn, "INSERT INTO users (name) SELECT 'late' FROM generate_series(1, 5)")
    result = run_cli("status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout
    assert "polling/users: offset 30; 30 row(s) sent; 5 row(s) behind" in result.stdout
    found = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
    assert found["tables"][0]["offset"] == ["30"] and found["tables"][0]["rows_behind"] == 5


def test_reset_refuses_while_running_then_moves_back_and_the_rows_are_sent_again(pg_dsn, iggy, tmp_path):
    config = _deliver(tmp_path, pg_dsn, iggy, 30)
    service = start_service(config)
    try:
        wait_for(lambda: os.path.exists(tmp_path / "state" / ".pgsource.lock"), 30, message="the lock")
        wait_for(lambda: run_cli("status", "--config", str(config)).stdout.find("running: pid") >= 0, 30,
                 message="status seeing the service")
        refused = run_cli("reset", "--config", str(config), "--table", "users", "--to", "10")
        assert refused.returncode == 9, refused.stderr
        assert "is in use by a running pgsource (pid" in refused.stderr and "stop it first" in refused.stderr
        assert stored_offset(tmp_path, "polling/users").position == ("30",)
        second = run_cli("run", "--config", str(config), timeout=60)  # a second service on the same state.dir
        assert second.returncode == 9 and "in use by a running pgsource" in second.stderr
    finally:
        assert stop_service(service) == 0
    moved = run_cli("reset", "--config", str(config), "--table", "users", "--to", "10")  # no terminal: no question
    assert moved.returncode == 0, moved.stderr
    assert "polling/users: 30 -> 10" in moved.stdout
    assert "reset: polling/users: 30 -> 10 (moved on purpose" in moved.stderr  # logged
    assert stored_offset(tmp_path, "polling/users").position == ("10",)
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 50, 30, message="rows 11..30 again")
    finally:
        assert stop_service(service) == 0
    ids = [b["data"]["id"] for b in bodies(iggy, "users")]
    assert sorted(ids[30:]) == list(range(11, 31))
    again = run_cli("reset", "--config", str(config), "--table", "users", "--to-start")
    assert again.returncode == 0 and stored_offset(tmp_path, "polling/users").position == ()


def test_reset_names_a_bad_value_and_asks_only_on_a_terminal(pg_dsn, iggy, tmp_path):
    config = _deliver(tmp_path, pg_dsn, iggy, 20)
    bad = run_cli("reset", "--config", str(config), "--table", "users", "--to", "soon")
    assert bad.returncode == 2 and "not a value of users.id (integer)" in bad.stderr
    unknown = run_cli("reset", "--config", str(config), "--table", "nope", "--to-start")
    assert unknown.returncode == 2 and "--table nope: not in source.tables (configured: users)" in unknown.stderr
    declined = run_on_terminal("reset", "--config", str(config), "--table", "users", "--to", "5", answer="n")
    assert declined.returncode == 1, declined.stderr
    assert "Move these offsets?" in declined.stdout and "aborted" in declined.stderr
    assert stored_offset(tmp_path, "polling/users").position == ("20",)
    accepted = run_on_terminal("reset", "--config", str(config), "--table", "users", "--to", "5", answer="y")
    assert accepted.returncode == 0, accepted.stderr
    assert stored_offset(tmp_path, "polling/users").position == ("5",)
    skipped = run_on_terminal("reset", "--config", str(config), "--table", "users", "--to", "7", "--yes", answer=None)
    assert skipped.returncode == 0 and "Move these offsets?" not in skipped.stdout
    assert stored_offset(tmp_path, "polling/users").position == ("7",)


def test_reset_refuses_cdc_and_points_to_drop_slot(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"mode": "cdc", "tables": ["users"]})
    result = run_cli("reset", "--config", str(config), "--table", "users", "--to-start")
    assert result.returncode == 2
    assert "cannot move backward" in result.stderr and "pgsource drop-slot" in result.stderr
    assert "snapshot: initial" in result.stderr


def test_drop_slot_asks_on_a_terminal_and_yes_skips_it(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id int PRIMARY KEY)")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"mode": "cdc", "tables": ["users"]})
    declined = run_on_terminal("drop-slot", "--config", str(config), answer="n")
    assert declined.returncode == 1 and "Drop replication slot(s) iggy_slot" in declined.stdout
    assert "slot iggy_slot:" not in declined.stdout
    scripted = run_cli("drop-slot", "--config", str(config))  # scripts: unchanged, no question
    assert scripted.returncode == 0 and "slot iggy_slot: absent" in scripted.stdout
    yes = run_on_terminal("drop-slot", "--config", str(config), "--yes", answer=None)
    assert yes.returncode == 0 and "slot iggy_slot: absent" in yes.stdout and "Drop replication" not in yes.stdout


def test_verify_passes_after_a_full_run_and_names_a_row_never_sent(pg_dsn, iggy, tmp_path):
    config = _deliver(tmp_path, pg_dsn, iggy, 25)
    ok = run_cli("verify", "--config", str(config), "--table", "users")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "25 row(s) up to the committed offset" in ok.stdout and "0 missing" in ok.stdout
    execute(pg_dsn, "INSERT INTO users (name) VALUES ('never sent'), ('never sent either')")  # ids 26, 27
    forced = run_cli("reset", "--config", str(config), "--table", "users", "--to", "27")  # past them, forward
    assert forced.returncode == 0, forced.stderr
    failed = run_cli("verify", "--config", str(config), "--table", "users")
    assert failed.returncode == 10, failed.stdout + failed.stderr
    for row in (26, 27):
        message_id = polling_message_id("users", (str(row),))
        assert f"missing from Iggy: id {message_id} (0x{message_id:032x}), users row at id position ({row})" in failed.stderr
    assert "2 missing" in failed.stdout
    recent = run_cli("verify", "--config", str(config), "--table", "users", "--after", "26")
    assert recent.returncode == 10 and "1 row(s) up to the committed offset after 26" in recent.stdout


def test_verify_counts_duplicates_without_failing(pg_dsn, iggy, tmp_path):
    config = _deliver(tmp_path, pg_dsn, iggy, 20)
    assert run_cli("reset", "--config", str(config), "--table", "users", "--to", "10").returncode == 0
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 30, 30, message="rows 11..20 again")
        wait_for(lambda: stored_offset(tmp_path, "polling/users").position == ("20",), 10, message="the offset")
    finally:
        assert stop_service(service) == 0
    result = run_cli("verify", "--config", str(config), "--table", "users")
    assert result.returncode == 0, result.stderr
    assert "0 missing, 10 duplicated id(s)" in result.stdout


def test_verify_checks_unmarked_rows_and_counts_marked_ones(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text, done boolean NOT NULL DEFAULT false)")
    execute(pg_dsn, "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 15) g")
    config = write_config(tmp_path, pg_dsn, iggy.address,
                          source={"tables": ["users"], "batch_size": 10, "processed_column": "done"})
    service = start_service(config)
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 15, 30, message="15 rows")
        wait_for(lambda: (stored_offset(tmp_path, "polling/users") or 0)
                 and stored_offset(tmp_path, "polling/users").position == ("15",), 10, message="the offset")
    finally:
        assert stop_service(service) == 0
    result = run_cli("verify", "--config", str(config), "--table", "users")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "15 row(s) marked in done: their ids cannot be recomputed (not checked)" in result.stdout
    execute(pg_dsn, "UPDATE users SET done = false WHERE id = 3")  # a row never marked, as if its ack never came
    unmarked = run_cli("verify", "--config", str(config), "--table", "users")
    assert unmarked.returncode == 10 and "users row at id position (3)" in unmarked.stderr
