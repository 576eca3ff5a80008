"""The fallback ladder, with a model server that fails on demand.

A fake server is used only to inject faults no real process produces on
demand (fail exactly the calls we choose); integration tests kill real
processes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from router.errors import Code, InferlineError, Unavailable
from router.pipeline.breaker import BreakerRegistry, RetryBudget
from router.pipeline.cache import TtlCache
from router.pipeline.catalog import ModelCatalog, ModelVersion
from router.pipeline.fallback import Ladder
from router.pipeline.routing import FallbackPolicy, Route
from router.pipeline.types import FallbackLevel


def _version(v: int) -> ModelVersion:
    return ModelVersion(
        model="m",
        version=v,
        input_name="i",
        output_name="o",
        n_features=2,
        schema_hash="h",
        default_score=0.07,
        views=(),
        request_features=(),
        defaults=(0.0, 0.0),
        assembled_hash="h",
    )


class FaultyServer:
    def __init__(self, failing: set[int]) -> None:
        self.failing = failing
        self.calls: list[int] = []

    async def infer(
        self,
        model: str,
        version: int,
        input_name: str,
        output_name: str,
        batch: np.ndarray,
        timeout_s: float,
    ) -> np.ndarray:
        self.calls.append(version)
        if version in self.failing:
            raise Unavailable("down")
        return batch.sum(axis=1) + version


def _ladder(server: FaultyServer, budget: RetryBudget | None = None) -> Ladder:
    return Ladder(
        servers=lambda pool: server,
        breakers=BreakerRegistry(failure_threshold=3, open_s=60),
        budget=budget or RetryBudget(ratio=1.0, min_tokens=10),
        score_cache=TtlCache(100),
        reserve_s=0.0,
    )


CATALOG = ModelCatalog([_version(1), _version(2)])
ROUTE = Route(model="m", version=2, alias="prod")
X = np.asarray([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)


async def _run(ladder: Ladder, policy: FallbackPolicy) -> tuple[FallbackLevel, list[float], int]:
    r = await ladder.run(ROUTE, _version(2), X, time.monotonic() + 1, policy, CATALOG)
    return r.level, r.values, r.version


async def test_primary_then_each_rung_in_order() -> None:
    server = FaultyServer(failing=set())
    ladder = _ladder(server)
    policy = FallbackPolicy(version=1, cache_scores=True)
    assert await _run(ladder, policy) == (FallbackLevel.PRIMARY, [5.0, 9.0], 2)
    server.failing = {2}
    assert await _run(ladder, policy) == (FallbackLevel.LAST_KNOWN_GOOD, [4.0, 8.0], 1)
    server.failing = {1, 2}
    assert await _run(ladder, policy) == (FallbackLevel.CACHED_SCORE, [5.0, 9.0], 2)
    no_cache = FallbackPolicy(version=1, cache_scores=False, default_score=0.5)
    assert await _run(ladder, no_cache) == (FallbackLevel.STATIC_DEFAULT, [0.5, 0.5], 2)
    assert await _run(ladder, FallbackPolicy()) == (FallbackLevel.STATIC_DEFAULT, [0.07, 0.07], 2)


async def test_a_cached_score_is_only_ever_the_routed_versions_own() -> None:
    """After v1 scored a row, v2 (a promotion, or the other arm) must not
    answer that row with v1's cached score when v2 cannot be reached."""
    server = FaultyServer(failing=set())
    ladder = _ladder(server)
    policy = FallbackPolicy(cache_scores=True)
    v1_route = Route(model="m", version=1, alias="prod")
    r = await ladder.run(v1_route, _version(1), X, time.monotonic() + 1, policy, CATALOG)
    assert (r.level, r.values) == (FallbackLevel.PRIMARY, [4.0, 8.0])
    server.failing = {1, 2}
    assert await _run(ladder, policy) == (FallbackLevel.STATIC_DEFAULT, [0.07, 0.07], 2)
    r = await ladder.run(v1_route, _version(1), X, time.monotonic() + 1, policy, CATALOG)
    assert (r.level, r.values, r.version) == (FallbackLevel.CACHED_SCORE, [4.0, 8.0], 1)


async def test_open_breaker_skips_the_call() -> None:
    server = FaultyServer(failing={2})
    ladder = _ladder(server)
    for _ in range(3):
        await _run(ladder, FallbackPolicy())
    assert server.calls == [2, 2, 2]
    for _ in range(5):
        assert (await _run(ladder, FallbackPolicy()))[0] is FallbackLevel.STATIC_DEFAULT
    assert server.calls == [2, 2, 2]  # breaker open: no more upstream calls


