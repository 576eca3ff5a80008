"""Routing table: which tenant may use which model, and alias -> version.

The table is validated whole (``extra="forbid"``, cross-references checked)
and published inside one immutable snapshot (``router.pipeline.snapshot``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.errors import ConfigError, InvalidArgument, NotFound, PermissionDenied

_NAME = r"[a-z][a-z0-9_\-]{0,62}"
_ALIAS_REF = re.compile(rf"^({_NAME}):({_NAME})$")
_REGION = r"[a-z][a-z0-9\-]{0,62}"
_VERSION_REF = re.compile(rf"^({_NAME})@([1-9][0-9]{{0,8}})$")


class _Frozen(BaseModel):
    # No NaN or infinity in any score, ratio or TTL: e.g. a NaN
    # fallback.default_score would be served to callers as a score.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class FallbackPolicy(_Frozen):
    """The ladder below a model's primary version (docs/DESIGN.md Part 6)."""

    version: int | None = None
    """Last-known-good or cheaper version asked when the primary fails."""
    cache_scores: bool = False
    """Answer with a recent cached score for the same input row (only for
    deterministic models whose inputs repeat; off for personalized inputs)."""
    cache_ttl_s: float = Field(default=300.0, gt=0)
    """How old a cached score may be."""
    default_score: float | None = None
    """Static last-resort score; the version's training base rate when unset."""


Priority = Literal["critical", "standard", "batch"]
PRIORITY_RANK: dict[str, int] = {"batch": 0, "standard": 1, "critical": 2}


class CheapTier(_Frozen):
    """A cheaper model (e.g. the INT8 ranker) that answers low-value traffic, and
    all but critical traffic while the router is busy (docs/DESIGN.md Part 6)."""

    model: str
    """A routed model with the same inputs (its own metadata and feature schema)."""
    version: int
    """Its version to serve; must be listed under that model."""
    priorities: tuple[Priority, ...] = ("batch",)
    """Priority classes always served by the cheap tier."""
    load_above: float | None = Field(default=0.8, gt=0, le=1)
    """While the router's in-flight requests exceed this fraction of
    ``limits.max_in_flight``, standard traffic goes to the cheap tier too
    (critical never does); None: only ``priorities``."""

    def applies(self, priority: str, in_flight: int, max_in_flight: int) -> bool:
        if priority in self.priorities:
            return True
        return (
            priority != "critical"
            and self.load_above is not None
            and in_flight > self.load_above * max_in_flight
        )


class ModelRoute(_Frozen):
    versions: tuple[int, ...] = Field(min_length=1)
    """Versions that may be served (each must exist in the model repository)."""
    aliases: dict[str, int] = Field(default_factory=dict)
    """Alias name -> version, e.g. {"prod": 1, "canary": 2}."""
    fallback: FallbackPolicy = FallbackPolicy()
    """What answers when the primary version cannot."""
    feature_cache_ttl_s: float = Field(default=0.0, ge=0)
    """Cache feature rows in the router this long (0 = off). Bounded staleness
    traded for fewer store reads; keep it well under the views' TTLs."""
    cheap_tier: CheapTier | None = None
    """Where alias-routed requests go when they are low-value or the router is
    busy (requests pinned to a version are never moved)."""

    @model_validator(mode="after")
    def _aliases_point_at_versions(self) -> Self:
        for alias, version in self.aliases.items():
            if not re.fullmatch(_NAME, alias):
                raise ValueError(f"invalid alias name {alias!r}")
            if version not in self.versions:
                raise ValueError(f"alias {alias!r} points at unlisted version {version}")
        fb = self.fallback.version
        if fb is not None and fb not in self.versions:
            raise ValueError(f"fallback version {fb} is not listed")
        return self


class DataPolicy(_Frozen):
    """What the router does with this tenant's request data (docs/DESIGN.md Part 7)."""

    pii_fields: tuple[str, ...] = ()
    """Candidate entity/feature keys holding personal data (e.g. email, phone,
    card_number): replaced at entry by keyed deterministic per-tenant tokens,
    before features, logs, traces, metrics, Triton or any store see them."""
    capture_class: str | None = None
    """Retention class (settings ``capture.retention``) of this tenant's
    encrypted payload captures; None: never captured."""
    capture_ratio: float = Field(default=0.0, ge=0, le=1)
    """Fraction of answered requests captured (tokenized inputs + scores)."""


class TenantPolicy(_Frozen):
    models: tuple[str, ...] = ()
    """Models this tenant may call (any alias or listed version)."""
    scopes: tuple[str, ...] = ("predict",)
    """Granted scopes: "predict" for scoring, "admin" for the admin API."""
    aliases: dict[str, int] = Field(default_factory=dict)
    """Tenant-specific aliases, "<model>:<alias>" -> version. They override the
    model's shared aliases for this tenant only (pin "fraud:prod" to an older
    version) or add private ones (a fine-tuned "fraud:acme")."""
    isolation: Literal["shared", "dedicated"] = "shared"
    """shared: the default Triton pool under quota; dedicated: its own pool."""
    pool: str = "default"
    """Triton pool serving this tenant ("default" is the router's own Triton)."""
    max_in_flight: int = Field(default=256, ge=1)
    """Concurrent requests this tenant may have in the router; beyond it
    RESOURCE_EXHAUSTED, so one tenant's burst cannot starve the others."""
    max_priority: Priority = "standard"
    """Highest priority class this tenant may claim; higher claims are lowered."""
    regions: tuple[str, ...] = ()
    """Data residency: regions whose routers may serve this tenant and store its
    request data (``router.pipeline.residency``). Empty = any region."""

    @model_validator(mode="after")
    def _region_names(self) -> Self:
        for r in self.regions:
            if not re.fullmatch(_REGION, r):
                raise ValueError(f"invalid region name {r!r}")
        return self

    data: DataPolicy = DataPolicy()
    """PII fields and payload capture."""


