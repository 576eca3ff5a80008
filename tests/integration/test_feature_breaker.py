"""The feature store breaker's half-open trial against a real Redis online store
(the demo's features) reached through bench.delay_proxy, which makes it slow,
silent or refusing on demand; and the row cache every model version shares."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.delay_proxy import DelayProxy
from router.backends.feast_redis import RespClient, encode
from router.backends.feast_store import FeastFeatureStore
from router.pipeline.breaker import CircuitBreaker, State
from router.pipeline.cache import TtlCache
from router.pipeline.catalog import ModelVersion, ViewPlan
from router.pipeline.features import Row, assemble
from router.pipeline.types import CandidateIn
from scripts.build_demo import build_features
from scripts.stack import RedisServer

BUDGET_S = 0.02
VIEW, FEATURE = "account_features", "prior_risk_score"
VERSION = ModelVersion(
    model="m",
    version=1,
    input_name="i",
    output_name="o",
    n_features=1,
    schema_hash="h",
    default_score=0.1,
    views=(ViewPlan(VIEW, ("account_id",), (FEATURE,), (0,), (-1.0,)),),
    request_features=(),
    defaults=(-1.0,),
)
CANDS = [CandidateIn(candidate_id="c", entities={"account_id": 1}, features={})]
UNAVAILABLE = (-1.0, {"feature_store_unavailable"})


class Redis:
    """The demo's features in a fresh redis-server, reached through a proxy."""

    def __init__(self, server: RedisServer, proxy: DelayProxy, repo: Path) -> None:
        self.server, self.proxy, self.repo = server, proxy, repo
        host, _, port = server.url.rpartition(":")
        self._direct = RespClient(host, int(port), password=None, db=0)

    def close(self) -> None:
        self._direct.close()

    async def hmgets(self) -> int:
        """HMGETs Redis itself has executed (its own counters, not the proxy's)."""
        (info,) = await self._direct.call([encode(b"INFO", b"commandstats")])
        assert isinstance(info, bytes)
        for line in info.decode().splitlines():
            if line.startswith("cmdstat_hmget:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    tmp = tmp_path_factory.mktemp("feature-breaker")
    with RedisServer(tmp / "logs") as server:
        proxy = DelayProxy(server.url).start()
        r = Redis(server, proxy, build_features(tmp / "build", "redis", proxy.address))
        try:
            yield r
        finally:
            r.close()
            proxy.stop()


@pytest.fixture
async def store(redis: Redis) -> AsyncIterator[FeastFeatureStore]:
    p = redis.proxy
    p.delay_s, p.blackhole, p.refuse = 0.0, False, False
    s = FeastFeatureStore(redis.repo)
    s.start()
    yield s
    await s.close()


async def _assemble(
    store: FeastFeatureStore, breaker: CircuitBreaker, budget_s: float = BUDGET_S
) -> tuple[float, set[str]]:
    batch = await assemble(
        VERSION,
        CANDS,
        store,
        budget_s,
        breaker=breaker,
        trial_timeout_s=0.25,
        fair_timeout_s=BUDGET_S,
    )
    return float(batch.matrix[0, 0]), batch.reasons


async def _fresh(store: FeastFeatureStore) -> float:
    """The feature's stored value, read with no fault and no breaker."""
    value, reasons = await _assemble(store, CircuitBreaker("probe"))
    assert reasons == set() and value != -1.0
    return value


async def _opened(store: FeastFeatureStore, redis: Redis) -> CircuitBreaker:
    breaker = CircuitBreaker("feature_store", failure_threshold=1, open_s=0.1)
    redis.proxy.blackhole = True
    assert await _assemble(store, breaker) == UNAVAILABLE
    redis.proxy.blackhole = False
    assert breaker.state is State.OPEN
    await asyncio.sleep(0.11)  # half-open from here
    return breaker


async def test_slow_trial_is_judged_on_its_own_timeout_not_the_request_budget(
    store: FeastFeatureStore, redis: Redis
) -> None:
    fresh = await _fresh(store)
    breaker = await _opened(store, redis)
    before = await redis.hmgets()
    redis.proxy.delay_s = 0.05  # back, but an answer takes 5x the budget
    t = time.monotonic()
    assert await _assemble(store, breaker) == UNAVAILABLE
    assert time.monotonic() - t < 0.08  # the request waited only its own budget
    assert breaker.state is State.HALF_OPEN  # the trial is still out
    # Other requests meanwhile skip the store (one trial at a time).
    assert await _assemble(store, breaker) == UNAVAILABLE
    await asyncio.sleep(0.2)
    assert breaker.state is State.CLOSED  # the late answer closed it
    assert await redis.hmgets() == before + 1  # the trial's read, no other
    redis.proxy.delay_s = 0.0
    assert await _assemble(store, breaker) == (fresh, set())


async def test_fast_trial_answers_the_request_that_carried_it(
    store: FeastFeatureStore, redis: Redis
) -> None:
    fresh = await _fresh(store)
    breaker = await _opened(store, redis)
    assert await _assemble(store, breaker) == (fresh, set())
    assert breaker.state is State.CLOSED


@pytest.mark.parametrize("fault", ["refused", "too_slow"])
async def test_failed_trial_reopens_the_breaker(
    store: FeastFeatureStore, redis: Redis, fault: str
) -> None:
    breaker = await _opened(store, redis)
    if fault == "refused":
        redis.proxy.refuse = True  # fails at once
    else:
        redis.proxy.delay_s = 0.3  # past the trial's 250 ms
    assert await _assemble(store, breaker) == UNAVAILABLE
    await asyncio.sleep(0.3 if fault == "too_slow" else 0.02)
    assert breaker.state is State.OPEN and not breaker.allow()


async def test_cancelled_request_does_not_take_its_trial_along(
    store: FeastFeatureStore, redis: Redis
) -> None:
    breaker = await _opened(store, redis)
    redis.proxy.delay_s = 0.05
    task = asyncio.ensure_future(_assemble(store, breaker))
    await asyncio.sleep(0.01)
    task.cancel()  # the caller went away mid-trial
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert breaker.state is State.CLOSED


@pytest.mark.parametrize(("budget_s", "opens"), [(0.003, False), (BUDGET_S, True)])
async def test_only_timeouts_with_the_full_budget_open_the_breaker(
    store: FeastFeatureStore, redis: Redis, budget_s: float, opens: bool
) -> None:
    """A tenant whose deadlines cut the read short must not open the store's
    breaker for everyone; timeouts with the configured budget do."""
    # Five warm connections, so each read below is written at once, however
    # short its budget (a read cut before its connection is up never reaches Redis).
    await asyncio.gather(*(_fresh(store) for _ in range(5)))
    before = await redis.hmgets()
    redis.proxy.delay_s = 0.03
    breaker = CircuitBreaker("feature_store", failure_threshold=3, open_s=1.0)
    for _ in range(5):
        assert await _assemble(store, breaker, budget_s) == UNAVAILABLE
    assert (breaker.state is State.OPEN) is opens
    await asyncio.sleep(0.3)  # the cut reads still reach Redis, late
    assert await redis.hmgets() == before + (3 if opens else 5)


def _reading(version: int, features: tuple[str, ...]) -> ModelVersion:
    n = len(features)
    plan = ViewPlan(VIEW, ("account_id",), features, tuple(range(n)), (-1.0,) * n)
    return ModelVersion(
        model="m",
        version=version,
        input_name="i",
        output_name="o",
        n_features=n,
        schema_hash=f"h{version}",
        default_score=0.1,
        views=(plan,),
        request_features=(),
        defaults=(-1.0,) * n,
    )


async def test_versions_sharing_the_row_cache_get_their_own_feature_order(
    store: FeastFeatureStore,
) -> None:
    """One row cache serves every model version; two versions that read the
    same view for other features, or in another order, must not get each
    other's cached rows."""
    cache: TtlCache[Row] = TtlCache(100)
    pair = ("txn_count_24h", "txn_amount_sum_24h")
    rows = []
    for version, features in ((1, pair), (2, pair[::-1]), (3, (*pair, "txn_count_7d"))):
        batch = await assemble(
            _reading(version, features), CANDS, store, 1.0, cache=cache, cache_ttl_s=60
        )
        assert batch.reasons == set()
        rows.append(batch.matrix[0].tolist())
    assert rows[0][0] != rows[0][1] and rows[1] == rows[0][::-1]
    assert rows[2][:2] == rows[0] and len(rows[2]) == 3
    assert cache.hits == 0 and len(cache) == 3
    again = await assemble(_reading(2, pair[::-1]), CANDS, store, 1.0, cache=cache, cache_ttl_s=60)
    assert again.matrix[0].tolist() == rows[1] and cache.hits == 1