async def test_retry_budget_bounds_upstream_attempts_at_50_percent_failure() -> None:
    server = FaultyServer(failing=set())
    ladder = Ladder(
        servers=lambda pool: server,
        breakers=BreakerRegistry(failure_threshold=10**9, open_s=60),
        budget=RetryBudget(ratio=0.09),
        score_cache=TtlCache(10),
        reserve_s=0.0,
    )
    rng = np.random.default_rng(0)
    n = 2000
    for _ in range(n):
        server.failing = {2} if rng.random() < 0.5 else set()
        await _run(ladder, FallbackPolicy(version=1))
    assert len(server.calls) / n <= 1.1


async def test_a_trial_that_ends_without_a_verdict_frees_the_slot() -> None:
    """Half-open trial cancelled (caller gone) or refused as the caller's fault:
    the next request may try again at once instead of waiting out the breaker."""
    import asyncio

    class Hanging(FaultyServer):
        hang = False
        reject = False

        async def infer(self, model: str, version: int, *a: object, **k: object) -> np.ndarray:
            if self.hang:
                await asyncio.Event().wait()
            if self.reject:
                self.calls.append(version)
                raise InferlineError("bad", code=Code.INVALID_ARGUMENT)
            return await super().infer(model, version, *a, **k)  # type: ignore[arg-type]

    server = Hanging(failing={2})
    ladder = Ladder(
        servers=lambda pool: server,
        breakers=BreakerRegistry(failure_threshold=1, open_s=0.2),
        budget=RetryBudget(ratio=1.0, min_tokens=10),
        score_cache=TtlCache(100),
        reserve_s=0.0,
    )
    policy = FallbackPolicy()
    assert (await _run(ladder, policy))[0] is FallbackLevel.STATIC_DEFAULT  # opens
    await asyncio.sleep(0.21)
    server.failing, server.hang = set(), True
    task = asyncio.ensure_future(_run(ladder, policy))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    server.hang, server.reject = False, True
    with pytest.raises(InferlineError):
        await _run(ladder, policy)
    server.reject = False
    assert (await _run(ladder, policy))[0] is FallbackLevel.PRIMARY  # well inside open_s
    assert server.calls == [2, 2, 2]


async def test_caller_errors_are_not_swallowed() -> None:
    class Rejecting(FaultyServer):
        async def infer(self, *a: object, **k: object) -> np.ndarray:
            raise InferlineError("bad", code=Code.INVALID_ARGUMENT)

    with pytest.raises(InferlineError):
        await _run(_ladder(Rejecting(set())), FallbackPolicy())


async def test_schema_mismatch_is_never_scored_and_falls_back() -> None:
    import dataclasses

    server = FaultyServer(failing=set())
    ladder = _ladder(server)
    broken = dataclasses.replace(_version(2), assembled_hash="other")
    catalog = ModelCatalog([_version(1), broken])
    r = await ladder.run(ROUTE, broken, X, time.monotonic() + 1, FallbackPolicy(version=1), catalog)
    # The tensor follows the mismatched schema, so no version can consume it.
    assert r.level is FallbackLevel.STATIC_DEFAULT and r.values == [0.07, 0.07]
    assert "schema_mismatch" in r.reasons
    assert server.calls == []  # nothing was scored on a malformed input


def test_catalog_flags_edited_metadata(tmp_path: Path) -> None:
    import json

    from router.pipeline.catalog import load_version
    from router.pipeline.schema import feature_schema_hash

    features = [
        {"name": n, "dtype": "float32", "source": "request", "view": None, "default": 0.0}
        for n in ("a", "b")
    ]
    meta = {
        "format": 1,
        "model": "m",
        "version": 1,
        "kind": "gbdt",
        "framework": "xgboost",
        "tensors": {"input": "i", "output": "o"},
        "entities": {},
        "features": features,
        "schema_hash": feature_schema_hash(features),
        "default_score": 0.1,
    }
    d = tmp_path / "m" / "1"
    d.mkdir(parents=True)
    (d / "metadata.json").write_text(json.dumps(meta))
    assert load_version(tmp_path, "m", 1).schema_ok
    meta["features"] = features[::-1]  # columns reordered, hash left as trained
    (d / "metadata.json").write_text(json.dumps(meta))
    v = load_version(tmp_path, "m", 1)
    assert not v.schema_ok and v.assembled_hash != v.schema_hash
