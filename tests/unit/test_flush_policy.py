"""When the replication stream's partial batch goes (``pgsource/cdc/flush_policy.py``): at once on a
quiet stream with nothing in flight, gathered while a batch is in flight, always lingered in a bulk
drain, and never held past its linger."""

from __future__ import annotations

from pgsource.cdc.flush_policy import FlushPolicy


def _policy(messages_per_s: float) -> FlushPolicy:
    """A policy whose last 50 ms window saw the stream at ``messages_per_s``, asked at t = 0.05."""
    policy = FlushPolicy(since=0.0)
    policy.messages = int(messages_per_s * policy.window)
    policy.started = 0.049  # the partial batch got its first change 1 ms ago
    return policy


def test_a_quiet_stream_sends_at_once_when_nothing_is_in_flight():
    due, left = _policy(20_000).due(0.05, count=10, in_flight=0)
    assert due and abs(left - 0.004) < 1e-9


def test_a_busy_stream_gathers_while_a_batch_is_in_flight():
    due, left = _policy(20_000).due(0.05, count=10, in_flight=1)
    assert not due and 0 < left <= 0.005


def test_a_bulk_stream_lingers_even_with_nothing_in_flight():
    due, _ = _policy(150_000).due(0.05, count=10, in_flight=0)
    assert not due


def test_no_partial_batch_waits_past_its_linger():
    assert _policy(150_000).due(0.0541, count=10, in_flight=3)[0]


def test_the_rate_is_taken_again_each_window():
    policy = _policy(150_000)
    assert not policy.due(0.05, count=10, in_flight=0)[0]  # bulk over the first window
    policy.started = 0.099
    assert policy.due(0.1, count=10, in_flight=0)[0]  # nothing read in the next one: quiet again


def test_an_empty_batch_has_nothing_to_wait_for():
    assert _policy(150_000).due(0.05, count=0, in_flight=2) == (True, 0.0)
