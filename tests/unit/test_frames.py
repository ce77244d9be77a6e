"""Batches encoded by the workers (``pgsource.encode.frames``) are what the SDK would send.

The publisher hands pre-encoded SendMessages requests to the SDK's ``send_binary_request``.
These tests hold that encoding to the SDK's own: the same messages sent both ways must be
stored identically, read back identically through the SDK's ``poll_messages``, and the C
twin must give exactly the Python encoder's bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgsource.encode import frames
from pgsource.errors import SourceError
from pgsource_testkit.iggy import batches, wire

CDC_HEADERS = {"table": "public.orders", "operation": "UPDATE", "lsn": "0/16B3748", "xid": "771"}
IDS = [(0x1234 << 64) | (0xBEEF << 48) | 1, 2**128 - 1, 1, 987654321]
PAYLOADS = ['{"id":1,"name":"Zoë"}', b"\x00raw\xff", "{}", '{"big":"' + "x" * 5000 + '"}']


def test_the_c_twin_is_built_here():
    """CI compiles it (gcc, Python headers, libxxhash0): a broken build must not go unnoticed."""
    assert frames.compiled is not None, "pgsource.encode._frames did not build; see `pip install -e .` output"
    assert batches.compiled is not None


message_ids = st.integers(min_value=0, max_value=2**128 - 1)
payloads = st.one_of(st.binary(min_size=1, max_size=600), st.text(min_size=1, max_size=300))
header_dicts = st.one_of(
    st.none(),
    st.just({}),
    st.just(CDC_HEADERS),
    st.dictionaries(st.text(min_size=1, max_size=10), st.one_of(st.text(min_size=1, max_size=20), st.binary(min_size=1, max_size=20)), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(message_ids, payloads, header_dicts), max_size=40), st.booleans())
def test_c_and_python_encoders_give_the_same_bytes(messages, with_headers):
    ids = [m[0] for m in messages]
    data = [m[1] for m in messages]
    headers = [m[2] for m in messages] if with_headers else None
    assert frames.compiled.encode_frames(ids, data, headers, frames.encode_user_headers) == (
        frames.encode_frames_python(ids, data, headers)
    )


@pytest.mark.parametrize("encode", [frames.encode_frames, frames.encode_frames_python], ids=["c", "python"])
def test_encoding_errors_name_the_problem(encode):
    with pytest.raises(TypeError, match="user header 'n': int"):
        encode([1], ["x"], [{"n": 1}])
    with pytest.raises(ValueError, match="user header 'k': keys and values must have 1 to 255 bytes"):
        encode([1], ["x"], [{"k": "v" * 256}])
    with pytest.raises(TypeError, match="str or bytes"):
        encode([1], [3])
    with pytest.raises(ValueError, match="payload of 0 bytes"):
        encode([1, 2], ["x", ""])
    with pytest.raises(OverflowError):
        encode([2**128], ["x"])
    with pytest.raises(OverflowError):
        encode([-1], ["x"])


def test_a_message_iggy_would_refuse_is_a_source_error_naming_table_and_id():
    """The SDK and the server refuse empty payloads and payloads over 64,000,000 bytes:
    resending could never succeed, so the worker stops with the row's id instead of looping."""
    with pytest.raises(SourceError, match=r"table public.docs: message id 0x7: payload of 64000001 bytes"):
        frames.encode_partition_frames([5, 7], [0, 1], ["{}", b"x" * 64_000_001], where="table public.docs")
    assert frames.encode_partition_frames([5], [0], [b"x" * 64_000_000])[0].count == 1


def _corrupted_batches() -> list[bytes]:
    good_frames, sums = frames.encode_frames_python(IDS, PAYLOADS, [CDC_HEADERS] * len(IDS))
    body = frames.encode_send_request("s", "t", frames.PartitionFrames(0, len(IDS), good_frames, sums), 1)
    good = bytearray(body[4 + int.from_bytes(body[:4], "little") :])
    flipped = bytearray(good)
    flipped[300] ^= 1  # inside the first frame's payload
    short = good[:-1]
    wrong_count = bytearray(good)
    wrong_count[48] = 3
    bad_delta = bytearray(good)
    bad_delta[256 + 24] = 7
    return [bytes(good), bytes(flipped), bytes(short), bytes(wrong_count), bytes(bad_delta), bytes(good[:100])]


@pytest.mark.parametrize("batch", _corrupted_batches(), ids=["good", "flipped", "short", "count", "delta", "tiny"])
def test_c_and_python_frame_walks_agree(batch):
    """The stand-in's check of a received batch gives the same answer in C and in Python."""
    try:
        python = batches.index_frames_python(memoryview(batch))
    except wire.WireError as exc:
        python = exc.code
    found = batches.compiled.index_frames(batch)
    if isinstance(python, int):
        assert isinstance(found[0], int)
        assert batches._INDEX_ERRORS[found[0]] == python
    else:
        assert (found[0], found[1]) == (python[0].tobytes(), python[1])


def test_split_pieces_are_valid_batches_numbered_from_zero():
    ids = list(range(10))
    parts = frames.encode_partition_frames(ids, [3] * 10, [b"x" * (100 + i) for i in ids], [CDC_HEADERS] * 10)
    pieces = frames.split_partition_frames(parts[0], max_bytes=1000)
    assert [p.count for p in pieces] == [4, 4, 2] and {p.partition for p in pieces} == {3}
    for piece in pieces:
        body = frames.encode_send_request("s", "t", piece, 1)
        batch = memoryview(body)[4 + int.from_bytes(body[:4], "little"):]
        starts, sums = batches.index_frames_python(batch)  # offset deltas 0.., checksums recomputed
        assert sums == piece.checksums and len(starts) - 1 == piece.count
    with pytest.raises(ValueError, match="cannot fit"):
        frames.split_partition_frames(parts[0], max_bytes=100)


def test_finding_the_connections_opens_no_descriptor():
    """The look-up runs on every connect and timeout of the publisher: it must not leak (a dup()
    of each non-socket descriptor once did, quadrupling the process's descriptors per call).

    Counted in a fresh interpreter: in the test process, threads other tests left behind (the
    SDK's runtime, stand-ins being stopped) open and close descriptors of their own meanwhile."""
    import subprocess
    import sys

    probe = (
        "import os\n"
        "from pgsource.sink.sockets import connections_to\n"
        "connections_to(1)\n"
        "before = len(os.listdir('/proc/self/fd'))\n"
        "for _ in range(50):\n"
        "    connections_to(1)\n"
        "print(before, len(os.listdir('/proc/self/fd')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    before, after = map(int, out)
    assert after == before
