"""Per-arm windows: what the canary controller and A/B read-outs decide on.

For every (model, arm) the last ``window`` requests are kept as latency, error
flag and mean score in preallocated rings (an append is a few array stores on
the hot path), plus running totals of ingested business outcomes. Recent
predictions are remembered by request id (bounded, oldest dropped) so outcomes
that arrive later can be joined to the arm and score that produced them.

An "error" for an arm is any answer its version did not produce itself: a
failed request or a fallback rung (the caller got an answer, the arm failed).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from router.errors import InvalidArgument


class ArmWindow:
    """Ring of the last ``size`` requests of one arm."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.latency = np.zeros(size)
        self.error = np.zeros(size, dtype=bool)
        self.score = np.full(size, np.nan)
        self.n = 0  # total observed (ring position = n % size)
        self.outcomes = 0
        self.outcome_sum = 0.0
        self.outcome_score_sum = 0.0

    def add(self, latency_s: float, ok: bool, score: float) -> None:
        i = self.n % self.size
        self.latency[i] = latency_s
        self.error[i] = not ok
        self.score[i] = score
        self.n += 1

    def _filled(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a[: min(self.n, self.size)])

    @property
    def count(self) -> int:
        return min(self.n, self.size)

    def error_rate(self) -> float:
        e = self._filled(self.error)
        return float(e.mean()) if len(e) else 0.0

    def latency_quantile(self, q: float) -> float:
        """Quantile of successful requests' latency (seconds)."""
        lat = self._filled(self.latency)[~self._filled(self.error)]
        return float(np.quantile(lat, q)) if len(lat) else 0.0

    def scores(self) -> np.ndarray:
        s = self._filled(self.score)
        return np.asarray(s[np.isfinite(s)])

    def kpi(self) -> float | None:
        """Mean ingested outcome (e.g. fraud caught, click), None before any."""
        return self.outcome_sum / self.outcomes if self.outcomes else None

    def calibration_gap(self) -> float | None:
        """Mean predicted score minus mean outcome over joined requests."""
        if not self.outcomes:
            return None
        return (self.outcome_score_sum - self.outcome_sum) / self.outcomes


@dataclass(frozen=True, slots=True)
class Served:
    model: str
    arm: str
    version: int
    score: float


@dataclass(frozen=True, slots=True)
class JoinedOutcome:
    request_id: str
    model: str
    arm: str
    version: int
    score: float
    value: float


ArmObserver = Callable[[str, str, float, bool, float], None]
"""(model, arm, latency_s, ok, mean score): per-request metrics export."""


class ArmStats:
    """Windows of every (model, arm), and the request-id join for outcomes."""

    def __init__(
        self, window: int, join_entries: int, on_observe: ArmObserver | None = None
    ) -> None:
        self._on_observe = on_observe
        self._window = window
        self._join_entries = join_entries
        self._arms: dict[tuple[str, str], ArmWindow] = {}
        self._recent: OrderedDict[str, Served] = OrderedDict()

    def window(self, model: str, arm: str) -> ArmWindow:
        w = self._arms.get((model, arm))
        if w is None:
            w = self._arms[(model, arm)] = ArmWindow(self._window)
        return w

    def observe(
        self,
        request_id: str,
        model: str,
        arm: str,
        version: int,
        latency_s: float,
        ok: bool,
        scores: list[float],
    ) -> None:
        mean = float(np.mean(scores)) if scores else float("nan")
        self.window(model, arm).add(latency_s, ok, mean)
        if self._on_observe is not None:
            self._on_observe(model, arm, latency_s, ok, mean)
        if ok:
            self._recent[request_id] = Served(model, arm, version, mean)
            if len(self._recent) > self._join_entries:
                self._recent.popitem(last=False)

    def reset(self, model: str) -> None:
        """Forget a model's windows (a new canary starts from zero), and the
        requests awaiting outcomes: a late outcome for the last canary's traffic
        must not count toward the next canary's KPI."""
        for key in [k for k in self._arms if k[0] == model]:
            del self._arms[key]
        for request_id in [r for r, s in self._recent.items() if s.model == model]:
            del self._recent[request_id]

    def join(
        self, outcomes: Iterable[tuple[str, float]], models: Collection[str] | None = None
    ) -> tuple[list[JoinedOutcome], int]:
        """Attach (request id, outcome value) pairs to the arm that served them.
        Returns the joined rows and how many ids were unknown (too old, never
        seen, or served for a model outside ``models``: left for a caller
        granted that model); a non-finite value refuses the whole batch
        (InvalidArgument), joining none."""
        pairs = list(outcomes)
        for i, (_, value) in enumerate(pairs):
            # Checked before any is joined: one NaN would poison its arm's sums.
            if not math.isfinite(value):
                raise InvalidArgument(f"outcome {i} has a non-finite value")
        joined: list[JoinedOutcome] = []
        unknown = 0
        for request_id, value in pairs:
            served = self._recent.get(request_id)
            if served is None or (models is not None and served.model not in models):
                unknown += 1
                continue
            del self._recent[request_id]
            w = self.window(served.model, served.arm)
            w.outcomes += 1
            w.outcome_sum += value
            w.outcome_score_sum += served.score
            joined.append(
                JoinedOutcome(
                    request_id, served.model, served.arm, served.version, served.score, value
                )
            )
        return joined, unknown

    def items(self) -> Iterator[tuple[tuple[str, str], ArmWindow]]:
        return iter(list(self._arms.items()))
