"""Tenant configuration for the edge (``envoy/tenants.yaml``): validated whole, swapped whole.

Both the xDS control plane (token buckets, allowed identities) and the rate-limit
service (per-minute quotas) read this one file and poll it for changes, so an edit
reaches Envoy and the quota service without a restart. An invalid edit is logged
and the previous configuration stays in force (never a half-applied file).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

log = logging.getLogger(__name__)

TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# What a glob may contain: SPIFFE path characters plus `*` (one path segment).
_IDENTITY_CHARS = re.compile(r"^[A-Za-z0-9._*/:-]+$")
PRIORITIES = ("critical", "standard", "batch")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimit(_Strict):
    """Token bucket at Envoy: ``requests_per_second`` refill, ``burst`` capacity."""

    requests_per_second: Annotated[float, Field(gt=0, le=1_000_000)]
    burst: Annotated[int, Field(ge=1, le=10_000_000)]


class Tenant(_Strict):
    identities: tuple[str, ...] = ()
    """Allowed client-certificate URI SANs; ``*`` matches one path segment. Each must
    lie under ``spiffe://inferline/tenant/<this id>/svc/``."""
    jwt_subjects: tuple[str, ...] = ()
    """Allowed ``sub`` claims of JWTs carrying ``tenant: <this id>`` (globs); empty
    means this tenant may not use the JWT listener."""
    rate_limit: RateLimit
    quota_per_minute: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    """Cluster-wide requests per sliding minute (rate-limit service); 0 = unlimited.
    At most 2^32 - 1: Envoy's rate-limit API carries it as a uint32."""

    @field_validator("identities", "jwt_subjects")
    @classmethod
    def _globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for g in v:
            if not _IDENTITY_CHARS.fullmatch(g):
                raise ValueError(f"identity pattern {g!r} has characters outside [A-Za-z0-9._*/:-]")
        return v


class RateLimitServiceSettings(_Strict):
    timeout_ms: Annotated[int, Field(ge=1, le=5000)] = 50
    """Envoy's budget for one ShouldRateLimit call; past it the request is let through."""
    failure_mode_deny: bool = False
    """False = fail open when the service is down or slow (see docs/edge.md)."""


class EdgeConfig(_Strict):
    version: str = "1"
    """Free-form label, logged and shown in the control plane's status."""
    ratelimit_service: RateLimitServiceSettings = RateLimitServiceSettings()
    tenants: dict[str, Tenant]

    @model_validator(mode="after")
    def _check(self) -> EdgeConfig:
        for tid, t in self.tenants.items():
            if not TENANT_ID.fullmatch(tid):
                raise ValueError(f"tenant id {tid!r} must match {TENANT_ID.pattern}")
            prefix = f"spiffe://inferline/tenant/{tid}/svc/"
            for ident in t.identities:
                rest = ident.removeprefix(prefix)
                if rest == ident or not rest or "/" in rest:
                    raise ValueError(
                        f"tenant {tid}: identity {ident!r} must be {prefix}<name or glob>"
                    )
        return self


def glob_to_regex(glob: str) -> str:
    """RE2 regex (full match) for an identity glob: ``*`` = one path segment."""
    return "".join("[^/]+" if part == "*" else re.escape(part) for part in re.split(r"(\*)", glob))


def parse(text: str) -> EdgeConfig:
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("tenants file must be a mapping")
    return EdgeConfig.model_validate(data)


def load(path: Path) -> EdgeConfig:
    return parse(Path(path).read_text())


def file_digest(paths: list[Path]) -> str:
    """Content hash of a set of files (missing ones count as empty): the change signal.

    Content, not mtime: mtime granularity and editors that rewrite in place make
    mtimes unreliable for sub-second reloads."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode())
        try:
            h.update(p.read_bytes())
        except FileNotFoundError:
            h.update(b"\0missing")
    return h.hexdigest()


async def watch(
    paths: list[Path],
    on_change: Callable[[], object],
    *,
    interval_s: float = 0.2,
) -> None:
    """Poll ``paths`` every ``interval_s`` and call ``on_change`` after each change.

    Polling at 200 ms costs a few file reads per second and keeps the propagation
    budget (2 s from edit to Envoy) without an inotify dependency."""
    last = file_digest(paths)
    while True:
        await asyncio.sleep(interval_s)
        digest = file_digest(paths)
        if digest == last:
            continue
        last = digest
        try:
            result = on_change()
            if inspect.isawaitable(result):
                await result
        except (OSError, ValueError, ValidationError, yaml.YAMLError) as e:
            log.error("reload failed, keeping the previous configuration: %s", e)
