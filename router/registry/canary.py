"""The canary controller: promote or roll back on explicit, per-arm criteria.

Every ``interval_s`` each model running a canary experiment is judged on the
two arms' windows (same time span, same traffic mix, so no seasonality bias):

rollback as soon as, with at least ``min_samples`` requests in each arm,
  1. errors:  canary error rate > control error rate + ``max_error_rate_delta``
  2. scores:  PSI of canary scores against control scores > ``max_score_psi``
  3. latency: canary p99 > max(control p99 x ``p99_ratio``,
              control p99 + ``p99_slack_ms``) -- unless the KPI exception holds

promote once no rule has fired for ``hold_s`` seconds of continuous evidence;
with a ``ramp`` (e.g. 0.05, 0.25, 0.5) each hold first raises the canary's
weight to the next step (the salt stays, so every unit already on the canary
stays there), and promotion follows the hold at the last step.

The KPI exception ("business KPI improves but p99 regresses"): latency is a
guardrail, the KPI the goal, and the SLO is the contract. A p99 regression is
accepted only while the canary's p99 stays within the SLO budget
(``p99_slo_ms``) AND at least ``min_outcomes`` joined outcomes per arm show a
KPI lift of at least ``min_kpi_lift``. Otherwise it rolls back. A regression
past the SLO budget always rolls back, whatever the KPI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import structlog
from pydantic import BaseModel, ConfigDict, Field

from router.errors import InferlineError
from router.observability.drift import psi
from router.pipeline.arms import ArmStats, ArmWindow
from router.registry.service import RegistryService

log = structlog.get_logger("router.canary")

CONTROL, CANARY = "control", "canary"


class CanaryPolicy(BaseModel):
    # NaN would make every comparison below false: a canary never rolled back.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    min_samples: int = Field(default=200, ge=1)
    """Requests each arm needs in its window before any decision."""
    max_error_rate_delta: float = Field(default=0.01, ge=0)
    """Canary error rate may exceed control's by at most this."""
    p99_ratio: float = Field(default=1.25, ge=1)
    """Canary p99 may be at most this multiple of control's ..."""
    p99_slack_ms: float = Field(default=3.0, ge=0)
    """... or this much above it, whichever is larger (tiny p99s are noisy)."""
    p99_slo_ms: float = Field(default=50.0, gt=0)
    """The p99 SLO: no KPI gain justifies crossing it."""
    max_score_psi: float = Field(default=0.25, ge=0)
    """Score-distribution shift (PSI vs the control arm) that rolls back."""
    hold_s: float = Field(default=30.0, ge=0)
    """Criteria must hold this long (continuously) before promotion."""
    min_outcomes: int = Field(default=100, ge=1)
    """Joined outcomes per arm before the KPI may excuse a latency regression."""
    min_kpi_lift: float = 0.0
    """KPI (mean outcome, higher is better) lift required for that excuse."""
    ramp: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = ()
    """Canary weights to step through, one per hold, before promotion (each in
    (0, 1), as the registry accepts: one outside would stall the canary)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Literal["wait", "healthy", "rollback"]
    reasons: tuple[str, ...] = ()
    figures: dict[str, float] = field(default_factory=dict)


def score_psi(control: np.ndarray, canary: np.ndarray, bins: int = 10) -> float:
    """PSI of the canary's scores against the control arm's decile bins."""
    if len(control) == 0 or len(canary) == 0:
        return 0.0
    edges = np.unique(np.quantile(control, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, control, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, canary, side="right"), minlength=len(edges) + 1)
    return float(psi(expected / expected.sum(), actual))


def evaluate(policy: CanaryPolicy, control: ArmWindow, canary: ArmWindow) -> Verdict:
    """One judgement of the canary against the control arm (pure)."""
    if min(control.count, canary.count) < policy.min_samples:
        return Verdict("wait", (f"samples {canary.count}/{control.count} < {policy.min_samples}",))
    err_b, err_c = control.error_rate(), canary.error_rate()
    p99_b, p99_c = control.latency_quantile(0.99) * 1e3, canary.latency_quantile(0.99) * 1e3
    shift = score_psi(control.scores(), canary.scores())
    kpi_b, kpi_c = control.kpi(), canary.kpi()
    figures = {
        "error_rate_control": err_b,
        "error_rate_canary": err_c,
        "p99_ms_control": p99_b,
        "p99_ms_canary": p99_c,
        "score_psi": shift,
    }
    if kpi_b is not None and kpi_c is not None:
        figures |= {"kpi_control": kpi_b, "kpi_canary": kpi_c}
    if err_c > err_b + policy.max_error_rate_delta:
        return Verdict("rollback", (f"error rate {err_c:.4f} vs control {err_b:.4f}",), figures)
    if shift > policy.max_score_psi:
        return Verdict("rollback", (f"score PSI {shift:.3f} > {policy.max_score_psi}",), figures)
    limit = max(p99_b * policy.p99_ratio, p99_b + policy.p99_slack_ms)
    if p99_c > limit:
        lift_ok = (
            kpi_b is not None
            and kpi_c is not None
            and min(control.outcomes, canary.outcomes) >= policy.min_outcomes
            and kpi_c - kpi_b >= policy.min_kpi_lift
        )
        if p99_c <= policy.p99_slo_ms and lift_ok:
            return Verdict(
                "healthy", (f"p99 {p99_c:.1f} ms accepted: KPI lift within SLO",), figures
            )
        return Verdict("rollback", (f"p99 {p99_c:.1f} ms vs control {p99_b:.1f} ms",), figures)
    return Verdict("healthy", (), figures)


class CanaryController:
    """Applies ``evaluate`` to every running canary and acts through the service."""

    def __init__(
        self,
        *,
        service: RegistryService,
        arms: ArmStats,
        policy: CanaryPolicy,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._arms = arms
        self.policy = policy
        self._interval_s = interval_s
        self._clock = clock
        self._healthy_since: dict[str, float] = {}
        self._seen: dict[str, str] = {}  # model -> experiment salt being judged
        self.last: dict[str, Verdict] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.tick()
            except InferlineError:
                pass
            except Exception:
                # Judging stops for no one bad round: log it, judge again next tick.
                log.exception("canary.tick_failed")

    async def tick(self) -> None:
        experiments = self._service.store.state().experiments
        for model in set(self._seen) - set(experiments):
            self._seen.pop(model, None)
            self._healthy_since.pop(model, None)
        for model, exp in experiments.items():
            if exp.kind != "canary" or not exp.enabled:
                continue
            if self._seen.get(model) != exp.salt:  # a new canary: fresh windows
                self._seen[model] = exp.salt
                self._healthy_since.pop(model, None)
                self._arms.reset(model)
                continue
            verdict = evaluate(
                self.policy, self._arms.window(model, CONTROL), self._arms.window(model, CANARY)
            )
            self.last[model] = verdict
            if verdict.action == "rollback":
                log.warning(
                    "canary.rollback", model=model, reasons=verdict.reasons, **verdict.figures
                )
                await self._service.rollback(
                    model, "canary-controller", reason="; ".join(verdict.reasons)
                )
            elif verdict.action == "healthy":
                since = self._healthy_since.setdefault(model, self._clock())
                if self._clock() - since < self.policy.hold_s:
                    continue
                arm = exp.arm(CANARY)
                weight = arm.weight / sum(a.weight for a in exp.arms) if arm else 1.0
                step = next((w for w in self.policy.ramp if w > weight + 1e-9), None)
                if step is not None:
                    log.info("canary.ramp", model=model, weight=step)
                    self._healthy_since.pop(model, None)
                    await self._service.set_canary_weight(model, step, "canary-controller")
                    continue
                log.info("canary.promote", model=model, **verdict.figures)
                await self._service.promote(
                    model, "canary-controller", reason=f"criteria held {self.policy.hold_s}s"
                )
