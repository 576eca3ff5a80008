"""The feature store breaker's half-open trial, with a store that is slow or
failing on demand (the fault is injected; the integration drills use a real
Redis behind a proxy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from router.pipeline.breaker import CircuitBreaker, State
from router.pipeline.catalog import ModelVersion, ViewPlan
from router.pipeline.features import (
    FeatureStoreUnavailable,
    Row,
    ViewInfo,
    ViewRead,
    assemble,
)
from router.pipeline.types import CandidateIn

BUDGET_S = 0.02


class Store:
    """One view; each read takes ``delay_s`` and then answers or fails."""

    inline = False

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.fail = False
        self.reads = 0
        self.finished = 0

    def view_info(self, name: str) -> ViewInfo:
        return ViewInfo(name, ("user_id",), (int,), 0.0, frozenset({"f"}))

    async def read(self, reads: Sequence[ViewRead]) -> list[list[Row]]:
        self.reads += 1
        await asyncio.sleep(self.delay_s)
        self.finished += 1
        if self.fail:
            raise FeatureStoreUnavailable("down")
        return [[(time.time(), [7.0]) for _ in r.keys] for r in reads]


VERSION = ModelVersion(
    model="m",
    version=1,
    input_name="i",
    output_name="o",
    n_features=1,
    schema_hash="h",
    default_score=0.1,
    views=(ViewPlan("v", ("user_id",), ("f",), (0,), (-1.0,)),),
    request_features=(),
    defaults=(-1.0,),
)
CANDS = [CandidateIn(candidate_id="c", entities={"user_id": 1}, features={})]


async def _assemble(store: Store, breaker: CircuitBreaker) -> tuple[float, set[str]]:
    batch = await assemble(VERSION, CANDS, store, BUDGET_S, breaker=breaker, trial_timeout_s=0.25)
    return float(batch.matrix[0, 0]), batch.reasons


async def _opened(store: Store) -> CircuitBreaker:
    breaker = CircuitBreaker("feature_store", failure_threshold=1, open_s=0.1)
    store.fail = True
    assert await _assemble(store, breaker) == (-1.0, {"feature_store_unavailable"})
    assert breaker.state is State.OPEN
    await asyncio.sleep(0.11)  # half-open from here
    return breaker


async def test_slow_trial_is_judged_on_its_own_timeout_not_the_request_budget() -> None:
    store = Store()
    breaker = await _opened(store)
    store.fail, store.delay_s = False, 0.06  # back, but a reconnect takes 3x the budget
    t = time.monotonic()
    value, reasons = await _assemble(store, breaker)
    assert time.monotonic() - t < 0.05  # the request waited only its own budget
    assert (value, reasons) == (-1.0, {"feature_store_unavailable"})
    assert breaker.state is State.HALF_OPEN  # the trial is still out
    # Other requests meanwhile skip the store (one trial at a time).
    assert await _assemble(store, breaker) == (-1.0, {"feature_store_unavailable"})
    assert store.reads == 2
    await asyncio.sleep(0.07)
    assert store.finished == 2 and breaker.state is State.CLOSED  # the late answer closed it
    store.delay_s = 0.0
    assert await _assemble(store, breaker) == (7.0, set())


async def test_fast_trial_answers_the_request_that_carried_it() -> None:
    store = Store()
    breaker = await _opened(store)
    store.fail = False
    assert await _assemble(store, breaker) == (7.0, set())
    assert breaker.state is State.CLOSED


@pytest.mark.parametrize("delay_s", [0.0, 0.3])  # fails at once / times out
async def test_failed_trial_reopens_the_breaker(delay_s: float) -> None:
    store = Store()
    breaker = await _opened(store)
    store.delay_s = delay_s
    assert await _assemble(store, breaker) == (-1.0, {"feature_store_unavailable"})
    await asyncio.sleep(delay_s + 0.02)
    assert breaker.state is State.OPEN and not breaker.allow()


async def test_cancelled_request_does_not_take_its_trial_along() -> None:
    store = Store()
    breaker = await _opened(store)
    store.fail, store.delay_s = False, 0.06
    task = asyncio.ensure_future(_assemble(store, breaker))
    await asyncio.sleep(0.01)
    task.cancel()  # the caller went away mid-trial
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.07)
    assert breaker.state is State.CLOSED


@pytest.mark.parametrize(("budget_s", "opens"), [(0.003, False), (BUDGET_S, True)])
async def test_only_timeouts_with_the_full_budget_open_the_breaker(
    budget_s: float, opens: bool
) -> None:
    """A tenant whose deadlines cut the read short must not open the store's
    breaker for everyone; timeouts with the configured budget do."""
    store = Store()
    store.delay_s = 0.03
    breaker = CircuitBreaker("feature_store", failure_threshold=3, open_s=1.0)
    for _ in range(5):
        batch = await assemble(
            VERSION, CANDS, store, budget_s, breaker=breaker, fair_timeout_s=BUDGET_S
        )
        assert batch.reasons == {"feature_store_unavailable"}
    assert (breaker.state is State.OPEN) is opens
    assert store.reads == (3 if opens else 5)
