"""Prints the fault matrix's table at the end of the session (tests/faults/test_matrix.py)."""

from __future__ import annotations

import time


def pytest_sessionstart(session):
    from tests.faults.test_matrix import REPORT

    REPORT["session_started"] = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    from tests.faults.test_matrix import REPORT

    if REPORT.get("table"):
        terminalreporter.section("fault matrix")
        terminalreporter.write_line(REPORT["table"])
        terminalreporter.write_line(REPORT["summary"])
