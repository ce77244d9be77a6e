"""Micro-benchmark: decode a 10-column Insert (pgoutput bytes -> row JSON), no database needed.

Run: PYTHONPATH=. python tests/decode/bench_decode.py
"""

from __future__ import annotations

import struct
import time

from pgsource.decode.pgoutput import decode_message
from pgsource.decode.rowjson import NATIVE, compile_plan, compile_python
from pgsource.decode.values import compile_columns, decode_tuple_json
from pgsource.pg.types import ARRAY, BOOL, BYTEA, JSONB, NUMBER, OTHER, TIMESTAMP, TIMESTAMPTZ, TypeInfo

CATALOG = {
    23: TypeInfo(23, "integer", 23, NUMBER),
    25: TypeInfo(25, "text", 25, OTHER),
    1700: TypeInfo(1700, "numeric", 1700, NUMBER),
    1184: TypeInfo(1184, "timestamptz", 1184, TIMESTAMPTZ),
    1114: TypeInfo(1114, "timestamp", 1114, TIMESTAMP),
    16: TypeInfo(16, "boolean", 16, BOOL),
    1009: TypeInfo(1009, "text[]", 1009, ARRAY, element_oid=25),
    3802: TypeInfo(3802, "jsonb", 3802, JSONB),
    17: TypeInfo(17, "bytea", 17, BYTEA),
}
COLUMNS = [
    ("id", 23), ("name", 25), ("email", 25), ("amount", 1700), ("created_at", 1184),
    ("updated_at", 1114), ("active", 16), ("tags", 1009), ("payload", 3802), ("blob", 17),
]  # fmt: skip
VALUES = (
    "123456", "John Doe", "john.doe@example.com", "12345.67", "2024-01-15 10:30:00.123456+00",
    "2024-01-15 10:29:50", "t", '{alpha,beta,"with space"}', '{"k": "v", "n": [1, 2, 3]}',
    "\\x000102030405060708090a0b0c0d0e0f",
)  # fmt: skip


def insert_message(values: tuple[str, ...]) -> bytes:
    parts = [b"I", struct.pack("!I", 16384), b"N", struct.pack("!h", len(values))]
    for value in values:
        data = value.encode()
        parts += [b"t", struct.pack("!I", len(data)), data]
    return b"".join(parts)


def main(rounds: int = 200_000) -> None:
    decoders = compile_columns("bench", COLUMNS, CATALOG)
    python = compile_python(COLUMNS, CATALOG)
    message = insert_message(VALUES)
    text = message.decode("latin-1")
    print(decode_tuple_json(decoders, decode_message(message).new))
    assert python(message, text, 6, len(message), b"", b"") == decode_tuple_json(decoders, VALUES).encode()
    cases = {
        "values -> JSON": lambda: decode_tuple_json(decoders, VALUES),
        "pgoutput bytes": lambda: decode_message(message),
        "bytes -> JSON": lambda: decode_tuple_json(decoders, decode_message(message).new),
        "python latin1": lambda: python(message, text, 6, len(message), b"", b""),
        "python utf8": lambda: python(message, None, 6, len(message), b"", b""),
    }
    if NATIVE:
        plan = compile_plan(COLUMNS, CATALOG)
        cases["C plan"] = lambda: plan(message, None, 6, len(message), b"", b"")
    for label, work in cases.items():
        start = time.perf_counter()
        for _ in range(rounds):
            work()
        elapsed = time.perf_counter() - start
        print(f"{label:16s} {rounds / elapsed:12,.0f} rows/s  ({elapsed / rounds * 1e6:.2f} us/row)")


if __name__ == "__main__":
    main()
