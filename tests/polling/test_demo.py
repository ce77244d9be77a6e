"""``pgsource demo`` streams real rows from a throw-away PostgreSQL into the stand-in."""

from __future__ import annotations

import re

from tests.support import run_cli


def test_demo_streams_the_sample_table_and_live_writes():
    result = run_cli("demo", "--seconds", "4", "--rows", "3000", "--rate", "200", "--workers", "1", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    count = int(re.search(r"messages in Iggy demo/orders: (\d+)", result.stdout).group(1))
    assert count > 3000  # the initial rows plus some written while it ran
    assert '"table_name":"orders"' in result.stdout and '"operation_type":"SELECT"' in result.stdout
