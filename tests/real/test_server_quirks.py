"""Server behaviour the stand-in deliberately does not copy, kept on record against the real server.

The server does not check a frame's ``offset_delta`` (tests/standin/README: what the stand-in
does not model). A batch whose deltas do not count 0, 1, 2… is confirmed, counted, and then
partly unreadable: the message with delta 5 in a two-message batch is never polled. pgsource
always numbers 0..n-1 (``encode_partition_frames``; ``split_partition_frames`` renumbers each
piece), and the stand-in refuses other numberings (no reply), so a pgsource bug there fails
the CI suite instead of losing messages silently.
"""

from __future__ import annotations

import asyncio
import struct

import apache_iggy as iggy_sdk
from xxhash import xxh3_64_intdigest

from pgsource.encode import frames
from tests.real import reader


def test_a_gap_in_offset_deltas_is_confirmed_but_the_message_cannot_be_polled(real_iggy, real_stream):
    reader.create_topics(real_iggy, real_stream, ["t"], 1)
    part = frames.encode_partition_frames([1, 2], [0, 0], [b"one", b"two"])[0]
    second = bytearray(part.frames[51:])  # 48-byte header + b"one" is the first frame
    struct.pack_into("<I", second, 24, 5)  # offset_delta 5 instead of 1
    struct.pack_into("<Q", second, 0, xxh3_64_intdigest(bytes(second[8:])))
    gapped = frames.PartitionFrames(0, 2, part.frames[:51] + bytes(second), part.checksums[:8] + bytes(second[:8]))
    body = frames.encode_send_request(real_stream, "t", gapped, 1)

    async def scenario():
        client = await reader._client(real_iggy)
        confirmation = await client.send_binary_request(frames.SEND_MESSAGES_CODE, body)
        polled = await client.poll_messages(real_stream, "t", consumer=iggy_sdk.Consumer.Single("quirks"),
                                            polling_strategy=iggy_sdk.PollingStrategy.First(), count=10,
                                            auto_commit=False, partition_id=0)
        topic = await client.get_topic(real_stream, "t")
        return confirmation, [(m.offset(), m.payload()) for m in polled], topic.messages_count

    confirmation, polled, count = asyncio.run(scenario())
    assert int.from_bytes(confirmation[:4], "little") == 1  # confirmed
    assert count == 2  # counted
    assert polled == [(0, b"one")]  # but "two" is never polled
