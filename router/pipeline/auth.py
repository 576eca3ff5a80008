"""Caller identity: who is calling, as established by the transport.

The transport extracts the tenant id from request metadata (set by the
authenticating edge); this stage checks it names a known tenant and returns
its policy. Authorization per model happens in routing (``resolve``).
"""

from __future__ import annotations

from dataclasses import dataclass

from router.errors import Unauthenticated
from router.pipeline.residency import check_region
from router.pipeline.routing import RoutingTable, TenantPolicy


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    policy: TenantPolicy


def authenticate(table: RoutingTable, tenant: str | None, region: str | None = None) -> Principal:
    """The caller's policy; with ``region`` (this deployment's), its residency is checked."""
    if not tenant:
        raise Unauthenticated("missing caller identity")
    policy = table.tenants.get(tenant)
    if policy is None:
        raise Unauthenticated("unknown tenant")
    check_region(policy, region)
    return Principal(tenant=tenant, policy=policy)
