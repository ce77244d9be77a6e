"""The first hour of a new user (issue 23): the README's sections 1 to 5, run as written.

The commands are taken from the README itself, in order: the demo, an Iggy (the stand-in, on a
free port: the only change), the permissions SQL, ``check`` on the example configurations, ``run``,
``tail``, ``status``, ``verify`` and Ctrl-C. Each runs under a pseudo-terminal, as typed by a
person (``pgsource`` is this checkout's CLI). Checked: what the user sees, the exit codes, and that
no process and no temporary directory of the demo or the service is left behind.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from psycopg2 import sql

from pgsource_testkit.postgres import free_port
from tests.support import REPO, execute, query, register_service_output, wait_for

MESSAGE_LINE = re.compile(r'^id 0x[0-9a-f]{32} partition 0 offset (\d+) \{"table_name":"users",.*"data":\{"id":(\d+),')


def readme_steps() -> tuple[list[str], list[str]]:
    """(the shell commands of sections 1-5, the SQL blocks of "Permissions"), as the README writes them."""
    text = (REPO / "README.md").read_text().split("\n## Commands", 1)[0]
    assert len(text.splitlines()) <= 150, "sections 1-5 must fit in the README's first 150 lines"
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            command = shlex.join(word for word in words if word != "&") + (" &" if words[-1:] == ["&"] else "")
            if command.strip("& "):
                commands.append(command)
    permissions = text.split("## 4. Permissions", 1)[1].split("\n## ", 1)[0]
    return commands, re.findall(r"```sql\n(.*?)```", permissions, re.S)


class Terminal:
    """Commands typed into a terminal: each in its own pseudo-terminal and session, with an environment
    marked so that whatever they leave behind (processes, files in TMPDIR) can be found."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pgsource-walkthrough-"))
        self.tmpdir.chmod(0o755)
        self.marker = uuid.uuid4().hex
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO), "TMPDIR": str(self.tmpdir), "TERM": "xterm",
                    "COLUMNS": "200", "PGSOURCE_WALKTHROUGH": self.marker}
        self.history: list[str] = []  # every command typed

    def start(self, command: str) -> tuple[subprocess.Popen, int]:
        self.history.append(command)
        argv = shlex.split(command)
        if argv[0] == "pgsource":
            argv = [sys.executable, "-m", "workers.cli", *argv[1:]]
        elif argv[:2] == ["python", "-m"]:
            argv = [sys.executable, *argv[1:]]
        master, slave = pty.openpty()
        process = subprocess.Popen(argv, cwd=str(self.cwd), env=self.env, stdin=slave, stdout=slave, stderr=slave,
                                   start_new_session=True)
        os.close(slave)
        return process, master

    def run(self, command: str, timeout: float = 120) -> tuple[int, str]:
        process, master = self.start(command)
        output = read_until(master, lambda _: process.poll() is not None, timeout)
        code = process.wait(10)
        output += read_until(master, lambda _: False, 0.3)
        os.close(master)
        register_service_output(text=output)
        return code, output

    def clean_up(self) -> None:
        """After a failure: what this test started and left (found by the marker), killed; TMPDIR removed."""
        for pid in self.marked():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def marked(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if f"PGSOURCE_WALKTHROUGH={self.marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def leftovers(self) -> list[str]:
        found = [str(path) for path in self.tmpdir.iterdir()]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if f"PGSOURCE_WALKTHROUGH={self.marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                        found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    continue
        return found


def read_until(master: int, done, timeout: float) -> str:
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            output += chunk
        elif done(output):
            break
    return output.decode("utf-8", "replace").replace("\r\n", "\n")


@pytest.fixture
def pgsource_role(pg_cluster, pg_dsn):
    """The README's role (``pgsource``/``change-me``), dropped after the test."""
    yield pg_cluster.dsn(pg_dsn.rsplit("/", 1)[1], user="pgsource", password="change-me")
    execute(pg_dsn, "DROP PUBLICATION IF EXISTS iggy_publication")
    if query(pg_dsn, "SELECT count(*) FROM pg_roles WHERE rolname = 'pgsource'")[0][0]:
        role = sql.Identifier("pgsource")
        execute(pg_dsn, sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(role, role))


@pytest.mark.timeout(300)
def test_the_readme_from_nothing_to_your_own_messages(pg_dsn, pgsource_role, tmp_path):
    commands, permissions = readme_steps()
    wanted = ["pgsource demo", "python -m pgsource_testkit.iggy", "pgsource check --config conf/quickstart.yaml",
              "pgsource check --config conf/pgsource.example.yaml", "pgsource run --config conf/quickstart.yaml",
              "pgsource tail --config conf/quickstart.yaml", "pgsource status", "pgsource verify"]
    for prefix in wanted:
        assert any(command.startswith(prefix) for command in commands), f"the README lost {prefix!r}"
    (tmp_path / "conf").symlink_to(REPO / "conf")  # the README's relative paths, from a directory of the user's
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text);"
                    " INSERT INTO users (name) SELECT 'user ' || g FROM generate_series(1, 50) g;"
                    " CREATE SCHEMA sales; CREATE TABLE sales.orders (id serial PRIMARY KEY, total int);"
                    " CREATE TABLE audit_events (id serial PRIMARY KEY, updated_at timestamptz NOT NULL DEFAULT now());"
                    " CREATE INDEX ON audit_events (updated_at, id)")
    for block in permissions:  # as the README says: run as a superuser or the tables' owner
        execute(pg_dsn, block)
    terminal = Terminal(tmp_path, {"PG_DSN": pgsource_role})
    try:
        _walk(terminal, commands, pg_dsn)
        assert terminal.leftovers() == []
    finally:
        terminal.clean_up()
    for command in commands:  # each README command was typed (bar the installation and the export)
        assert command.startswith(("bash .ci/", "export ")) or any(
            typed.startswith(command.rstrip(" &").split(" --port")[0]) for typed in terminal.history), command


