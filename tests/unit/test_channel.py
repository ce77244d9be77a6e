"""The batch channel: blocks cross whole, in order, bounded; a writer killed halfway never makes the
reader return half a block. No PostgreSQL, no Iggy: two processes and a pipe."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import sys
import time

import multiprocess
import pytest

from pgsource.encode.frames import encode_partition_frames
from pgsource.pipeline.block import BlockHead, decode_block, encode_block, encode_stop_block, set_block_seq
from pgsource.pipeline.channel import RING_SLOT_BYTES, RING_SLOTS, BlockChannel
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
    size = max(capacity, RING_SLOT_BYTES // 2)  # each block 3 pipes long, too big for the shared ring: the pipe carries it
    writer = CTX.Process(target=_write_blocks, args=(channel, 3, size))
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


def _write_then_die_before_the_notice(channel: BlockChannel, count: int) -> None:
    """Child: ``count`` ring blocks, then a block copied into its ring slot and killed (-9) before
    its notice is written: what a kill between the copy and the notice leaves."""
    _write_blocks(channel, count, 100_000)
    write_whole = channel._write_whole

    def die(views, waiting):
        if channel._ring is not None and len(views) == 1:  # the notice of the ring block just copied
            os.kill(os.getpid(), signal.SIGKILL)
        return write_whole(views, waiting)

    channel._write_whole = die
    channel.put(_block(count + 1, b"z" * 100_000))


def _write_forever(channel: BlockChannel) -> None:
    seq = 0
    while True:
        seq += 1
        channel.put(_block(seq, bytes([seq % 256]) * (50_000 + seq % 7 * 20_000)))


def _shm_names(channel: BlockChannel) -> set[str]:
    """What of ``channel`` has a name under /dev/shm: its semaphores (multiprocess names them there
    until they are collected); the ring is a memfd, which never has one (checked by its fd's link)."""
    semaphores = [channel._lock, channel._slots, channel._ring_free]
    names = {lock._semlock.name.lstrip("/") for lock in semaphores if lock is not None and lock._semlock.name}
    assert channel._ring_fd is None or os.readlink(f"/proc/self/fd/{channel._ring_fd}").startswith("/memfd:")
    return names


def _left_in_shm(names: set[str]) -> set[str]:
    return {name for name in names if os.path.exists(os.path.join("/dev/shm", "sem." + name))}


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the shared ring needs memfd_create (Linux)")
def test_a_writer_killed_before_announcing_a_ring_block_never_makes_the_reader_return_it():
    channel = BlockChannel(CTX, slots=8)
    names = _shm_names(channel)
    assert len(names) == 3 and _left_in_shm(names) == names  # while the channel lives
    writer = CTX.Process(target=_write_then_die_before_the_notice, args=(channel, 2))
    writer.start()
    writer.join(20)
    assert writer.exitcode == -signal.SIGKILL
    assert [decode_block(channel.get(5)).seq for _ in range(2)] == [1, 2]  # both through the ring
    assert channel.get(1.0) is None  # the third is whole in its slot, never announced: never returned
    assert channel._ring is not None and channel._map()[RING_SLOTS * RING_SLOT_BYTES] == 0  # slot 0 freed
    channel.close()
    del channel
    gc.collect()
    assert _left_in_shm(names) == set()  # the ring is anonymous; the semaphores go with the channel


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the shared ring needs memfd_create (Linux)")
def test_a_writer_killed_at_any_moment_leaves_only_whole_blocks_in_order():
    """kill -9 at random moments of a writer that fills the ring and the pipe: the reader returns
    blocks 1..n, each whole (its frames' content is its seq's), then nothing; no /dev/shm entry is left."""
    names = set()
    for delay in (0.3, 0.55, 0.8):
        channel = BlockChannel(CTX, slots=6)
        names |= _shm_names(channel)
        writer = CTX.Process(target=_write_forever, args=(channel,))
        writer.start()
        first = channel.get(30, decode_block)  # the child started (imports take a while under load)
        assert first is not None
        seqs = [first.seq]
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            block = channel.get(0.05, decode_block)
            if block is not None:
                seqs.append(block.seq)
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(10)
        while (block := channel.get(0.5, decode_block)) is not None:
            assert bytes([block.seq % 256]) * 50_000 in block.requests[0].body
            seqs.append(block.seq)
        assert seqs == list(range(1, len(seqs) + 1)) and seqs
        channel.close()
        del channel
    gc.collect()
    assert _left_in_shm(names) == set()
