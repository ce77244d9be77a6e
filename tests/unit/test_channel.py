"""The batch channel: blocks cross whole, in order, bounded; a writer killed halfway never makes the
reader return half a block. No PostgreSQL, no Iggy: two processes and a pipe."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time

import multiprocess
import pytest

from pgsource.encode.frames import encode_partition_frames
from pgsource.pipeline.block import BlockHead, decode_block, encode_block, encode_stop_block, set_block_seq
from pgsource.pipeline.channel import BlockChannel
from tests.support import wait_for
from workers.tuning import widen_pipe

CTX = multiprocess.get_context("spawn")
FIONREAD = 0x541B


def _block(seq: int, payload: bytes, messages: int = 3) -> bytearray:
    parts = encode_partition_frames(list(range(1, messages + 1)), [0] * messages, [payload] * messages)
    block = encode_block(BlockHead("w0", "pg", "t", "public.t"), parts, where="table public.t")
    set_block_seq(block, seq)
    return block


def _write_blocks(channel: BlockChannel, count: int, payload_size: int) -> None:
    """Child: ``count`` blocks, seq 1.., each a few messages of ``payload_size`` bytes."""
    for seq in range(1, count + 1):
        channel.put(_block(seq, bytes([seq % 256]) * payload_size))


def _pipe_bytes(channel: BlockChannel) -> int:
    """Bytes written into the pipe and not read yet (the test holds the read end)."""
    buf = bytearray(4)
    fcntl.ioctl(channel._reader.fileno(), FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux-only")
def test_widened_pipe_holds_a_megabyte_and_still_carries_blocks():
    channel = BlockChannel(CTX, slots=4)
    assert widen_pipe(channel.pipe_fd())
    assert fcntl.fcntl(channel.pipe_fd(), 1032) >= 1 << 20  # F_GETPIPE_SZ
    block = _block(7, bytes(range(256)) * 1000)
    assert channel.put(block)
    read = decode_block(channel.get(5))
    assert (read.seq, read.count, read.head.table) == (7, 3, "public.t")


def test_blocks_from_another_process_arrive_whole_and_in_order():
    channel = BlockChannel(CTX, slots=4)
    writer = CTX.Process(target=_write_blocks, args=(channel, 40, 50_000))  # 150 KB blocks, 4 at most waiting
    writer.start()
    try:
        seqs = []
        while len(seqs) < 40:
            data = channel.get(10)
            assert data is not None, f"block {len(seqs) + 1} did not come"
            block = decode_block(data)
            assert block.count == 3 and len(block.requests) == 1
            assert bytes([block.seq % 256]) * 50_000 in block.requests[0].body
            seqs.append(block.seq)
        assert seqs == list(range(1, 41))
    finally:
        writer.join(10)
    assert writer.exitcode == 0


def test_a_full_channel_makes_the_writer_wait_and_lets_it_give_up_before_a_block_begins():
    channel = BlockChannel(CTX, slots=2)
    assert channel.put(_block(1, b"x"))
    assert channel.put(_block(2, b"x"))
    assert channel.depth() == 2
    asked = []
    started = time.monotonic()
    assert not channel.put(_block(3, b"x"), lambda: asked.append(1) or len(asked) >= 3)
    assert len(asked) == 3 and time.monotonic() - started >= 0.4
    assert [decode_block(channel.get(1)).seq for _ in range(2)] == [1, 2]  # the third never began
    assert channel.get(0.2) is None and channel.depth() == 0


def test_a_writer_killed_halfway_through_a_block_never_yields_half_of_it():
    """kill -9 while the block is half in the pipe: the reader returns the whole blocks before it,
    then nothing, however long it waits; the stop block written after it never comes out either
    (the lock died with the writer: the supervisor restarts the pipeline on a fresh channel)."""
    channel = BlockChannel(CTX, slots=8)
    capacity = fcntl.fcntl(channel.pipe_fd(), 1032)  # F_GETPIPE_SZ
    writer = CTX.Process(target=_write_blocks, args=(channel, 3, capacity))  # each block 3 pipes long
    writer.start()
    try:
        first = decode_block(channel.get(10))
        assert first.seq == 1
        # the pipe is full (less what the first page had of block 1): block 2 is a third written
        wait_for(lambda: _pipe_bytes(channel) > capacity - 4096, 10, message="the second block to fill the pipe")
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(10)
        assert writer.exitcode == -signal.SIGKILL
        assert channel.get(1.0) is None  # reads what the pipe holds, never returns it
        assert channel.get(0.5) is None
        assert not channel.put(encode_stop_block(), lambda: True)  # the dead writer's lock
    finally:
        if writer.is_alive():
            writer.kill()
    fresh = BlockChannel(CTX, slots=2)
    assert fresh.put(encode_stop_block())
    assert decode_block(fresh.get(1)).stop


def test_the_stop_block_and_a_batch_read_back_as_written():
    block = decode_block(_block(12, b'{"id":1}'))
    assert not block.stop and block.seq == 12 and block.head.worker == "w0" and block.head.stream == "pg"
    assert block.requests[0].partition == 0 and block.frame_bytes > 0
    assert decode_block(encode_stop_block()).stop
    with pytest.raises(ValueError):
        decode_block(b"PGSB" + bytes(60))
