"""The all-types table both decoder test modules compare against ``row_to_json``."""

from __future__ import annotations

import pytest

from tests.decode.oracle import ALL_TYPES_DDL, ALL_TYPES_ROWS, connect


@pytest.fixture
def all_types(pg_dsn):
    """A connection to a database holding the ``all_types`` table and its rows."""
    conn = connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute(ALL_TYPES_DDL)
        for row in ALL_TYPES_ROWS:
            cur.execute(row)
    yield conn
    conn.close()
