"""Feature assembly: one batched online read, TTL enforcement, tensor build.

For every view the model needs, the entity keys of all candidates are
deduplicated and read in one call (the store issues the views' reads
concurrently). Feast returns rows past their view's TTL as if present, so the
TTL is enforced here: stale and missing rows are replaced by the version's
training defaults and reported per candidate, never scored silently as fresh.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from router.errors import InvalidArgument
from router.pipeline.breaker import CircuitBreaker
from router.pipeline.cache import TtlCache
from router.pipeline.catalog import ModelVersion
from router.pipeline.types import CandidateIn, Freshness, Scalar, ViewFreshness

_FLOAT32_MAX = float(np.finfo(np.float32).max)

EntityKey = tuple[int | str, ...]


@dataclass(frozen=True, slots=True)
class ViewInfo:
    """What the router needs to know about a feature view."""

    name: str
    join_keys: tuple[str, ...]
    key_types: tuple[type, ...]
    """Python type of each join key value (int for Int64, str for String)."""
    ttl_s: float
    """0 means the view never expires."""
    features: frozenset[str]
    int32_keys: frozenset[str] = frozenset()
    """Int keys the view declares Int32: Feast keys their rows by a 4-byte value,
    so a request's value must fit one."""


@dataclass(frozen=True, slots=True)
class ViewRead:
    view: str
    keys: Sequence[EntityKey]
    features: tuple[str, ...]


Row = tuple[float | None, list[float | None] | None]
"""(event time as epoch seconds, values in requested order); (None, None) if missing."""


class FeatureReader(Protocol):
    """The online feature store as the pipeline sees it (see backends.feast_store)."""

    def view_info(self, name: str) -> ViewInfo: ...

    async def read(self, reads: Sequence[ViewRead]) -> list[list[Row]]: ...

    @property
    def inline(self) -> bool:
        """Reads finish without suspending (a local file read on the event loop):
        no timeout can cut them short, so none is armed."""
        ...


class FeatureStoreUnavailable(Exception):
    """The store failed or did not answer within the budget (a fallback, not an error)."""


@dataclass(slots=True)
class FeatureBatch:
    matrix: np.ndarray
    freshness: list[tuple[ViewFreshness, ...]]
    reasons: set[str] = field(default_factory=set)


def _entity_key(cand: CandidateIn, info: ViewInfo) -> EntityKey:
    out: list[int | str] = []
    for key, typ in zip(info.join_keys, info.key_types, strict=True):
        if key not in cand.entities:
            raise InvalidArgument(f"candidate is missing entity key '{key}'")
        value = cand.entities[key]
        if typ is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"entity key '{key}' must be an int64 value")
            if key in info.int32_keys and not -(2**31) <= value < 2**31:
                raise InvalidArgument(f"entity key '{key}' must be an int32 value")
        if typ is str and not isinstance(value, str):
            raise InvalidArgument(f"entity key '{key}' must be a string value")
        assert isinstance(value, int | str)
        out.append(value)
    return tuple(out)


def _request_value(name: str, value: Scalar) -> float:
    if isinstance(value, str):
        raise InvalidArgument(f"feature '{name}' must be numeric, got a string")
    v = float(value)
    if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
        raise InvalidArgument(f"feature '{name}' must be a finite float32 value")
    return v


def fill_request_features(
    version: ModelVersion, candidates: Sequence[CandidateIn], rows: list[list[float]]
) -> None:
    """Validate and copy the caller's request-time features into ``rows``."""
    for i, cand in enumerate(candidates):
        row = rows[i]
        for rf in version.request_features:
            if rf.name not in cand.features:
                raise InvalidArgument(f"candidate {i} is missing request feature '{rf.name}'")
            row[rf.column] = _request_value(rf.name, cand.features[rf.name])


