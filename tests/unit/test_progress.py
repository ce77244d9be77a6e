"""The progress tracker against a model: random sends, out-of-order and partial acks, idle marks, restarts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgsource.pipeline.progress import ProgressTracker


def test_a_position_waits_for_every_entry_before_it():
    tracker = ProgressTracker(committed=0)
    tracker.sent("a", 10)
    tracker.sent("b", None)  # half a transaction: no position of its own
    tracker.sent("c", 30)
    assert tracker.acked("c")
    assert tracker.committable() == 0
    assert tracker.acked("a")
    assert tracker.committable() == 10
    tracker.mark(40)  # idle: counts only once "b" is acknowledged
    assert tracker.committable() == 10
    assert tracker.acked("b")
    assert tracker.committable() == 40
    assert tracker.idle and tracker.in_flight == 0


def test_unknown_and_repeated_acks_change_nothing():
    tracker = ProgressTracker(committed=5)
    tracker.sent(1, 7)
    assert not tracker.acked(99)
    assert tracker.committable() == 5
    assert tracker.acked(1) and not tracker.acked(1)
    assert tracker.committable() == 7


def test_a_position_behind_the_last_one_is_refused_when_order_is_known():
    tracker = ProgressTracker(committed=10, order=int)
    with pytest.raises(ValueError, match="behind"):
        tracker.sent(1, 9)
    tracker.sent(1, 10)
    with pytest.raises(ValueError, match="behind"):
        tracker.mark(3)


def test_the_oldest_unacknowledged_entry_says_what_holds_progress():
    now = [100.0]
    tracker = ProgressTracker(committed=0, clock=lambda: now[0])
    tracker.sent("first", 1)
    now[0] = 105.0
    tracker.sent("second", 2)
    held = tracker.oldest_unacknowledged()
    assert held.key == "first" and held.since == 100.0
    tracker.acked("first")
    assert tracker.oldest_unacknowledged().since == 105.0
    assert tracker.pending_keys() == ["second"]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 3), st.booleans()),  # position step, has a position
        st.tuples(st.just("ack"), st.integers(0, 1_000), st.booleans()),  # which outstanding entry
        st.tuples(st.just("mark"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("restart"), st.integers(0, 0), st.booleans()),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_never_beyond_an_unacknowledged_position_and_never_backward(ops):
    committed = 0  # what a store would hold: the last committable position seen
    tracker = ProgressTracker(committed=committed, order=int)
    model: list[list] = []  # [key, position, acked] in send order, as the tracker should see them
    position = committed
    next_key = 0
    for op, value, flag in ops:
        if op == "send":
            position += value
            tracker.sent(next_key, position if flag else None)
            model.append([next_key, position if flag else None, False])
            next_key += 1
        elif op == "ack":
            outstanding = [entry for entry in model if not entry[2]]
            if outstanding:
                entry = outstanding[value % len(outstanding)]
                entry[2] = True
                assert tracker.acked(entry[0])
        elif op == "mark":
            position += value
            tracker.mark(position)
            model.append([None, position, True])
        else:  # restart: everything unacknowledged is lost; the store's position is where we resume
            tracker = ProgressTracker(committed=committed, order=int)
            model = []
            position = committed
        expected = committed
        for _, entry_position, acked in model:
            if not acked:
                break
            if entry_position is not None:
                expected = entry_position
        got = tracker.committable()
        assert got == expected
        first_unacked = next((e[1] for e in model if not e[2] and e[1] is not None), None)
        if first_unacked is not None:
            assert got <= first_unacked
        assert got >= committed  # never backward, across restarts too
        committed = got
        assert tracker.in_flight == sum(1 for e in model if not e[2])
