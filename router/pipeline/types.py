"""Plain data passed between the transport and the pipeline (no protobuf here)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

Scalar = float | int | str | bool


class Freshness(enum.IntEnum):
    """Mirrors inferline.v1.FreshnessStatus (same numbers)."""

    FRESH = 1
    STALE = 2
    MISSING = 3
    UNAVAILABLE = 4


class FallbackLevel(enum.IntEnum):
    """Mirrors inferline.v1.FallbackLevel (same numbers)."""

    PRIMARY = 1
    LAST_KNOWN_GOOD = 2
    CACHED_SCORE = 3
    STATIC_DEFAULT = 4


@dataclass(frozen=True, slots=True)
class CandidateIn:
    candidate_id: str
    entities: Mapping[str, Scalar]
    features: Mapping[str, Scalar]


@dataclass(frozen=True, slots=True)
class PredictCommand:
    request_id: str
    tenant: str | None
    alias: str | None
    version: str | None
    candidates: tuple[CandidateIn, ...]
    idempotency_key: str = ""
    priority: str | None = None
    identity: str | None = None
    """Caller's workload identity (SPIFFE URI from the edge), for the audit trail."""


@dataclass(frozen=True, slots=True)
class ViewFreshness:
    view: str
    status: Freshness
    age_ms: int


@dataclass(slots=True)
class PredictResult:
    model: str
    version: int
    alias: str | None
    candidate_ids: list[str]
    scores: list[float]
    freshness: list[tuple[ViewFreshness, ...]]
    fallback_level: FallbackLevel = FallbackLevel.PRIMARY
    degraded_reasons: list[str] = field(default_factory=list)
    timings_us: dict[str, int] = field(default_factory=dict)
    arm: str = ""
    """Experiment arm that served the request ("" outside experiments)."""

    @property
    def degraded(self) -> bool:
        return bool(self.degraded_reasons) or self.fallback_level != FallbackLevel.PRIMARY
