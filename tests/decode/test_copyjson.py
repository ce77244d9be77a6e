"""The COPY decoders (C ``_copyjson.CopyPlan`` and its Python twin) against each other, without a database.

Random plans (every column kind, every body, partitioning and role of a field) are fed random
COPY text: plausible values with COPY's escapes, NULLs, invalid UTF-8, stray tabs and
backslashes, lines cut anywhere by the chunking. Both implementations must return the same
``finish()`` tuple: frames, ids, positions, snapshots, identities, and the same problem for a
bad row. ``tests/polling/test_copy_reader.py`` compares them with the row path on real tables;
``tests/decode/test_sanitizers.py`` runs the generator below under ASan/UBSan.
"""

from __future__ import annotations

import random
import time

import pytest
import xxhash

from pgsource.encode.frames import encode_frames_python
from pgsource.rows import copyjson
from pgsource.rows.copyjson import column_spec, compile_copy_plan
from tests.decode.test_rowjson import _INVALID_UTF8, _PLAUSIBLE, FUZZ_CATALOG

BODIES = ("object", "json", "text", "bytea", "compact")
PAYLOADS = {  # body -> values its field plausibly holds
    "json": ['{"id":1,"v":"x"}', "[]"], "text": ["plain", "tab\there", ""], "bytea": ["\\x00ff", "\\x", "a\\\\b\\001", "\\q"],
    "compact": ['{"a" : [1, 2.50, {"k": "v \\"q\\""}]}', " [true,  false] ", '"open', ""],
}  # fmt: skip
_ESCAPES = {0x5C: b"\\\\", 0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x0B: b"\\v"}


def copy_escape(value: bytes) -> bytes:
    """A value as PostgreSQL's COPY TO writes it in text format (CopyAttributeOutText)."""
    return b"".join(_ESCAPES.get(byte, bytes((byte,))) for byte in value)


def random_plan(rng: random.Random, native: bool):
    """A random plan and a function making plausible values for each of its fields."""
    fields = rng.randint(1, 8)
    body = rng.choice(BODIES)
    makers = [None] * fields
    columns = []
    if body == "object":
        for index, field in enumerate(rng.sample(range(fields), rng.randint(0, fields))):
            oid = rng.choice(sorted(FUZZ_CATALOG) + [None])
            columns.append(column_spec(field, f"c{index}\t\"é", oid, FUZZ_CATALOG, index == 0))
            makers[field] = _PLAUSIBLE[oid] if oid is not None else PAYLOADS["json"]
    body_field = rng.randrange(fields) if body != "object" else None
    if body_field is not None:
        makers[body_field] = PAYLOADS[body]

    def some() -> list[int]:
        return rng.sample(range(fields), rng.randint(0, min(3, fields)))

    snapshot = rng.choice([None, rng.randrange(fields)])
    partitions = rng.choice([1, 1, 3, 7])
    plan = compile_copy_plan(
        table=rng.choice(["t", "public.Odd \"t\"", "é😀"]), fields=fields, ids=some(), keys=some(), positions=some(),
        identities=rng.choice([None, some()]), snapshot=snapshot, body=body, body_field=body_field, columns=columns,
        partitioning=rng.choice(["fixed", "balanced", "key"]), partitions=partitions,
        partition=rng.randrange(partitions), max_payload=rng.choice([64_000_000, 64_000_000, 60]), native=native)
    return plan, makers, fields


def random_value(rng: random.Random, plausible: list[str] | None) -> bytes:
    pick = rng.random()
    if pick < 0.15:
        return b"\\N"
    if plausible and pick < 0.75:
        return copy_escape(rng.choice(plausible).encode())
    if pick < 0.85:
        return copy_escape(rng.choice(_INVALID_UTF8) + b"x" * rng.randint(0, 3))
    if pick < 0.95:
        return copy_escape("".join(chr(rng.choice([0x22, 0x5C, 0, 1, 9, 10, 0x7F, 0xE9, 0x1F600, 0x61, 0x20]))
                                   for _ in range(rng.randint(0, 12))).encode())
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 12)))  # raw: may hold tabs, newlines, lone backslashes


def random_copy(rng: random.Random, makers, fields: int, rows: int) -> bytes:
    lines = []
    for _ in range(rows):
        count = fields if rng.random() < 0.95 else rng.randint(1, fields + 2)
        lines.append(b"\t".join(random_value(rng, makers[i] if i < fields else None) for i in range(count)))
    data = b"\n".join(lines) + b"\n"
    return data if rng.random() < 0.97 else data[: rng.randrange(len(data) + 1)]  # cut: ends inside a row


def feed(sink, data: bytes, rng: random.Random):
    """``data`` in random chunks (psycopg2 gives one row per write; anything must work)."""
    position = 0
    while position < len(data):
        step = rng.choice([1, 2, 7, 64, len(data)])
        assert sink.write(data[position:position + step]) == len(data[position:position + step])
        position += step
    return sink.finish()


def both_ways(seed: int):
    """One random plan and COPY through C and Python, with different chunkings; both results."""
    results = []
    for native in (True, False):
        rng = random.Random(seed)
        plan, makers, fields = random_plan(rng, native)
        data = random_copy(rng, makers, fields, rng.randint(0, 6))
        exclude = copyjson.sort_ids(b"".join(rng.getrandbits(128).to_bytes(16, "big") for _ in range(rng.randint(0, 2))))
        prefix, suffix = rng.choice([(b"", b""), (b'{"data":', b"}")])
        sink = plan.batch(prefix, suffix, rng.randint(0, 10), exclude or None, rng.choice([0, 0, 1, 2, 5]))
        results.append(feed(sink, data, random.Random(seed * 7 + native)))
    return results


