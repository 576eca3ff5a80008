"""The fixed fallback ladder for the inference stage.

    1 PRIMARY          the routed version (breaker closed, or its half-open trial)
    2 LAST_KNOWN_GOOD  the model's fallback version, if the retry budget allows
    3 CACHED_SCORE     the routed version's recent score for the same input row,
                       where policy allows
    4 STATIC_DEFAULT   the model's static default score

Every rung below the first marks the answer degraded. The ladder never fails a
request because a model failed: the last rung always answers. Each upstream
call gets the caller's remaining deadline minus a small reserve, so the lower
rungs still answer in time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog

from router.errors import Code, InferlineError
from router.pipeline.breaker import BreakerRegistry, RetryBudget, model_breaker_name
from router.pipeline.cache import TtlCache
from router.pipeline.catalog import ModelCatalog, ModelVersion
from router.pipeline.inference import ModelServer, checked, infer
from router.pipeline.routing import FallbackPolicy, Route
from router.pipeline.types import FallbackLevel

log = structlog.get_logger("router.fallback")

# Failures that say "this backend cannot serve now" (fall down the ladder), as
# opposed to the caller's deadline passing.
_BACKEND_FAILURES = {Code.UNAVAILABLE, Code.INTERNAL, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED}


@dataclass(slots=True)
class LadderResult:
    scores: np.ndarray
    level: FallbackLevel
    version: int
    values: list[float]
    """``scores`` as Python floats."""
    reasons: list[str] = field(default_factory=list)


def _row_keys(version: ModelVersion, batch: np.ndarray) -> list[bytes]:
    """The score cache's key per input row: model, version and the row's
    float32 bytes. Per version, so a cached score is only ever the routed
    version's own (not another arm's, nor the version before a promotion)."""
    prefix = f"{version.model}\0{version.version}\0".encode()
    raw = batch.tobytes()
    width = len(raw) // len(batch) if len(batch) else 0
    return [
        hashlib.blake2b(prefix + raw[i : i + width], digest_size=16).digest()
        for i in range(0, len(raw), width or 1)
    ]


class Ladder:
    def __init__(
        self,
        *,
        servers: Callable[[str], ModelServer],
        breakers: BreakerRegistry,
        budget: RetryBudget,
        score_cache: TtlCache[float],
        reserve_s: float,
        slow_call_s: float = 0.02,
        max_call_s: float = 0.05,
    ) -> None:
        self._servers = servers
        self._breakers = breakers
        self._budget = budget
        self._cache = score_cache
        self._reserve_s = reserve_s
        self._slow_call_s = slow_call_s
        self._max_call_s = max_call_s

    async def _try(
        self, route: Route, version: ModelVersion, batch: np.ndarray, deadline: float
    ) -> tuple[np.ndarray, list[float]] | None:
        breaker = self._breakers.get(model_breaker_name(route.pool, version.model, version.version))
        if not breaker.allow():
            return None
        # The stage's own hard limit: a hung backend (a dead Python-backend stub
        # never answers) must not eat a generous caller deadline whole.
        timeout = min(deadline - time.monotonic() - self._reserve_s, self._max_call_s)
        if timeout <= 0:
            breaker.release_trial()
            return None
        try:
            raw = await infer(self._servers(route.pool), version, batch, timeout)
            out = checked(raw, batch.shape[0])
        except InferlineError as e:
            if e.code is Code.DEADLINE_EXCEEDED:
                breaker.record_timeout(timeout, self._slow_call_s)
                return None
            if e.code not in _BACKEND_FAILURES:
                breaker.release_trial()
                raise
            breaker.record_failure()
            return None
        except BaseException:  # cancelled: says nothing about the backend
            breaker.release_trial()
            raise
        breaker.record_success()
        return out

    async def run(
        self,
        route: Route,
        version: ModelVersion,
        batch: np.ndarray,
        deadline: float,
        policy: FallbackPolicy,
        catalog: ModelCatalog,
    ) -> LadderResult:
        self._budget.deposit()
        reasons: list[str] = []
        if version.schema_ok:
            out = await self._try(route, version, batch, deadline)
        else:
            # Fail closed: a version whose feature schema does not match what it
            # was trained on is never scored (train/serve parity).
            log.error("parity.schema_mismatch", model=version.model, version=version.version)
            reasons.append("schema_mismatch")
            out = None
        if out is not None:
            if policy.cache_scores:
                for key, s in zip(_row_keys(version, batch), out[1], strict=True):
                    self._cache.put(key, s, policy.cache_ttl_s)
            return LadderResult(out[0], FallbackLevel.PRIMARY, version.version, out[1])
        if version.schema_ok:
            reasons.append("primary_unavailable")

        fb = policy.version
        if fb is not None and fb != version.version and (version.model, fb) in catalog:
            lkg = catalog.get(version.model, fb)
            same_schema = lkg.schema_ok and lkg.schema_hash == version.assembled_hash
            if same_schema and self._budget.try_spend():
                out = await self._try(route, lkg, batch, deadline)
                if out is not None:
                    return LadderResult(out[0], FallbackLevel.LAST_KNOWN_GOOD, fb, out[1], reasons)
            reasons.append("last_known_good_unavailable")

        if policy.cache_scores:
            cached = [self._cache.get(k) for k in _row_keys(version, batch)]
            if all(c is not None for c in cached):
                values = [float(c) for c in cached if c is not None]
                scores = np.asarray(values, dtype=np.float64)
                return LadderResult(
                    scores, FallbackLevel.CACHED_SCORE, version.version, values, reasons
                )
            reasons.append("score_cache_miss")

        default = policy.default_score
        if default is None:
            default = version.default_score
        scores = np.full(batch.shape[0], default, dtype=np.float64)
        return LadderResult(
            scores, FallbackLevel.STATIC_DEFAULT, version.version, scores.tolist(), reasons
        )
