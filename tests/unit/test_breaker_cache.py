from __future__ import annotations

import pytest

from router.pipeline.breaker import CircuitBreaker, RetryBudget, State
from router.pipeline.cache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_threshold_and_half_opens_one_trial() -> None:
    clock = Clock()
    b = CircuitBreaker("x", failure_threshold=3, open_s=1.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is State.CLOSED
    b.record_failure()
    assert b.state is State.OPEN and not b.allow()
    clock.t = 0.99
    assert not b.allow()
    clock.t = 1.01
    assert b.allow()  # the one half-open trial
    assert not b.allow()  # no second concurrent trial
    b.record_failure()
    assert b.state is State.OPEN and not b.allow()
    clock.t = 2.5
    assert b.allow()
    b.record_success()
    assert b.state is State.CLOSED and b.allow() and b.opened_count == 2


def test_lost_trial_is_replaced_after_open_s() -> None:
    """A trial whose caller was cancelled before reporting cannot wedge the breaker."""
    clock = Clock()
    b = CircuitBreaker("x", failure_threshold=1, open_s=1.0, clock=clock)
    assert not b.in_trial
    b.record_failure()
    clock.t = 1.0
    assert b.allow() and b.in_trial  # the trial goes out and never reports back
    clock.t = 1.99
    assert not b.allow()
    clock.t = 2.0
    assert b.allow()  # presumed lost: a new trial
    assert not b.allow()
    b.release_trial()  # a trial that says nothing about the backend frees the slot
    assert b.allow() and b.state is State.HALF_OPEN
    b.record_success()
    assert b.state is State.CLOSED and not b.in_trial


def test_only_a_timeout_with_a_fair_budget_is_a_failure() -> None:
    clock = Clock()
    b = CircuitBreaker("x", failure_threshold=1, open_s=1.0, clock=clock)
    b.record_timeout(0.003, 0.008)  # the caller's deadline cut it short
    assert b.state is State.CLOSED
    b.record_timeout(0.008, 0.008)
    assert b.state is State.OPEN
    clock.t = 1.0
    assert b.allow() and b.in_trial
    b.record_timeout(0.001, 0.008)  # no verdict: the trial slot is free again
    assert b.state is State.HALF_OPEN and b.allow()


def test_success_resets_consecutive_failures() -> None:
    b = CircuitBreaker("x", failure_threshold=2)
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state is State.CLOSED


def test_trip_opens_immediately() -> None:
    b = CircuitBreaker("x", failure_threshold=100)
    b.trip()
    assert b.is_open and not b.allow()


@pytest.mark.parametrize("ratio", [0.1, 0.25])
def test_retry_budget_bounds_extra_attempts(ratio: float) -> None:
    budget = RetryBudget(ratio=ratio, max_tokens=10, min_tokens=1)
    extra = 0
    for _ in range(10_000):  # every primary attempt fails and wants a retry
        budget.deposit()
        extra += budget.try_spend()
    assert extra / 10_000 <= ratio + 0.001
    assert extra / 10_000 >= ratio - 0.01


def test_ttl_cache_expiry_and_lru_bound() -> None:
    clock = Clock()
    c: TtlCache[int] = TtlCache(max_entries=2, clock=clock)
    c.put("a", 1, ttl_s=10)
    c.put("b", 2, ttl_s=1)
    assert c.get("a") == 1  # a is now most recent
    c.put("c", 3, ttl_s=10)  # evicts b (least recently used)
    assert c.get("b") is None and c.get("c") == 3
    clock.t = 11
    assert c.get("a") is None
    assert (c.hits, c.misses) == (2, 2)
