"""The Predict pipeline: authenticate, route, read features, score.

Pure orchestration over plain data: no gRPC here. Each stage is timed with
``time.monotonic()``; the caller's absolute deadline bounds every downstream
call, and the feature read gets its own, smaller budget so a slow store
degrades the answer instead of eating the inference time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import Tracer

from router.errors import DeadlineExceeded, InferlineError, InvalidArgument, NotFound
from router.logging import bind_request
from router.observability.drift import DriftMonitor
from router.observability.tracing import stage
from router.pipeline import features as features_stage
from router.pipeline import quality
from router.pipeline.admission import Admission, effective_priority
from router.pipeline.arms import ArmStats
from router.pipeline.auth import Principal, authenticate
from router.pipeline.breaker import FEATURE_STORE_BREAKER, BreakerRegistry
from router.pipeline.cache import TtlCache
from router.pipeline.catalog import ModelVersion
from router.pipeline.experiment import assign, unit_id
from router.pipeline.fallback import Ladder
from router.pipeline.features import FeatureReader, Row
from router.pipeline.routing import Route, RoutingTable, parse_model_ref, resolve
from router.pipeline.shadow import ShadowMirror
from router.pipeline.snapshot import Snapshot
from router.pipeline.types import FallbackLevel, PredictCommand, PredictResult

log = structlog.get_logger("router.predict")

PredictObserver = Callable[[PredictCommand, PredictResult | None, InferlineError | None], None]
"""Told of every finished Predict (result or caller-visible error), synchronously:
must only enqueue (audit trail, payload capture), never block."""


def _soon(fn: Callable[..., object], *args: object) -> None:
    """``loop.call_soon``, the loop looked up only when called: on Python 3.11
    ``asyncio.get_running_loop()`` is a getpid() system call, and the drift
    monitor defers an update once per ~64 requests, not per request."""
    asyncio.get_running_loop().call_soon(fn, *args)


class Predictor:
    def __init__(
        self,
        *,
        snapshot: Callable[[], Snapshot],
        features: FeatureReader,
        ladder: Ladder,
        admission: Admission,
        breakers: BreakerRegistry,
        feature_cache: TtlCache[Row],
        tracer: Tracer,
        drift: DriftMonitor,
        max_candidates: int,
        feature_timeout_s: float,
        min_inference_budget_s: float,
        max_clock_skew_s: float,
        store_trial_timeout_s: float = 0.25,
        region: str | None = None,
        observer: PredictObserver | None = None,
        arms: ArmStats | None = None,
        shadow: ShadowMirror | None = None,
    ) -> None:
        self._region = region  # this deployment's region: residency is checked at auth
        self._snapshot = snapshot
        self._arms = arms
        self._shadow = shadow
        self._features = features
        self._ladder = ladder
        self._admission = admission
        self._breakers = breakers
        self._feature_cache = feature_cache
        self._tracer = tracer
        self._drift = drift
        self._max_candidates = max_candidates
        self.max_candidates = max_candidates
        """Read by the transports, to refuse an oversized request before any
        work per candidate (PII tokenization, conversion) is spent on it."""
        self._feature_timeout_s = feature_timeout_s
        self._min_inference_budget_s = min_inference_budget_s
        self._max_clock_skew_s = max_clock_skew_s
        self._store_trial_timeout_s = store_trial_timeout_s
        self._observer = observer

    def predict(self, cmd: PredictCommand, deadline: float) -> Coroutine[Any, Any, PredictResult]:
        """Score ``cmd`` before ``deadline`` (a ``time.monotonic()`` instant).

        A plain function returning the pipeline's coroutine: without an observer
        there is nothing to wrap, and each coroutine layer costs every request a
        frame and two hops per suspension."""
        if self._observer is None:
            return self._predict(cmd, deadline)
        return self._observed(cmd, deadline, self._observer)

    async def _observed(
        self, cmd: PredictCommand, deadline: float, observer: PredictObserver
    ) -> PredictResult:
        try:
            result = await self._predict(cmd, deadline)
        except InferlineError as e:
            observer(cmd, None, e)
            raise
        observer(cmd, result, None)
        return result

    async def _predict(self, cmd: PredictCommand, deadline: float) -> PredictResult:
        t0 = time.monotonic()
        snap = self._snapshot()
        table = snap.table
        # Asked once: stage spans exist only under a recording request span.
        rec = trace.get_current_span().is_recording()
        with stage(self._tracer, "auth", rec):
            principal = authenticate(table, cmd.tenant, self._region)
        with stage(self._tracer, "admission", rec) as span:
            priority = effective_priority(cmd.priority, principal.policy.max_priority)
            if span.is_recording():
                span.set_attribute("inferline.priority", priority)
            ticket = self._admission.admit(
                principal.tenant, priority, principal.policy.max_in_flight
            )
        try:
            route, arm, version = self._route(cmd, snap, principal, priority, rec)
            t1 = time.monotonic()
            timings = {"routing": int((t1 - t0) * 1e6)}
            scoring = self._scored(cmd, snap, route, version, arm, deadline, t0, t1, timings, rec)
            if not arm or self._arms is None:
                return await scoring
            return await self._armed(cmd, route, arm, t0, timings, scoring)
        finally:
            self._admission.release(ticket)

    def _route(
        self, cmd: PredictCommand, snap: Snapshot, principal: Principal, priority: str, rec: bool
    ) -> tuple[Route, str, ModelVersion]:
        """The route, experiment arm ("" for none) and loaded version that serve ``cmd``."""
        table = snap.table
        catalog = snap.catalog
        with stage(self._tracer, "routing", rec):
            ref = parse_model_ref(cmd.alias, cmd.version)
            route = resolve(table, principal.policy, ref)
            n = len(cmd.candidates)
            if n == 0:
                raise InvalidArgument("at least one candidate is required")
            if n > self._max_candidates:
                raise InvalidArgument(f"at most {self._max_candidates} candidates per request")
            route, arm = self._experiment_arm(cmd, snap, principal, route)
            if not arm:
                route = self._cheap_tier(table, route, priority, principal)
            if (route.model, route.version) not in catalog:
                raise NotFound(f"version '{route.model}@{route.version}' is not loaded")
            version = catalog.get(route.model, route.version)
        bind_request(model=route.model, version=route.version, arm=arm)
        if rec:
            current = trace.get_current_span()
            current.set_attribute("inferline.model", route.model)
            current.set_attribute("inferline.version", route.version)
            current.set_attribute("inferline.alias", route.alias or "")
            current.set_attribute("inferline.arm", arm)
        return route, arm, version

    async def _armed(
        self,
        cmd: PredictCommand,
        route: Route,
        arm: str,
        t0: float,
        timings: dict[str, int],
        scoring: Awaitable[PredictResult],
    ) -> PredictResult:
        """Experiment traffic: ``scoring`` (the request's ``_scored``), its outcome
        recorded in the arm's stats."""
        assert self._arms is not None
        try:
            result = await scoring
        except Exception:
            self._arms.observe(
                cmd.request_id, route.model, arm, route.version, time.monotonic() - t0, False, []
            )
            raise
        ok = result.fallback_level == FallbackLevel.PRIMARY and result.version == route.version
        self._arms.observe(
            cmd.request_id,
            route.model,
            arm,
            route.version,
            timings["total"] / 1e6,
            ok,
            result.scores,
        )
        return result

    def _cheap_tier(
        self, table: RoutingTable, route: Route, priority: str, principal: Principal
    ) -> Route:
        """The model's cheap tier for low-value or busy-time traffic, when it has one.
        Only alias-routed requests move: a version asked for by number, or an
        alias the tenant pins or owns (a fine-tuned ``fraud:acme``), is a
        contract, as for experiments; experiment traffic stays in its arm."""
        ct = table.models[route.model].cheap_tier
        if (
            ct is None
            or route.alias is None
            or f"{route.model}:{route.alias}" in principal.policy.aliases
        ):
            return route
        adm = self._admission
        if not ct.applies(priority, adm.in_flight, adm.max_in_flight):
            return route
        bind_request(tier="cheap", requested_model=route.model)
        return dataclasses.replace(route, model=ct.model, version=ct.version)

    def _experiment_arm(
        self, cmd: PredictCommand, snap: Snapshot, principal: Principal, route: Route
    ) -> tuple[Route, str]:
        """The experiment arm for an alias-routed request ("" when none applies).
        Tenants pinning the alias are never enrolled; a killed experiment routes
        everything to the alias's own version."""
        exp = snap.experiments.get(route.model)
        if (
            exp is None
            or not exp.enabled
            or route.alias != exp.alias
            or f"{route.model}:{route.alias}" in principal.policy.aliases
        ):
            return route, ""
        chosen = assign(exp, unit_id(exp, cmd.candidates, cmd.request_id))
        return dataclasses.replace(route, version=chosen.version), chosen.name

    async def _scored(
        self,
        cmd: PredictCommand,
        snap: Snapshot,
        route: Route,
        version: ModelVersion,
        arm: str,
        deadline: float,
        t0: float,
        t1: float,
        timings: dict[str, int],
        rec: bool,
    ) -> PredictResult:
        table = snap.table
        catalog = snap.catalog

        model_route = table.models[route.model]
        budget = min(self._feature_timeout_s, deadline - t1 - self._min_inference_budget_s)
        with stage(self._tracer, "features", rec) as span:
            batch = await features_stage.assemble(
                version,
                cmd.candidates,
                self._features,
                budget,
                max_clock_skew_s=self._max_clock_skew_s,
                breaker=self._breakers.get(FEATURE_STORE_BREAKER),
                cache=self._feature_cache,
                cache_ttl_s=model_route.feature_cache_ttl_s,
                trial_timeout_s=self._store_trial_timeout_s,
                fair_timeout_s=self._feature_timeout_s,
            )
            if span.is_recording():
                span.set_attribute("inferline.degraded_reasons", sorted(batch.reasons))
        with stage(self._tracer, "quality", rec):
            report = quality.check(version, batch.matrix)
            if report.imputed:
                batch.reasons.add("dq_imputed")
        t2 = time.monotonic()
        timings["features"] = int((t2 - t1) * 1e6)

        if deadline - t2 <= 0:
            raise DeadlineExceeded("deadline exceeded before inference")
        with stage(self._tracer, "inference", rec) as span:
            result = await self._ladder.run(
                route, version, batch.matrix, deadline, model_route.fallback, catalog
            )
            if span.is_recording():
                span.set_attribute("inferline.fallback_level", result.level.name)
                span.set_attribute("inferline.served_version", result.version)
        if result.level in (FallbackLevel.PRIMARY, FallbackLevel.LAST_KNOWN_GOOD):
            # After the answer is written (call_soon): the window update is
            # bookkeeping, not part of the caller's latency.
            self._drift.observe(
                route.model,
                result.version,
                batch.matrix,
                result.scores,
                defer=_soon,
            )
            shadow = snap.shadows.get(route.model)
            if self._shadow is not None and shadow is not None and route.alias == shadow.alias:
                self._shadow.submit(
                    shadow,
                    route.pool,
                    catalog,
                    cmd.request_id,
                    version.assembled_hash,
                    batch.matrix,
                    result.scores,
                )
        t3 = time.monotonic()
        timings["inference"] = int((t3 - t2) * 1e6)
        timings["total"] = int((t3 - t0) * 1e6)

        return PredictResult(
            model=route.model,
            version=result.version,
            alias=route.alias,
            candidate_ids=[c.candidate_id for c in cmd.candidates],
            scores=result.values,
            freshness=batch.freshness,
            fallback_level=result.level,
            degraded_reasons=sorted(batch.reasons.union(result.reasons)),
            timings_us=timings,
            arm=arm,
        )
