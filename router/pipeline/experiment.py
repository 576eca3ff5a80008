"""Online experiments: deterministic arm assignment for canaries and A/B tests.

An experiment splits the traffic that resolves through one alias of a model
(``fraud:prod``) across arms, each a model version with a weight. The arm is a
pure function of (experiment salt, unit id): the same account always sees the
same arm for the life of the experiment, independent of router process or
replica, and a new salt reshuffles units. No state, no coordination.

Tenants with their own pin for the alias are never enrolled (a pin is a
contract), and a disabled experiment (the kill switch) sends everything back to
the alias's own version.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.pipeline.types import CandidateIn, Scalar

_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,62}$")
_SCALE = float(2**64)


class _Frozen(BaseModel):
    # No NaN or infinity in any weight, fraction, score or TTL: e.g. an infinite
    # arm weight would silently send every unit to the other arms.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Arm(_Frozen):
    name: str
    """Arm label recorded in responses, logs and metrics ("control", "canary")."""
    version: int = Field(ge=1)
    weight: float = Field(ge=0)
    """Relative share of units (weights need not sum to 1)."""


class Experiment(_Frozen):
    model: str
    name: str
    kind: Literal["canary", "ab"] = "ab"
    alias: str = "prod"
    """Requests resolving through ``<model>:<alias>`` are split."""
    salt: str = Field(min_length=1)
    arms: tuple[Arm, ...] = Field(min_length=1)
    enabled: bool = True
    """False = kill switch: the alias's own version answers everything."""
    unit: Literal["entity", "request"] = "entity"
    """Assignment unit: an entity (sticky per account or user), or the request
    id (per request: no stickiness)."""
    unit_key: str | None = None
    """With ``unit="entity"``: the entity key to assign by (``user_id`` for a
    ranker whose candidates also carry ``item_id``: the user, not the user and
    whichever item came first). None: the keys every candidate shares."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        for n in (self.name, self.alias, *names):
            if not _NAME.fullmatch(n):
                raise ValueError(f"invalid name {n!r}")
        if self.unit_key is not None and not _NAME.fullmatch(self.unit_key):
            raise ValueError(f"invalid entity key {self.unit_key!r}")
        if sum(a.weight for a in self.arms) <= 0:
            raise ValueError("arm weights must not all be zero")
        return self

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)


class ShadowSpec(_Frozen):
    """Mirror ``fraction`` of a model's alias-routed traffic to ``version``."""

    model: str
    version: int = Field(ge=1)
    fraction: float = Field(gt=0, le=1)
    alias: str = "prod"


def bucket(salt: str, unit: str) -> float:
    """Uniform in [0, 1): 8 bytes of blake2b over salt NUL unit."""
    digest = hashlib.blake2b(f"{salt}\x00{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def assign(experiment: Experiment, unit: str) -> Arm:
    """The arm ``unit`` belongs to (deterministic in salt and unit)."""
    u = bucket(experiment.salt, unit) * sum(a.weight for a in experiment.arms)
    acc = 0.0
    for arm in experiment.arms:
        acc += arm.weight
        if u < acc and arm.weight > 0:
            return arm
    return next(a for a in reversed(experiment.arms) if a.weight > 0)


def _key(value: Scalar) -> str:
    return str(int(value)) if isinstance(value, bool | int) else str(value)


def unit_id(experiment: Experiment, candidates: tuple[CandidateIn, ...], request_id: str) -> str:
    """The unit a request is assigned by. With ``unit="entity"``: the
    ``unit_key`` entity of the first candidate, or else the entity keys (sorted
    by name) whose value every candidate shares, so a ranker request is
    assigned by its user, never by its first item; when there is none, the
    first candidate's keys. Without entities, or with ``unit="request"``: the
    request id."""
    if experiment.unit != "entity" or not candidates:
        return request_id
    first: Mapping[str, Scalar] = candidates[0].entities
    if experiment.unit_key is not None:
        if experiment.unit_key in first:
            return f"{experiment.unit_key}={_key(first[experiment.unit_key])}"
        return request_id
    shared = [
        k for k in sorted(first) if all(c.entities.get(k) == first[k] for c in candidates[1:])
    ] or sorted(first)
    if not shared:
        return request_id
    return "|".join(f"{k}={_key(first[k])}" for k in shared)