def plan_reads(
    version: ModelVersion, candidates: Sequence[CandidateIn], store: FeatureReader
) -> tuple[list[ViewRead], list[list[int]], list[ViewInfo]]:
    """Dedupe entity keys per view; return the reads and each candidate's row index."""
    reads: list[ViewRead] = []
    index: list[list[int]] = []
    infos: list[ViewInfo] = []
    for plan in version.views:
        info = store.view_info(plan.view)
        keys: dict[EntityKey, int] = {}
        rows = [keys.setdefault(_entity_key(c, info), len(keys)) for c in candidates]
        reads.append(ViewRead(view=plan.view, keys=list(keys), features=plan.features))
        index.append(rows)
        infos.append(info)
    return reads, index, infos


async def _read(
    store: FeatureReader,
    reads: list[ViewRead],
    timeout_s: float,
    breaker: CircuitBreaker | None,
    cache: TtlCache[Row] | None,
    cache_ttl_s: float,
    trial_timeout_s: float,
    fair_timeout_s: float,
) -> list[list[Row]] | None:
    """Rows for every read (cache first), or None when the store cannot answer."""
    use_cache = cache is not None and cache_ttl_s > 0
    results: list[list[Row | None]] = []
    misses: list[ViewRead] = []
    for r in reads:
        cached: list[Row | None] = (
            [cache.get((r.view, r.features, k)) for k in r.keys]
            if cache is not None and use_cache
            else [None] * len(r.keys)
        )
        results.append(cached)
        missing = [k for k, c in zip(r.keys, cached, strict=True) if c is None]
        if missing:
            misses.append(ViewRead(view=r.view, keys=missing, features=r.features))
    if misses:
        if breaker is not None and not breaker.allow():
            return None
        if breaker is not None and breaker.in_trial and not store.inline:
            got = await _trial_read(store, misses, breaker, timeout_s, trial_timeout_s)
            if got is None:
                return None
            return _merge(reads, results, misses, got, cache, cache_ttl_s)
        try:
            if store.inline:
                fetched = await store.read(misses)
            else:
                # asyncio.timeout, not wait_for: no task per read (~20 us and a
                # loop cycle saved).
                async with asyncio.timeout(max(timeout_s, 0.0)):
                    fetched = await store.read(misses)
        except TimeoutError:
            if breaker is not None:
                breaker.record_timeout(timeout_s, fair_timeout_s)
            return None
        except FeatureStoreUnavailable:
            if breaker is not None:
                breaker.record_failure()
            return None
        if breaker is not None:
            breaker.record_success()
        return _merge(reads, results, misses, fetched, cache, cache_ttl_s)
    return [[row for row in rows if row is not None] for rows in results]


def _merge(
    reads: list[ViewRead],
    results: list[list[Row | None]],
    misses: list[ViewRead],
    fetched: list[list[Row]],
    cache: TtlCache[Row] | None,
    cache_ttl_s: float,
) -> list[list[Row]]:
    """Fill the cache misses in ``results`` with the rows just read (and cache them)."""
    by_view = {
        m.view: dict(zip(m.keys, rows, strict=True))
        for m, rows in zip(misses, fetched, strict=True)
    }
    use_cache = cache is not None and cache_ttl_s > 0
    for r, row_list in zip(reads, results, strict=True):
        got = by_view.get(r.view, {})
        for j, k in enumerate(r.keys):
            if row_list[j] is None:
                row_list[j] = got[k]
                if cache is not None and use_cache and got[k][0] is not None:
                    cache.put((r.view, r.features, k), got[k], cache_ttl_s)
    return [[row for row in rows if row is not None] for rows in results]


_TRIALS: set[asyncio.Task[list[list[Row]]]] = set()
"""Trial reads still running after the request that started them has answered
(a reference keeps each task alive until it ends)."""


def _trial_done(task: asyncio.Task[list[list[Row]]]) -> None:
    _TRIALS.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: its outcome already went to the breaker


