"""The batch queue's pipe holds a whole batch (fewer context switches per batch)."""

from __future__ import annotations

import fcntl
import sys

import multiprocess
import pytest

from pgsource.pipeline.channel import get_event, put_event
from workers.tuning import widen_pipe


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux-only")
def test_widened_queue_pipe_holds_a_megabyte_and_still_carries_events():
    channel = multiprocess.get_context("spawn").Queue()
    assert widen_pipe(channel)
    assert fcntl.fcntl(channel._writer.fileno(), 1032) >= 1 << 20  # F_GETPIPE_SZ
    blob = bytes(range(256)) * 4000
    put_event(channel, {"frames": blob})
    assert get_event(channel, timeout=5) == {"frames": blob}
