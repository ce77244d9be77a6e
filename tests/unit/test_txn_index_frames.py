"""``txn_index``: a header dict shared by a transaction's changes, each message its own position,
encoded as if each message had its own dict holding the number (C and Python twins alike)."""

from __future__ import annotations

import pytest

from pgsource.encode import frames
from pgsource.encode.ids import cdc_message_id

SHARED = {"table": "orders", "operation": "INSERT", "lsn": "0/1A2B3C4", "xid": "734", "txn_index": ""}
POSITIONS = [0, 1, 9, 10, 99, 12345, (1 << 48) - 1]


@pytest.mark.parametrize("encode", [frames.encode_frames, frames.encode_frames_python], ids=["c", "python"])
def test_each_message_gets_its_position_from_its_id(encode):
    if encode is frames.encode_frames and frames.compiled is None:
        pytest.skip("the C extension is not built here")  # the Python twin is the same code path then
    ids = [cdc_message_id(0x1A2B3C4, "iggy_slot", position) for position in POSITIONS]
    payloads = [b'{"id":1}'] * len(ids)
    own = [dict(SHARED, txn_index=str(position)) for position in POSITIONS]
    assert encode(ids, payloads, [SHARED] * len(ids)) == frames.encode_frames_python(ids, payloads, own)


def test_messages_without_the_marker_and_with_it_mix_in_one_batch():
    plain = {"table": "orders", "operation": "SELECT"}
    ids = [cdc_message_id(5, "s", 3), 77, cdc_message_id(5, "s", 4)]
    headers = [SHARED, plain, SHARED]
    expected = [dict(SHARED, txn_index="3"), plain, dict(SHARED, txn_index="4")]
    payloads = [b"x"] * 3
    assert frames.encode_frames(ids, payloads, headers) == frames.encode_frames_python(ids, payloads, expected)
    assert frames.encode_frames_python(ids, payloads, headers) == frames.encode_frames_python(ids, payloads, expected)
