"""Offline micro-benchmark of the CDC worker's hot path: ``ChangeEncoder.feed_buffer`` per change.

No database, no queue: one transaction of ``bench_t``-like Inserts (the table of
``bench.run``) is framed as the SQL transport's binary COPY would hand it over, and fed
message by message into batches of 1,000, as ``workers.cdc_worker.CdcWorker._feed_peek`` does (the COPY
framing loop itself is not timed). Prints µs/change, best of ``--repeat``.

Run: ``python -m bench.cdc_decode [--changes 200000] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import struct
import time
import uuid

from pgsource.cdc.encoder import ChangeBatch, ChangeEncoder
from pgsource.config.model import Config
from pgsource.pg.types import BOOL, JSONB, NUMBER, OTHER, TIMESTAMPTZ, TypeInfo

CATALOG = {
    20: TypeInfo(20, "bigint", 20, NUMBER),
    23: TypeInfo(23, "integer", 23, NUMBER),
    25: TypeInfo(25, "text", 25, OTHER),
    1700: TypeInfo(1700, "numeric", 1700, NUMBER),
    16: TypeInfo(16, "boolean", 16, BOOL),
    1184: TypeInfo(1184, "timestamp with time zone", 1184, TIMESTAMPTZ),
    3802: TypeInfo(3802, "jsonb", 3802, JSONB),
    2950: TypeInfo(2950, "uuid", 2950, OTHER),
}
COLUMNS = [
    ("id", 20), ("name", 25), ("email", 25), ("quantity", 23), ("price", 1700),
    ("active", 16), ("created_at", 1184), ("attributes", 3802), ("ref", 2950),
]  # fmt: skip
RELATION_OID = 16390


def _cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def relation_message() -> bytes:
    parts = [b"R", struct.pack("!I", RELATION_OID), _cstring("public"), _cstring("bench_t"), b"d",
             struct.pack("!h", len(COLUMNS))]
    for index, (name, oid) in enumerate(COLUMNS):
        parts += [bytes([index == 0]), _cstring(name), struct.pack("!Ii", oid, -1)]
    return b"".join(parts)


def row_values(g: int) -> tuple[str, ...]:
    """What ``bench.run`` inserts for row ``g``, as PostgreSQL's text output."""
    micros = g * 1_234_567
    seconds, fraction = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    stamp = f"2024-01-{1 + days % 28:02d} {hour:02d}:{minute:02d}:{second:02d}.{fraction:06d}".rstrip("0") + "+00"
    return (
        str(g), f"Customer {g} {uuid.uuid5(uuid.NAMESPACE_OID, str(g)).hex}", f"user{g}@example{g % 97}.com",
        str(g * 7919 % 100000), f"{g * 37 % 100000}.{g % 100:02d}", "t" if g % 3 == 0 else "f", stamp,
        f'{{"vip": {"true" if g % 13 == 0 else "false"}, "tags": ["a", "b{g % 11}"], "tier": {g % 5}}}',
        str(uuid.uuid5(uuid.NAMESPACE_URL, str(g))),
    )


def insert_message(values: tuple[str, ...]) -> bytes:
    parts = [b"I", struct.pack("!I", RELATION_OID), b"N", struct.pack("!h", len(values))]
    for value in values:
        data = value.encode()
        parts += [b"t", struct.pack("!I", len(data)), data]
    return b"".join(parts)


def framed(messages: list[bytes]) -> tuple[bytes, list[tuple[int, int]]]:
    """The messages as binary COPY rows in one buffer, and each message's (start, end)."""
    out = bytearray()
    bounds = []
    for message in messages:
        out += struct.pack("!hi", 1, len(message))
        bounds.append((len(out), len(out) + len(message)))
        out += message
    return bytes(out), bounds


def config() -> Config:
    return Config.model_validate({
        "source": {"connection_string": "x", "mode": "cdc", "tables": ["bench_t"]},
        "iggy": {"address": "127.0.0.1:1", "stream": "s", "topic": "{table}"},
    })


def run_once(buf: bytes, bounds: list[tuple[int, int]], batch_size: int = 1000) -> tuple[float, int]:
    encoder = ChangeEncoder(config(), "bench_slot", lambda oids: {o: CATALOG[o] for o in oids})
    needs_text = getattr(encoder, "needs_text", True)  # older code always took the latin-1 text
    count = 0
    start = time.perf_counter()
    s = buf.decode("latin-1") if needs_text else None  # once per chunk in the worker
    feed = encoder.feed_buffer
    batch = ChangeBatch()
    for begin, end in bounds:
        feed(buf, s, begin, end, batch)
        if batch.count >= batch_size:
            count += batch.count
            batch = ChangeBatch()
    elapsed = time.perf_counter() - start
    return elapsed, count + batch.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    begin = b"B" + struct.pack("!qqI", 0x16_B374_D848, 760_000_000_000_000, 4242)
    commit = b"C" + struct.pack("!bqqq", 0, 0x16_B374_D848, 0x16_B374_D880, 760_000_000_000_000)
    inserts = [insert_message(row_values(g)) for g in range(1, args.changes + 1)]
    buf, bounds = framed([begin, relation_message(), *inserts, commit])
    best = min(run_once(buf, bounds) for _ in range(args.repeat))
    elapsed, count = best
    print(f"{count:,} changes: {elapsed / args.changes * 1e6:.3f} µs/change ({args.changes / elapsed:,.0f} changes/s)")


if __name__ == "__main__":
    main()