def _walk(terminal: Terminal, commands: list[str], pg_dsn: str) -> None:
    standin = None
    try:
        for command in commands:
            if command.startswith(("bash .ci/", "export ")):
                continue  # the installation and the full suite; PG_DSN is set to the test cluster's
            if command.startswith("python -m pgsource_testkit.iggy"):
                standin = _start_standin(terminal, command)
            else:
                _step(terminal, command, pg_dsn)
    finally:
        if standin is not None:  # the user's `&` job, stopped as a shell's `kill %1` would
            process, master = standin
            process.send_signal(signal.SIGTERM)
            process.wait(10)
            os.close(master)


def _start_standin(terminal: Terminal, command: str):
    process, master = terminal.start(command.rstrip("&").strip().replace("--port 8090", f"--port {free_port()}"))
    line = read_until(master, lambda out: b"\n" in out, 30)
    address = line.strip().splitlines()[0]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", address), line
    terminal.env["IGGY_ADDRESS"] = address
    return process, master


def _step(terminal: Terminal, command: str, admin_dsn: str) -> None:
    """One README command and what the user must see."""
    if command.startswith("pgsource demo"):
        code, output = terminal.run(command, timeout=180)
        assert code == 0 and "Traceback" not in output, output
        count = int(re.search(r"messages in Iggy demo/orders_\S+: (\d+)", output).group(1))
        assert count > 100_000, output  # the sample rows and some written while it ran
        assert '"table_name":"orders"' in output and '"operation_type":"SELECT"' in output
        assert "pgsource tail --config" in output
        assert "given their values by the client" not in output  # bug 4
        assert terminal.leftovers() == [], "the demo left something"
    elif command.startswith("pgsource check --config conf/pgsource.example.yaml"):
        code, output = terminal.run(command)
        if code == 3:  # the example names tables the README's grants do not cover: apply what check prints
            grants = "\n".join(line for line in output.splitlines() if line.startswith(("GRANT", "--")))
            assert 'GRANT SELECT ON "sales"."orders" TO "pgsource";' in grants, output
            execute(admin_dsn, grants)
            code, output = terminal.run(command)
        assert code == 0 and "ok: polling mode, users, sales.orders, audit_events" in output, output
    elif command.startswith("pgsource check"):
        code, output = terminal.run(command)
        assert code == 0 and "ok: polling mode, users" in output and "problem" not in output, output
    elif command.startswith("pgsource run"):
        _run_tail_status_verify_stop(terminal, command, admin_dsn)
    elif command.startswith(("pgsource tail", "pgsource status", "pgsource verify")):
        pass  # while run runs: _run_tail_status_verify_stop
    else:
        raise AssertionError(f"a README command this walkthrough does not know: {command!r}")


def _run_tail_status_verify_stop(terminal: Terminal, run_command: str, admin_dsn: str) -> None:
    commands, _ = readme_steps()
    service, master = terminal.start(run_command)
    screen = ""
    try:
        def delivered() -> bool:
            code, output = terminal.run("pgsource status --config conf/quickstart.yaml")
            return code == 0 and "50 row(s) sent; 0 row(s) behind" in output

        wait_for(delivered, 60, interval=0.5, message="run to deliver the 50 rows")
        for command in commands:
            if command.startswith("pgsource tail") and "--follow" not in command:
                code, output = terminal.run(command)
                lines = [MESSAGE_LINE.match(line) for line in output.splitlines()]
                assert code == 0 and all(lines) and [int(m[2]) for m in lines] == list(range(41, 51)), output
            elif command.startswith("pgsource tail"):
                _follow(terminal, command, admin_dsn)
            elif command.startswith("pgsource status"):
                code, output = terminal.run(command)
                assert code == 0 and "running: pid" in output and "users: offset" in output, output
            elif command.startswith("pgsource verify"):
                code, output = terminal.run(command)
                assert code == 0 and "ok: nothing missing" in output and "pgsource tail --config" in output, output
        os.killpg(service.pid, signal.SIGINT)  # Ctrl-C in run's terminal
        screen = read_until(master, lambda _: service.poll() is not None, 60)
        assert service.wait(10) == 0, screen
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()
        os.close(master)
    register_service_output(text=screen)
    assert "Traceback" not in screen and "stopped" in screen


def _follow(terminal: Terminal, command: str, admin_dsn: str) -> None:
    process, master = terminal.start(command)
    try:
        shown = read_until(master, lambda out: out.count(b"\n") >= 10, 30)
        execute(admin_dsn, "INSERT INTO users (name) VALUES ('new')")
        shown += read_until(master, lambda out: b'"id":51,' in out, 30)
        assert '"id":51,' in shown, shown
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(10) == 0
        shown += read_until(master, lambda _: False, 0.3)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(master)
    assert "Traceback" not in shown