async def _trial_read(
    store: FeatureReader,
    misses: list[ViewRead],
    breaker: CircuitBreaker,
    timeout_s: float,
    trial_timeout_s: float,
) -> list[list[Row]] | None:
    """The half-open breaker's trial read, judged on ``trial_timeout_s`` rather
    than on the request's budget.

    Why: after an outage the trial may need a new connection (those of a dead
    store end closed); on a busy node that can miss an 8 ms budget, and each miss holds
    the breaker open another ``open_s`` although the store is back. The request
    waits only its own budget (answering on defaults past it); the read goes on
    and its outcome alone closes or re-opens the breaker.
    """

    async def judged() -> list[list[Row]]:
        try:
            async with asyncio.timeout(max(timeout_s, trial_timeout_s)):
                fetched = await store.read(misses)
        except (TimeoutError, FeatureStoreUnavailable):
            breaker.record_failure()
            raise
        except BaseException:
            breaker.release_trial()
            raise
        breaker.record_success()
        return fetched

    task = asyncio.ensure_future(judged())
    _TRIALS.add(task)
    task.add_done_callback(_trial_done)
    done, _ = await asyncio.wait({task}, timeout=max(timeout_s, 0.0))
    if task not in done or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


async def assemble(
    version: ModelVersion,
    candidates: Sequence[CandidateIn],
    store: FeatureReader,
    timeout_s: float,
    *,
    max_clock_skew_s: float = 5.0,
    breaker: CircuitBreaker | None = None,
    cache: TtlCache[Row] | None = None,
    cache_ttl_s: float = 0.0,
    trial_timeout_s: float = 0.25,
    fair_timeout_s: float = 0.0,
) -> FeatureBatch:
    """Build the [n_candidates, n_features] float32 input for ``version``.

    ``breaker`` guards the store (open: skip the read, answer with defaults);
    ``cache`` (with ``cache_ttl_s`` > 0) serves recently read rows without a read;
    ``trial_timeout_s`` bounds the breaker's half-open trial read (``_trial_read``);
    a read that times out counts against the breaker only if ``timeout_s`` was at
    least ``fair_timeout_s`` (the configured budget, not one cut by the deadline).
    """
    n = len(candidates)
    # Rows are filled as Python lists and become the float32 tensor in one
    # conversion: a request has a few rows, and each numpy call on arrays this
    # small costs more than the work it does (docs/benchmarks.md).
    rows = [list(version.defaults) for _ in range(n)]
    fill_request_features(version, candidates, rows)
    reads, index, infos = plan_reads(version, candidates, store)
    reasons: set[str] = set()
    if not reads:
        return FeatureBatch(np.array(rows, dtype=np.float32), [() for _ in range(n)], reasons)
    freshness: list[list[ViewFreshness]] = [[] for _ in range(n)]

    if timeout_s <= 0:
        # The caller's deadline leaves no time for a read: answer on defaults.
        results = None
        reasons.add("feature_budget_exhausted")
    else:
        results = await _read(
            store, reads, timeout_s, breaker, cache, cache_ttl_s, trial_timeout_s, fair_timeout_s
        )
        if results is None:
            reasons.add("feature_store_unavailable")

    now = time.time()
    for v, plan in enumerate(version.views):
        ttl = infos[v].ttl_s
        if results is None:
            for i in range(n):
                freshness[i].append(ViewFreshness(plan.view, Freshness.UNAVAILABLE, 0))
            continue
        view_rows = results[v]
        for i in range(n):
            ts, values = view_rows[index[v][i]]
            if ts is None or values is None:
                freshness[i].append(ViewFreshness(plan.view, Freshness.MISSING, 0))
                reasons.add("features_missing")
                continue
            age = now - ts
            if (ttl > 0 and age > ttl) or age < -max_clock_skew_s:
                freshness[i].append(
                    ViewFreshness(plan.view, Freshness.STALE, max(int(age * 1000), 0))
                )
                reasons.add("features_stale")
                continue
            row = rows[i]
            null = False
            for c, x, d in zip(plan.columns, values, plan.defaults, strict=True):
                if x is None:
                    null = True
                    row[c] = d
                else:
                    row[c] = x
            if null:
                reasons.add("features_null")
            freshness[i].append(ViewFreshness(plan.view, Freshness.FRESH, max(int(age * 1000), 0)))
    matrix = np.array(rows, dtype=np.float32)
    return FeatureBatch(matrix, [tuple(f) for f in freshness], reasons)
