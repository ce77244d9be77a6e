"""``pgsource demo`` leaves the machine as it found it: no process and no temporary directory of the
demo remains, after a normal end and after Ctrl-C (issue 23, bug 1); against a real Iggy each run
counts only its own messages (bug 8). The demo as the README runs it (the embedded stand-in, the
default sizes): tests/polling/test_walkthrough.py."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.support import REPO, drain_pty

SMALL = ["--seconds", "1", "--rows", "1000", "--rate", "50", "--workers", "1"]


class DemoRun:
    """One ``pgsource demo`` with a TMPDIR of its own and a marker in its environment, so that what it
    leaves (directories, processes: every process it starts inherits the environment) can be found."""

    def __init__(self) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pgsource-demo-test-"))
        self.tmpdir.chmod(0o755)  # PostgreSQL runs as another user when the tests run as root
        self.marker = f"PGSOURCE_DEMO_TEST={uuid.uuid4().hex}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(self.tmpdir),
                    self.marker.split("=")[0]: self.marker.split("=")[1], "COLUMNS": "200"}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workers.cli", "demo", *args], cwd=str(REPO), env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def processes(self) -> list[str]:
        """The command lines of the processes that carry this run's marker (or name its TMPDIR)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if self.marker.encode() in environ.split(b"\0") or str(self.tmpdir) in cmdline:
                found.append(f"{entry.name}: {cmdline}")
        return found

    def leftovers(self) -> list[str]:
        """What the run left: files in its TMPDIR, processes (the TMPDIR itself is the test's)."""
        return sorted(str(p) for p in self.tmpdir.rglob("*")) + self.processes()

    def clean_up(self) -> None:
        """What a failed run left, killed (its own processes, by pid) and removed."""
        for line in self.processes():
            try:
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@pytest.fixture
def demo_runs():
    """A new DemoRun per call; whatever they leave is cleaned up after the test (checked before)."""
    runs: list[DemoRun] = []

    def new() -> DemoRun:
        runs.append(DemoRun())
        return runs[-1]

    yield new
    for run in runs:
        run.clean_up()


def _count(stdout: str) -> tuple[str, int]:
    topic, count = re.search(r"messages in Iggy demo/(\S+): (\d+)", stdout).groups()
    return topic, int(count)


def test_two_runs_against_the_same_iggy_count_their_own_messages(demo_runs):
    from pgsource_testkit.iggy import IggyStandInProcess

    with IggyStandInProcess() as iggy:
        counts = []
        for _ in range(2):
            demo = demo_runs()
            result = demo.run(*SMALL, "--iggy", iggy.address)
            assert result.returncode == 0, result.stdout + result.stderr
            counts.append(_count(result.stdout))
            assert f"stay in the Iggy at {iggy.address}" in result.stdout
            assert demo.leftovers() == []
        stored = _stream_messages(iggy.address, "demo")
    (first, n1), (second, n2) = counts
    assert first != second
    assert n1 > 1000 and n2 > 1000 and n1 + n2 == stored, (counts, stored)  # each counted its own, and only that


def _stream_messages(address: str, stream: str) -> int:
    import asyncio

    import apache_iggy as iggy

    async def count() -> int:
        client = iggy.IggyClient(address)
        await client.connect()
        await client.login_user("iggy", "iggy")
        return (await client.get_stream(stream)).messages_count

    return asyncio.run(count())


@pytest.mark.parametrize("when", ["starting a private PostgreSQL", "running `pgsource run"])
def test_ctrl_c_cleans_up_and_exits_130(demo_runs, when):
    """Ctrl-C on a terminal: SIGINT to the whole foreground process group, as the terminal sends it."""
    demo = demo_runs()
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "demo", *SMALL], cwd=str(REPO), env=demo.env,
                               stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 90
        while when.encode() not in screen and time.monotonic() < deadline and process.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                screen += os.read(master, 65536)
        assert when.encode() in screen, screen.decode(errors="replace")
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            code = None  # said below, with what the demo printed
        screen += drain_pty(master)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(master)
    text = screen.decode(errors="replace")
    assert code == 130, text
    assert "interrupted: the demo's PostgreSQL, processes and files are gone" in text
    assert "Traceback" not in text
    assert demo.leftovers() == []


