"""On a terminal, log lines scroll above the live progress bars instead of garbling them (issue 23).

``pgsource run`` is run under a pseudo-terminal with a log line for every batch
(``verbose_logging``) while the bars are live; what the terminal shows is rebuilt from the
bytes written to it (a small emulator of the few control sequences ``rich`` uses) and checked:
every log line whole and alone on its line, the bars once each.
Before, the workers wrote to the terminal under the bars: stale copies of the bars were left
between the log lines.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

from tests.support import REPO, bodies, drain_pty, execute, wait_for, write_config

CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (supervisor|publisher|worker-\d+) (INFO|WARNING) \S+: .*$")
BAR = "━"


def screen_of(output: bytes, width: int) -> list[str]:
    """The lines a terminal shows (scrollback included) after ``output``: text, CR, LF, cursor up,
    erase in line; other control sequences change nothing visible here."""
    lines: list[list[str]] = [[]]
    row = col = 0
    text = output.decode("utf-8", "replace")
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == "\x1b":
            match = CSI.match(text, pos)
            if match:
                argument, command = match.group(1), match.group(2)
                count = int(argument) if argument.isdigit() else 1
                if command == "A":
                    row = max(0, row - count)
                elif command == "K" and argument in ("", "0"):
                    del lines[row][col:]
                elif command == "K" and argument == "2":
                    lines[row] = []
                elif command == "G":
                    col = count - 1
                pos = match.end()
                continue
            close = text.find("\x07", pos)  # an OSC (window title...): skipped whole
            pos = close + 1 if text.startswith("\x1b]", pos) and close > 0 else pos + 1
            continue
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            col = 0
            if row == len(lines):
                lines.append([])
        elif char >= " ":
            line = lines[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = char
            else:
                line.append(char)
            col += 1
            if col >= width:  # the terminal wraps
                row, col = row + 1, 0
                if row == len(lines):
                    lines.append([])
        pos += 1
    return ["".join(line).rstrip() for line in lines]


def test_logs_scroll_above_the_live_bars(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TABLE users (id serial PRIMARY KEY, name text)")
    execute(pg_dsn, "INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, 6000) g; ANALYZE users")
    config = write_config(tmp_path, pg_dsn, iggy.address, source={
        "tables": [{"name": "users", "chunks": 2}], "batch_size": 100, "verbose_logging": True})
    width = 220
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, width, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", "COLUMNS": str(width), "LINES": "50"}
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "run", "--config", str(config)], cwd=str(REPO),
                               env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    output = b""
    try:
        wait_for(lambda: len(bodies(iggy, "users")) >= 6000, 60, message="all rows")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b"3000/3000" not in output.split(b"chunk 2/2")[-1]:
            if select.select([master], [], [], 0.2)[0]:
                output += os.read(master, 65536)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        output += drain_pty(master, 0.5)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    screen = [line for line in screen_of(output, width) if line.strip()]
    logs = [index for index, line in enumerate(screen) if LOG_LINE.match(line)]
    bars = [index for index, line in enumerate(screen) if BAR in line]
    shown = "\n".join(screen[-60:])
    assert len(logs) > 60, shown  # a line for each of the 60 batches, at least
    assert len(bars) == 2 and bars[1] == bars[0] + 1, shown  # each bar once: no stale copy among the logs
    for index, line in enumerate(screen):
        if index not in bars:
            assert LOG_LINE.match(line), f"not a whole log line: {line!r}\n{shown}"
    assert "users chunk 1/2" in screen[bars[0]] and "users chunk 2/2" in screen[bars[1]]
