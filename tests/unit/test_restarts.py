"""The supervisor's restart policy: back-off, a crash loop stops the service (exit 6), outages never count."""

from __future__ import annotations

import pytest

from pgsource.config import parse_config
from pgsource.errors import CrashLoopError, SourceUnavailable
from workers.restarts import MAX_BACKOFF, RestartPolicy


def _delays(policy: RestartPolicy, name: str, exit_code, times: list[float]) -> list[float]:
    return [policy.died(name, exit_code, now) - now for now in times]


def test_a_crashing_worker_waits_twice_as_long_each_time():
    policy = RestartPolicy(backoff=0.5, max_restarts=10, window=60)
    assert _delays(policy, "worker-0", 1, [0, 1, 3, 7]) == [0.5, 1.0, 2.0, 4.0]


def test_more_than_max_restarts_within_the_window_stops_the_service_with_exit_6():
    policy = RestartPolicy(backoff=0.1, max_restarts=2, window=60)
    policy.died("worker-0", 1, 0)
    policy.died("worker-0", -9, 10)
    with pytest.raises(CrashLoopError, match=r"worker-0 died 3 times within 60s \(last exit code 1\)") as caught:
        policy.died("worker-0", 1, 20)
    assert caught.value.exit_code == 6


def test_deaths_older_than_the_window_are_forgotten():
    policy = RestartPolicy(backoff=1, max_restarts=2, window=60)
    policy.died("worker-0", 1, 0)
    policy.died("worker-0", 1, 10)
    # 70 s later the first death left the window: two deaths in it, allowed, and the back-off follows them
    assert policy.died("worker-0", 1, 70) - 70 == 2.0
    assert policy.died("worker-0", 1, 200) - 200 == 1.0  # all earlier ones left the window
    assert policy.died("worker-0", 1, 201) - 201 == 2.0
    with pytest.raises(CrashLoopError, match="died 3 times"):  # 200, 201, 202: a fresh loop is still caught
        policy.died("worker-0", 1, 202)


def test_each_child_has_its_own_count():
    policy = RestartPolicy(backoff=1, max_restarts=1, window=60)
    policy.died("worker-0", 1, 0)
    assert policy.died("worker-1", 1, 1) - 1 == 1.0  # worker-0's crash does not speed worker-1 toward a loop
    assert policy.died("publisher", -9, 2) - 2 == 1.0
    with pytest.raises(CrashLoopError, match="worker-0"):
        policy.died("worker-0", 1, 3)


def test_max_restarts_zero_gives_up_at_the_first_crash():
    with pytest.raises(CrashLoopError, match="died 1 times"):
        RestartPolicy(backoff=1, max_restarts=0, window=60).died("worker-0", 1, 0)


def test_an_outage_is_waited_out_with_back_off_and_never_counted_as_a_crash():
    policy = RestartPolicy(backoff=1, max_restarts=1, window=60)
    # a long outage: far more exits than max_restarts, never a crash loop
    delays = _delays(policy, "worker-0", SourceUnavailable.exit_code, [float(t) for t in range(20)])
    assert delays[:6] == [1, 2, 4, 8, 16, MAX_BACKOFF]
    assert set(delays[5:]) == {MAX_BACKOFF}
    # the crashes around it are counted on their own: the first is allowed, the second is the loop
    assert policy.died("worker-0", 1, 30) - 30 == 1.0
    with pytest.raises(CrashLoopError, match="died 2 times"):
        policy.died("worker-0", 1, 31)


def test_the_outage_back_off_starts_over_once_the_worker_connected_or_crashed():
    policy = RestartPolicy(backoff=1, max_restarts=5, window=60)
    assert _delays(policy, "worker-0", SourceUnavailable.exit_code, [0, 1, 2]) == [1, 2, 4]
    policy.ready("worker-0")  # it reached PostgreSQL again
    assert _delays(policy, "worker-0", SourceUnavailable.exit_code, [10, 11]) == [1, 2]
    policy.died("worker-0", 1, 12)  # a crash ends the run of outages too
    assert _delays(policy, "worker-0", SourceUnavailable.exit_code, [13]) == [1]


def test_crash_back_off_is_capped():
    policy = RestartPolicy(backoff=4, max_restarts=100, window=1000)
    assert _delays(policy, "worker-0", 1, [0, 1, 2, 3, 4]) == [4, 8, 16, MAX_BACKOFF, MAX_BACKOFF]


def test_the_policy_takes_the_supervisor_section_of_the_configuration():
    config = parse_config(
        "source: {connection_string: 'postgresql://u@h/db', mode: polling, tables: [users]}\n"
        "supervisor: {restart_backoff: 250ms, max_restarts: 1, restart_window: 10s}\n"
    )
    policy = RestartPolicy.from_config(config)
    assert policy.died("worker-0", 1, 0) == 0.25
    assert policy.died("worker-0", 1, 20) == 20.25  # the first left the 10 s window
    with pytest.raises(CrashLoopError, match="within 10s"):
        policy.died("worker-0", 1, 21)
