"""Circuit breakers and the retry budget.

A breaker stops sending work to a dependency that is failing, so requests fall
to the next rung of the ladder in microseconds instead of each waiting out a
timeout. Closed -> open after ``failure_threshold`` consecutive failures; open
-> half-open after ``open_s``, when one trial call is let through; its
success closes the breaker, its failure re-opens it. A trial whose outcome
never comes back (its caller was cancelled) is presumed lost after ``open_s``
and another is let through, so nothing can wedge a breaker half-open. Canary
probes feed the same breakers, so a dead backend is detected even without traffic.

The retry budget bounds every *extra* upstream attempt (a retry, or asking a
fallback version) to a fraction of primary attempts, so an outage cannot be
amplified by the router: with half the backend calls failing, attempts per
client request stay <= 1 + ratio.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("router.breaker")


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        open_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self.state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._trial_at = 0.0
        self.opened_count = 0

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one trial at a time."""
        if self.state is State.CLOSED:
            return True
        now = self._clock()
        if self.state is State.OPEN:
            if now - self._opened_at < self.open_s:
                return False
            self.state = State.HALF_OPEN
            self._trial_in_flight = False
        if self._trial_in_flight and now - self._trial_at < self.open_s:
            return False
        self._trial_in_flight = True
        self._trial_at = now
        return True

    @property
    def in_trial(self) -> bool:
        """Is the call ``allow()`` just let through the half-open trial?"""
        return self.state is State.HALF_OPEN

    def record_success(self) -> None:
        if self.state is not State.CLOSED:
            log.info("breaker.closed", breaker=self.name)
        self.state = State.CLOSED
        self._failures = 0
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        if self.state is State.HALF_OPEN or (
            self.state is State.CLOSED and self._failures >= self.failure_threshold
        ):
            if self.state is State.CLOSED:
                log.warning("breaker.opened", breaker=self.name, failures=self._failures)
            self.state = State.OPEN
            self._opened_at = self._clock()
            self.opened_count += 1

    def record_timeout(self, given_s: float, fair_s: float) -> None:
        """A call timed out after ``given_s``: a failure only if that was at least
        ``fair_s``. A caller's short deadline says nothing about the backend (and
        one tenant's tight deadlines must not open a breaker for every tenant)."""
        if given_s >= fair_s:
            self.record_failure()
        else:
            self.release_trial()

    def release_trial(self) -> None:
        """The call's outcome says nothing about the backend (e.g. the caller's
        deadline was too short): free a half-open trial slot, change nothing else."""
        self._trial_in_flight = False

    def trip(self) -> None:
        """Open now (a failed canary probe: the backend is broken, not slow)."""
        if self.state is State.CLOSED:
            log.warning("breaker.opened", breaker=self.name, failures=self._failures, probe=True)
            self.opened_count += 1
        self.state = State.OPEN
        self._opened_at = self._clock()
        self._trial_in_flight = False

    @property
    def is_open(self) -> bool:
        return self.state is not State.CLOSED


class BreakerRegistry:
    """Breakers by name, created on first use with shared settings."""

    def __init__(self, *, failure_threshold: int, open_s: float) -> None:
        self._failure_threshold = failure_threshold
        self._open_s = open_s
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        b = self._breakers.get(name)
        if b is None:
            b = CircuitBreaker(name, failure_threshold=self._failure_threshold, open_s=self._open_s)
            self._breakers[name] = b
        return b

    def states(self) -> dict[str, str]:
        return {name: b.state.value for name, b in self._breakers.items()}


class RetryBudget:
    """Token bucket: each primary attempt deposits ``ratio`` tokens, each extra
    attempt spends one. ``min_tokens`` lets a quiet router still retry a little."""

    def __init__(self, ratio: float = 0.1, max_tokens: float = 10.0, min_tokens: float = 1.0):
        self.ratio = ratio
        self.max_tokens = max_tokens
        self.tokens = min_tokens
        self.spent = 0
        self.denied = 0

    def deposit(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.spent += 1
            return True
        self.denied += 1
        return False


def model_breaker_name(pool: str, model: str, version: int) -> str:
    return f"triton:{pool}:{model}@{version}"


FEATURE_STORE_BREAKER = "feature_store"
