"""The outbox: batches numbered per worker generation, acks handed to the committer in the order the
publisher gives them, what is in flight and since when, a bounded wait on stop. A real channel and a
real ack queue; the test plays the publisher (no PostgreSQL, no Iggy)."""

from __future__ import annotations

import time

import multiprocess
import pytest

from pgsource.encode.frames import encode_partition_frames
from pgsource.pipeline.block import BlockHead, decode_block, encode_block
from pgsource.pipeline.channel import BlockChannel, put_event
from pgsource.pipeline.committer import Committer
from pgsource.pipeline.events import AckEvent
from pgsource.pipeline.outbox import GENERATION_STRIDE, Outbox, OutboxSettings
from tests.support import wait_for

CTX = multiprocess.get_context("spawn")


class _Recorded(Committer):
    """A committer that keeps the seqs it was told, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.acked_seqs: list[int] = []

    def acked(self, seq: int) -> None:
        self.acked_seqs.append(seq)

    def commit_acknowledged(self, force: bool = False) -> None:
        pass


class _Shown:
    def __init__(self) -> None:
        self.since: list[float | None] = []

    def waiting(self, since: float | None) -> None:
        self.since.append(since)


def _block() -> bytearray:
    parts = encode_partition_frames([1, 2], [0, 0], [b'{"a":1}', b'{"a":2}'])
    return encode_block(BlockHead("worker-0", "pg", "t", "public.t"), parts, where="table public.t")


@pytest.fixture
def pipe():
    channel, acks = BlockChannel(CTX, slots=4), CTX.Queue()
    yield channel, acks
    acks.close()


def _outbox(channel, acks, generation=0, waiting=lambda: False, shown=None):
    committer = _Recorded()
    settings = OutboxSettings("worker-0", generation, stop_timeout=1.0)
    return Outbox(settings, channel, acks, committer, waiting=waiting, shown=shown), committer


def _publish(channel, acks, count: int) -> list[int]:
    """What the publisher does: take ``count`` blocks, acknowledge each; their seqs."""
    seqs = []
    for _ in range(count):
        block = decode_block(channel.get(5))
        put_event(acks, AckEvent(block.head.worker, block.seq, block.count, time.time()))
        seqs.append(block.seq)
    return seqs


def test_batches_are_numbered_per_generation_and_their_acks_reach_the_committer_in_order(pipe):
    channel, acks = pipe
    outbox, committer = _outbox(channel, acks, generation=3)
    first = 3 * GENERATION_STRIDE + 1
    assert [outbox.send(_block()) for _ in range(3)] == [first, first + 1, first + 2]
    assert outbox.in_flight == 3
    put_event(acks, AckEvent("worker-0", 2 * GENERATION_STRIDE + 7, 2, time.time()))  # a dead generation's ack
    assert _publish(channel, acks, 3) == [first, first + 1, first + 2]
    wait_for(lambda: outbox.take_acks(timeout=0.1) >= 0 and outbox.in_flight == 0, 5, interval=0.01, message="the acks")
    assert committer.acked_seqs == [first, first + 1, first + 2]


def test_the_oldest_batch_waits_since_it_became_the_oldest(pipe):
    channel, acks = pipe
    shown = _Shown()
    outbox, _ = _outbox(channel, acks, shown=shown)
    before = time.monotonic()
    outbox.send(_block())
    outbox.send(_block())
    since_first = outbox.oldest_since()
    assert since_first is not None and since_first >= before
    assert shown.since[-1] == since_first
    _publish(channel, acks, 1)
    time.sleep(0.01)  # so that "became the oldest" is a later moment than the first send
    assert outbox.take_acks(timeout=5) == 1
    assert outbox.oldest_since() > since_first  # the second batch is the oldest from now on
    _publish(channel, acks, 1)
    assert outbox.take_acks(timeout=5) == 1
    assert outbox.oldest_since() is None and shown.since[-1] is None


def test_a_full_channel_gives_up_only_when_waiting_says_stop_and_the_seq_is_not_spent(pipe):
    channel, acks = BlockChannel(CTX, slots=1), pipe[1]
    asked = []
    outbox, _ = _outbox(channel, acks, waiting=lambda: asked.append(1) or len(asked) >= 2)
    first = outbox.send(_block())
    assert outbox.send(_block()) is None  # the one slot is taken: it waited, then was told to stop
    assert len(asked) == 2 and outbox.in_flight == 1
    _publish(channel, acks, 1)
    assert outbox.send(_block()) == first + 1


def test_waiting_for_acks_ends_at_the_deadline_and_says_so(pipe):
    channel, acks = pipe
    outbox, committer = _outbox(channel, acks)
    outbox.send(_block())
    outbox.send(_block())
    _publish(channel, acks, 1)
    started = time.monotonic()
    assert not outbox.wait_for_acks(deadline=time.monotonic() + 0.5)
    assert 0.4 <= time.monotonic() - started < 3
    assert outbox.in_flight == 1 and len(committer.acked_seqs) == 1
    _publish(channel, acks, 1)
    assert outbox.wait_for_acks(deadline=time.monotonic() + 5)


def test_without_a_deadline_a_stop_request_leaves_stop_timeout_for_the_acks(pipe):
    channel, acks = pipe
    outbox, _ = _outbox(channel, acks, waiting=lambda: True)  # asked to stop from the start
    outbox.send(_block())
    started = time.monotonic()
    assert not outbox.wait_for_acks()
    assert 0.9 <= time.monotonic() - started < 3  # stop_timeout is 1 s
