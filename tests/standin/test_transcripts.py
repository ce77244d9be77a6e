"""The stand-in answers like the real server: golden transcripts replayed byte for byte.

``transcripts/*.json`` were recorded from iggy-server built from source (see each file's
``recorded_from`` and ``tests/real/README.md``) by ``python -m tests.real.record_transcripts``:
the SDK's own requests and pgsource's SendMessages bodies, with the server's replies,
normalised by the documented masking rule (``pgsource_testkit.iggy.transcript``). Each
transcript is replayed against a fresh stand-in; every reply must be the recorded one
after the same normalisation, and a recorded "no reply" or "closed" must happen too.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pgsource_testkit.iggy import IggyStandIn
from pgsource_testkit.iggy import transcript as tr

HERE = Path(__file__).resolve().parent / "transcripts"
NAMES = sorted(path.stem for path in HERE.glob("*.json"))
EXPECTED = {"login", "streams", "topics", "send", "refused", "oversize", "poll", "digits"}


def test_every_transcript_pgsource_relies_on_is_committed():
    assert EXPECTED <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_the_standin_replies_like_the_recorded_server(name):
    recorded = tr.Transcript.load(HERE / f"{name}.json")
    with IggyStandIn(accept_wheel_topic_options=False) as standin:  # the snapshot server refuses them
        replayed = tr.replay(standin.address, recorded)
    problems = []
    for index, (want, got) in enumerate(zip(recorded.connections, replayed, strict=True)):
        for position, (expected, actual) in enumerate(zip(want, got, strict=False)):
            where = f"connection {index}, exchange {position} ({expected.what})"
            if actual.outcome != expected.outcome:
                problems.append(f"{where}: {actual.outcome}, the server: {expected.outcome}")
            elif expected.reply is not None and tr.normalise_reply(
                expected.request_bytes(1), expected.reply) != actual.reply:  # (normalising is idempotent)
                problems.append(f"{where}: {describe_difference(expected.reply, actual.reply)}")
        if len(got) != len(want):
            problems.append(f"connection {index}: {len(got)} exchanges replayed, {len(want)} recorded")
    assert not problems, "\n".join(problems)


def describe_difference(expected: bytes, actual: bytes) -> str:
    """Which reply field differs (the header fields by name), for a readable failure."""
    fields = {60: ("command", "<B"), 200: ("request", "<Q"), 208: ("operation", "<B"), 216: ("status", "<I"),
              255: ("eviction reason", "<B"), 48: ("size", "<I")}
    for offset, (field, fmt) in fields.items():
        value, got = struct.unpack_from(fmt, expected, offset)[0], struct.unpack_from(fmt, actual, offset)[0]
        if value != got:
            return f"header {field}: stand-in {got}, server {value}"
    body_e, body_a = expected[256:], actual[256:]
    first = next((i for i, (x, y) in enumerate(zip(body_e, body_a)) if x != y), min(len(body_e), len(body_a)))
    return (f"body differs at byte {first} (stand-in {len(body_a)} bytes, server {len(body_e)}):"
            f" stand-in …{body_a[max(first - 8, 0):first + 24].hex()}, server …{body_e[max(first - 8, 0):first + 24].hex()}")


def test_replaying_catches_a_difference():
    """The comparison is not vacuous: a stand-in reply with one byte changed is reported."""
    recorded = tr.Transcript.load(HERE / "streams.json")
    exchange = next(e for c in recorded.connections for e in c if e.what == "get stream, present")
    changed = bytearray(exchange.reply)
    changed[-1] ^= 1
    assert "body differs" in describe_difference(exchange.reply, bytes(changed))