class PoolSpec(_Frozen):
    grpc: str
    """Triton gRPC endpoint host:port (health, metadata, KServe pass-through)."""
    http: str | None = None
    """Triton HTTP endpoint host:port; when set, inference uses it (cheaper)."""


class RoutingTable(_Frozen):
    version: str = "0"
    """Label of this table revision, logged on every swap."""
    models: dict[str, ModelRoute]
    tenants: dict[str, TenantPolicy]
    pools: dict[str, PoolSpec] = Field(default_factory=dict)
    """Extra Triton pools for dedicated tenants. "default" is the router's
    configured Triton and cannot be redefined."""

    @model_validator(mode="after")
    def _tenants_reference_models(self) -> Self:
        for name in self.models:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"invalid model name {name!r}")
        for tenant, policy in self.tenants.items():
            # Tenant names key metrics, capture paths and the PII key derivation
            # (where a "/" could alias another tenant's purpose): checked whole.
            if not re.fullmatch(_NAME, tenant):
                raise ValueError(f"invalid tenant name {tenant!r}")
            unknown = set(policy.models) - set(self.models)
            if unknown:
                raise ValueError(f"tenant {tenant!r} references unknown models {sorted(unknown)}")
            if policy.pool != "default" and policy.pool not in self.pools:
                raise ValueError(f"tenant {tenant!r} uses unknown pool {policy.pool!r}")
            if policy.isolation == "dedicated" and policy.pool == "default":
                raise ValueError(f"dedicated tenant {tenant!r} needs its own pool")
            for ref, version in policy.aliases.items():
                m = _ALIAS_REF.fullmatch(ref)
                if not m or m.group(1) not in policy.models:
                    raise ValueError(f"tenant {tenant!r} alias {ref!r} names no granted model")
                if version not in self.models[m.group(1)].versions:
                    raise ValueError(f"tenant {tenant!r} alias {ref!r} -> unlisted version")
        if "default" in self.pools:
            raise ValueError("pool name 'default' is reserved")
        for name, route in self.models.items():
            ct = route.cheap_tier
            if ct is None:
                continue
            if ct.model == name or ct.model not in self.models:
                raise ValueError(f"model {name!r}: cheap tier must be another routed model")
            if ct.version not in self.models[ct.model].versions:
                raise ValueError(f"model {name!r}: cheap tier version {ct.version} is unlisted")
        return self

    @classmethod
    def from_yaml(cls, path: Path) -> RoutingTable:
        try:
            raw = yaml.safe_load(path.read_text())
            return cls.model_validate(raw)
        except (OSError, yaml.YAMLError, ValidationError) as e:
            raise ConfigError(f"invalid routing table {path}: {e}") from e


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed model reference: either an alias or a pinned version."""

    model: str
    alias: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: the resolved version and how it was reached."""

    model: str
    version: int
    alias: str | None
    pool: str = "default"


@functools.lru_cache(maxsize=4096)  # a few refs carry all traffic; bounded against junk
def parse_model_ref(alias: str | None, version: str | None) -> ModelRef:
    """Parse ``model:alias`` or ``model@version``; INVALID_ARGUMENT otherwise."""
    if alias:
        m = _ALIAS_REF.fullmatch(alias)
        if not m:
            raise InvalidArgument("model alias must look like '<model>:<alias>', e.g. 'fraud:prod'")
        return ModelRef(model=m.group(1), alias=m.group(2))
    if version:
        m = _VERSION_REF.fullmatch(version)
        if not m:
            raise InvalidArgument(
                "model version must look like '<model>@<version>', e.g. 'fraud@3'"
            )
        return ModelRef(model=m.group(1), version=int(m.group(2)))
    raise InvalidArgument("one of model alias or version is required")


def resolve(table: RoutingTable, policy: TenantPolicy, ref: ModelRef) -> Route:
    """Authorize the tenant's ``policy`` for ``ref`` and resolve it to a version.

    A model that exists but is not granted answers PERMISSION_DENIED; one that
    does not exist answers NOT_FOUND.
    """
    if "predict" not in policy.scopes:
        raise PermissionDenied("tenant may not call Predict")
    if ref.model not in policy.models:
        if ref.model in table.models:
            raise PermissionDenied(f"tenant may not use model '{ref.model}'")
        raise NotFound(f"unknown model '{ref.model}'")
    route = table.models[ref.model]
    if ref.alias is not None:
        version = policy.aliases.get(f"{ref.model}:{ref.alias}")
        if version is None:
            version = route.aliases.get(ref.alias)
        if version is None:
            raise NotFound(f"unknown alias '{ref.model}:{ref.alias}'")
        return Route(model=ref.model, version=version, alias=ref.alias, pool=policy.pool)
    assert ref.version is not None
    if ref.version not in route.versions:
        raise NotFound(f"unknown version '{ref.model}@{ref.version}'")
    return Route(model=ref.model, version=ref.version, alias=None, pool=policy.pool)