def test_c_extension_is_built_and_used():
    from pgsource.rows import _copyjson

    assert copyjson.NATIVE
    plan = compile_copy_plan(table="t", fields=1, ids=[0], keys=[0], positions=[0], identities=None, snapshot=None,
                             body="text", body_field=0, columns=[], partitioning="fixed", partitions=1)
    assert isinstance(plan, _copyjson.CopyPlan)


@pytest.mark.parametrize("seed_block", range(4))
def test_c_and_python_give_the_same_batches(seed_block):
    problems = 0
    for seed in range(seed_block * 500, seed_block * 500 + 500):
        c, python = both_ways(seed)
        assert c == python, seed
        problems += (c[-1][-1] if isinstance(c, list) else c[-1]) is not None
    assert 20 < problems < 480  # the inputs reach both good and bad rows


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_a_plain_batch_decodes_as_expected(native):
    """Escapes undone, NULLs, ids and frames as encode/ids.py and encode/frames.py make them."""
    catalog = FUZZ_CATALOG
    columns = [column_spec(0, "id", 20, catalog, True), column_spec(1, "note", 25, catalog, False),
               column_spec(2, "flag", 16, catalog, False)]
    plan = compile_copy_plan(table="public.t", fields=4, ids=[0], keys=[0], positions=[0], identities=[0, 3],
                             snapshot=None, body="object", body_field=None, columns=columns, partitioning="key",
                             partitions=3, native=native)
    sink = plan.batch(b"<", b">", 0)
    for line in (b"1\ta\\tb\\\\c\\nd\tt\t77\n", b"2\t\\N\t\\N\t78\n"):
        sink.write(line)
    parts, rows, messages, position, snapshot, ids, identities, problem = sink.finish()
    assert problem is None and (rows, messages, position, snapshot) == (2, 2, ("2",), None)
    assert identities == [("1", "77"), ("2", "78")]
    want_ids = [xxhash.xxh3_128_intdigest(b"public.t\x001"), xxhash.xxh3_128_intdigest(b"public.t\x002")]
    assert ids == b"".join(i.to_bytes(16, "big") for i in want_ids)
    payloads = {want_ids[0]: b'<{"id":1,"note":"a\\tb\\\\c\\nd","flag":true}>', want_ids[1]: b'<{"id":2,"note":null,"flag":null}>'}
    for partition, count, frames, sums in parts:
        mine = [i for i, key in zip(want_ids, (b"1", b"2")) if xxhash.xxh32_intdigest(key) % 3 == partition]
        assert (count, frames, sums) == (len(mine), *encode_frames_python(mine, [payloads[i] for i in mine]))
    assert sum(count for _, count, _, _ in parts) == 2


def test_problems_are_reported_not_raised_and_the_sink_is_single_use():
    plan = compile_copy_plan(table="t", fields=2, ids=[0], keys=[0], positions=[0], identities=None, snapshot=None,
                             body="text", body_field=1, columns=[], partitioning="fixed", partitions=1)
    sink = plan.batch(b"", b"", 0)
    data = b"1\tok\n2\t\\N\n3\tafter\n"
    assert sink.write(data) == len(data)
    *_, problem = sink.finish()
    assert problem[0] == copyjson.E_NULL_PAYLOAD and problem[1][0] == ("2",)
    with pytest.raises(ValueError):
        sink.finish()
    with pytest.raises(ValueError):
        sink.write(b"4\tx\n")


FUZZ_BUDGET = 3.0  # seconds of the C decoder alone on random input (the sanitizer test runs it longer)


def test_c_decoder_survives_random_input():
    deadline, count = time.monotonic() + FUZZ_BUDGET, 0
    rng = random.Random(11)
    while time.monotonic() < deadline:
        plan, makers, fields = random_plan(rng, True)
        sink = plan.batch(b"p", b"s", rng.randint(0, 5))
        result = feed(sink, random_copy(rng, makers, fields, rng.randint(0, 8)), rng)
        assert isinstance(result, tuple) and len(result) == 8
        count += 1
    assert count > 100


@pytest.mark.parametrize("native", [True, False], ids=["c", "python"])
def test_segments_are_the_batches_of_separate_copies(native):
    """One COPY cut every N rows gives, segment by segment, what N-row COPYs give (ids, frames numbered from 0,
    positions, balanced partitions continuing across segments); a bad row ends the list with its problem."""
    plan = compile_copy_plan(table="t", fields=2, ids=[0], keys=[0], positions=[0], identities=[0], snapshot=None,
                             body="text", body_field=1, columns=[], partitioning="balanced", partitions=3,
                             native=native)
    lines = [b"%d\tv%d\n" % (i, i) for i in range(1, 8)]
    sink = plan.batch(b"", b"", 4, segment=3)
    for line in lines:
        sink.write(line)
    segments = sink.finish()
    separate = []
    for start in range(0, 7, 3):
        single = plan.batch(b"", b"", 4 + start)
        for line in lines[start:start + 3]:
            single.write(line)
        separate.append(single.finish())
    assert segments == separate and [s[1] for s in segments] == [3, 3, 1] and segments[-1][3] == ("7",)
    sink = plan.batch(b"", b"", 0, segment=3)
    sink.write(b"".join(lines[:6]))
    assert [s[1] for s in sink.finish()] == [3, 3]  # no empty segment after the last full one
    empty = plan.batch(b"", b"", 0, segment=3)
    assert [s[1:4] for s in empty.finish()] == [(0, 0, None)]
    bad = plan.batch(b"", b"", 0, segment=3)
    bad.write(b"".join(lines[:4]) + b"5\t\\N\n6\tv\n")
    *good, problem = bad.finish()
    assert [s[1] for s in good] == [3] and problem[-1][0] == copyjson.E_NULL_PAYLOAD
