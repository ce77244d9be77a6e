"""Exact values through polling: every type of the SPEC survives the trip into Iggy."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

from tests.support import bodies, execute, start_service, stop_service, wait_for, write_config


def test_values_arrive_exactly(pg_dsn, iggy, tmp_path):
    execute(pg_dsn, "CREATE TYPE mood AS ENUM ('sad', 'happy')")
    execute(
        pg_dsn,
        """CREATE TABLE v (
            id int PRIMARY KEY, i8 bigint, n numeric, n_nan numeric, n_inf numeric, f8 float8, f_nan float8,
            ts timestamp, tstz timestamptz, d date, t time, iv interval, u uuid, b bool, txt text,
            j json, jb jsonb, raw bytea, arr int[], tarr text[], m mood, nothing text)""",
    )
    every_byte = bytes(range(256))
    execute(
        pg_dsn,
        """INSERT INTO v VALUES (1, 9223372036854775807, 12345678901234567890.123456789, 'NaN', '-Infinity',
            0.1, 'Infinity', '2024-01-15 10:30:00.123456', '2024-01-15 10:30:00.654321+02', '2024-02-29',
            '23:59:59.999999', '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true,
            E'h\u00e9llo \U0001F600 "q" \\\\ \n\t', '{"a": [1, 2.50, "\u00fc"]}', '{"b": {"c": null}}', %s,
            '{1,NULL,3}', '{"a b","c\\"d",NULL}', 'happy', NULL)""",
        (every_byte,),
    )
    config = write_config(tmp_path, pg_dsn, iggy.address, source={"tables": ["v"], "lag": "1s"})  # id set by the test
    service = start_service(config)
    try:
        wait_for(lambda: bodies(iggy, "v"), 30, message="the row")
    finally:
        assert stop_service(service) == 0
    raw = iggy.messages("pg", "v")[0].payload
    assert b"12345678901234567890.123456789" in raw  # all digits, as a JSON number
    data = json.loads(raw, parse_float=Decimal)["data"]
    assert data["i8"] == 9223372036854775807
    assert data["n"] == Decimal("12345678901234567890.123456789")
    assert data["n_nan"] == "NaN" and data["n_inf"] == "-Infinity" and data["f_nan"] == "Infinity"
    assert data["f8"] == Decimal("0.1")
    assert data["ts"] == "2024-01-15T10:30:00.123456"
    assert data["tstz"] == "2024-01-15T08:30:00.654321+00:00"
    assert data["d"] == "2024-02-29" and data["t"] == "23:59:59.999999"
    assert data["iv"] == "1 year 2 mons 3 days 04:05:06.789"
    assert data["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" and data["b"] is True
    assert data["txt"] == 'h\u00e9llo \U0001F600 "q" \\ \n\t'
    assert data["j"] == {"a": [1, Decimal("2.50"), "\u00fc"]} and data["jb"] == {"b": {"c": None}}
    assert base64.b64decode(data["raw"]) == every_byte
    assert data["arr"] == [1, None, 3] and data["tarr"] == ["a b", 'c"d', None]
    assert data["m"] == "happy" and data["nothing"] is None
