"""Every command × {PostgreSQL down, wrong PostgreSQL password, Iggy down, wrong Iggy password}: one
line naming the cause, the exit code docs/operations.md documents for that cell, no traceback, within
10 s (issue 23, bug 3: ``drop-slot`` printed a traceback and exited 1, "answered no"; ``verify``
with Iggy down waited for ever; status/reset/verify said 75 for a wrong password).

``run`` with Iggy down waits by design: that cell checks the wait and the readiness answer.
The cells run in parallel processes: the whole table takes about as long as its slowest cells.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from pgsource_testkit.postgres import free_port
from tests.polling.test_health import get
from tests.support import (
    REPO,
    TEST_PASSWORD,
    execute,
    register_service_output,
    start_service,
    stop_service,
    wait_for,
)

CASES = ("PostgreSQL down", "wrong PostgreSQL password", "Iggy down", "wrong Iggy password")
COMMANDS = {  # the arguments after --config FILE
    "check": [], "run": [], "status": [], "reset": ["--table", "users", "--to-start", "--yes"],
    "verify": ["--table", "users"], "drop-slot": ["--yes"], "tail": [],
}
WAITS = "waits"
EXPECTED = {  # command -> the exit code of each case (docs/operations.md, "When PostgreSQL or Iggy is missing")
    "check": (75, 3, 0, 5),
    "run": (75, 3, WAITS, 5),
    "status": (75, 3, 0, 0),
    "reset": (75, 3, 0, 0),
    "verify": (75, 3, 75, 5),
    "drop-slot": (75, 3, 0, 0),
    "tail": (0, 0, 75, 5),
}
CAUSE = {  # what the one line must say
    "PostgreSQL down": "Connection refused",
    "wrong PostgreSQL password": "password authentication failed",
    "Iggy down": "Cannot establish connection",
    "wrong Iggy password": "Invalid credentials",
}
SECONDS = 10.0  # what docs/operations.md promises, measured on an idle machine
LIMIT = 40.0  # what a cell may take here: four cells at once on a two-core machine under a load average
# of 10 took up to 27 s; the bound catches a command that waits for ever (verify did), not its speed


def _config(tmp_path, case: str, command: str, dsn: str, iggy_address: str):
    if case == "PostgreSQL down":
        dsn = re.sub(r"@127\.0\.0\.1:\d+/", "@127.0.0.1:1/", dsn)
    elif case == "wrong PostgreSQL password":
        dsn = dsn.replace(TEST_PASSWORD, "wrong-password")
    directory = tmp_path / f"{case}-{command}".replace(" ", "_")
    directory.mkdir()
    config = {
        "source": {"connection_string": dsn, "mode": "cdc" if command == "drop-slot" else "polling", "tables": ["users"]},
        "iggy": {"address": "127.0.0.1:1" if case == "Iggy down" else iggy_address, "send_timeout": "5s",
                 "password": "wrong" if case == "wrong Iggy password" else "iggy"},
        "state": {"dir": str(directory / "state")},
    }
    path = directory / "pgsource.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run_cell(command: str, path) -> tuple[int | str, float, str]:
    started = time.monotonic()
    argv = [sys.executable, "-m", "workers.cli", command, "--config", str(path), *COMMANDS[command]]
    try:
        done = subprocess.run(argv, cwd=str(REPO), env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=3 * LIMIT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "no exit", time.monotonic() - started, ""
    register_service_output(text=done.stdout + done.stderr)  # checked for secrets after the test
    return done.returncode, time.monotonic() - started, done.stderr


def _error_lines(stderr: str) -> list[str]:
    """The lines that report a failure: the CLI's ``error:``/``problem:`` lines, ``run``'s ERROR records
    (the same failure logged by the process that met it and by the supervisor counts once)."""
    lines = []
    for line in stderr.splitlines():
        if line.startswith(("error:", "problem:")):
            lines.append(line)
        elif " ERROR " in line:
            lines.append(line.split(": ", 1)[1].removeprefix("publisher: ").removeprefix("worker-0: "))
    return list(dict.fromkeys(lines))


@pytest.mark.timeout(240)
def test_every_command_when_postgresql_or_iggy_is_missing(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text); INSERT INTO users (name) VALUES ('a')")
    cells = [(command, case) for command in EXPECTED for index, case in enumerate(CASES)
             if EXPECTED[command][index] != WAITS]
    with ThreadPoolExecutor(4) as pool:
        waiting = pool.submit(_run_waits_for_iggy, tmp_path, pg_dsn, iggy.address)
        results = list(pool.map(lambda cell: _run_cell(cell[0], _config(tmp_path, cell[1], cell[0], pg_dsn, iggy.address)),
                                cells))
        waiting.result()
    problems = []
    for (command, case), (code, seconds, stderr) in zip(cells, results):
        expected = EXPECTED[command][CASES.index(case)]
        errors = _error_lines(stderr)
        where = f"{command} / {case}: exit {code} in {seconds:.1f}s"
        if code != expected or "Traceback" in stderr or seconds > LIMIT:
            problems.append(f"{where}, expected {expected} within {LIMIT:g}s:\n{stderr}")
        elif expected != 0 and (len(errors) != 1 or CAUSE[case] not in errors[0]):
            problems.append(f"{where}: expected one line saying {CAUSE[case]!r}, got {errors}")
    assert not problems, "\n".join(problems)


def _run_waits_for_iggy(tmp_path, dsn: str, iggy_address: str) -> None:
    """``run`` with Iggy down keeps running and waits; /readyz answers 503 naming Iggy; SIGTERM: exit 0."""
    port = free_port()
    path = _config(tmp_path, "Iggy down", "run", dsn, iggy_address)
    config = yaml.safe_load(path.read_text())
    config["metrics"] = {"port": port, "host": "127.0.0.1"}
    path.write_text(yaml.safe_dump(config))
    service = start_service(path)
    try:
        def names_iggy():
            status, body = get(port, "/readyz")
            return status == 503 and any(item["what"] == "iggy" for item in json.loads(body)["stuck"])

        wait_for(names_iggy, SECONDS * 3, interval=0.2, message="/readyz 503 naming iggy")
        assert service.poll() is None  # still waiting, not given up
    finally:
        assert stop_service(service) == 0


def test_the_docs_table_is_this_table():
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("### When PostgreSQL or Iggy is missing", 1)[1].split("\n#", 1)[0]
    documented = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            documented[cells[0].strip("`")] = tuple(
                WAITS if cell.startswith(WAITS) else int(re.match(r"\d+", cell).group()) for cell in cells[1:])
    assert documented == EXPECTED
