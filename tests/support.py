"""Helpers for end-to-end tests: write a config, run the real CLI, wait for messages in Iggy."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import psycopg2
import yaml

REPO = Path(__file__).resolve().parent.parent
# The password of the test cluster's superuser (TCP needs it: scram-sha-256), so every test DSN
# carries it; tests/conftest.py fails a test whose service printed it anywhere.
TEST_PASSWORD = "Pgs-Secret-7f3e9b"
TEST_IGGY_PASSWORD = "Iggy-Secret-2c8d41"  # for the tests that give the stand-in a password of their own
SECRETS_TO_HUNT = (TEST_PASSWORD, TEST_IGGY_PASSWORD)
# What the running test's services wrote: log files and CLI outputs (checked for secrets after it).
SERVICE_LOGS: list[Path] = []
CLI_OUTPUTS: list[str] = []


def register_service_output(log_path: Path | None = None, text: str | None = None) -> None:
    """For harnesses that start pgsource their own way (the fault matrix): have this test's output
    checked for secrets like start_service's and run_cli's (tests/conftest.py)."""
    if log_path is not None:
        SERVICE_LOGS.append(Path(log_path))
    if text is not None:
        CLI_OUTPUTS.append(text)


def service_output() -> str:
    """Everything the current test's services printed so far."""
    texts = list(CLI_OUTPUTS)
    for path in SERVICE_LOGS:
        try:
            texts.append(path.read_text(errors="replace"))
        except FileNotFoundError:
            pass
    return "\n".join(texts)


def write_config(tmp_path: Path, dsn: str, iggy_address: str, *, source: dict | None = None, **sections) -> Path:
    """A config file for the CLI: ``source`` keys merged over polling defaults for tests."""
    config = {
        "source": {
            "connection_string": dsn,
            "mode": "polling",
            "poll_interval": "100ms",
            **(source or {}),
        },
        "iggy": {"address": iggy_address, "stream": "pg", "topic": "{table}", **sections.pop("iggy", {})},
        "state": {"dir": str(tmp_path / "state")},
        "supervisor": {"restart_backoff": "100ms", "stop_timeout": "10s"},
        **sections,
    }
    path = tmp_path / "pgsource.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_service(config_path: Path, *args: str, log_path: Path | None = None) -> subprocess.Popen:
    """``pgsource run --config FILE`` as a user would start it (its own process group)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PGSOURCE_LOG_LEVEL": "INFO"}
    log_path = log_path or config_path.with_suffix(".log")
    SERVICE_LOGS.append(log_path)
    out = open(log_path, "ab")  # noqa: SIM115 - closed with the process by the OS
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "run", "--config", str(config_path), *args],
        cwd=str(REPO), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )


def stop_service(process: subprocess.Popen, timeout: float = 30) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout)


def kill_service(process: subprocess.Popen) -> None:
    """kill -9 the whole service: supervisor, workers and publisher at once."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=str(REPO), env=env,
                            capture_output=True, text=True, timeout=timeout)
    CLI_OUTPUTS.append(result.stdout + result.stderr)
    return result


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def bodies(iggy, topic: str, stream: str = "pg") -> list[dict]:
    """Every message stored in a topic, decoded as JSON (numbers with all their digits)."""
    from decimal import Decimal

    if topic not in iggy.topics(stream) if stream in iggy.streams() else True:
        return []
    return [json.loads(m.payload, parse_float=Decimal) for m in iggy.messages(stream, topic)]


def stored_offset(tmp_path: Path, key: str):
    """The polling offset the service committed under ``key`` (read as a restart would)."""
    from pgsource.state import FileStateStore, PollingOffset

    return FileStateStore(str(tmp_path / "state")).load(key, PollingOffset)


def committed_through(tmp_path: Path, key: str, last: str) -> bool:
    """The service committed the offset of the row whose last cursor value is ``last`` (its key,
    or the tracking value when it is the whole cursor): it caught up through that row, so
    anything it would send twice has been sent by now."""
    offset = stored_offset(tmp_path, key)
    return offset is not None and bool(offset.position) and offset.position[-1] == last


def execute(dsn: str, statement: str, params=None) -> None:
    """Run one statement (composed ones with a ``%`` in a name are escaped as pgsource escapes them)."""
    from pgsource.pg.statements import run

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        run(conn, statement, params)
    finally:
        conn.close()


def query(dsn: str, statement: str, params=None) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall()
    finally:
        conn.close()


def batch_channel_fill(pid: int) -> tuple[int, int] | None:
    """(bytes waiting, capacity) of the batch channel in process ``pid``: the one pipe widened to 1 MB.

    The pipe is opened again through /proc (one more reader of it, which never reads), to ask
    the kernel how much of it is written and not read yet."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if not os.readlink(path).startswith("pipe:"):
                continue
            probe = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            capacity = fcntl.fcntl(probe, 1032)  # F_GETPIPE_SZ
            if capacity >= 1 << 20:
                waiting = bytearray(4)
                fcntl.ioctl(probe, termios.FIONREAD, waiting)
                return int.from_bytes(waiting, sys.byteorder), capacity
        finally:
            os.close(probe)
    return None


def polled_after(dsn: str, moment, table: str = "t", worker: str = "pgsource-worker-0") -> bool:
    """A batch read of ``table`` (in schema public, read as ``AS t``) by ``worker`` started after
    ``moment`` (database time) and ended.

    The worker's last statement is the read itself, or (by COPY) the column-definition check that
    follows a read that found no row; callers wait twice, so a check seen after the first moment
    follows a whole read started after it."""
    oid = query(dsn, "SELECT %s::regclass::oid", (table,))[0][0]
    return query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                      " AND (query LIKE %s OR query LIKE %s) AND query_start > %s AND state <> 'active'",
                 (worker, f'%"public"."{table}" AS t%', f"%pg_attribute a WHERE a.attrelid = {oid} %", moment))[0][0] > 0


def drain_pty(master: int, quiet: float = 0.2) -> bytes:
    """What a pseudo-terminal still holds, read until it is quiet for ``quiet`` seconds or closed."""
    out = b""
    while select.select([master], [], [], quiet)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out
