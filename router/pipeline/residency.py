"""Data residency: which regions may serve a tenant and hold its request data.

Why here and not at the edge: the router is where a request's data is read,
scored and (by the capture and audit sinks) persisted, so the router of each
region refuses tenants its region may not serve, and every sink that writes
request data asks ``Residency.destination`` for where to write. A cross-region
failover therefore serves a tenant only in regions its policy lists.

Policy lives in the routing table (``TenantPolicy.regions``), swapped whole with
it: an empty list means "any region" (an unpinned tenant). The refusal is
FAILED_PRECONDITION, not PERMISSION_DENIED: the caller is who it says and may use
the model; this deployment is the wrong place. A failover client stops trying
this region and moves to the next endpoint in its list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from router.errors import FailedPrecondition
from router.pipeline.routing import RoutingTable, TenantPolicy


class ResidencyDenied(FailedPrecondition):
    """The tenant's residency policy does not allow this region."""


def region_allowed(policy: TenantPolicy, region: str) -> bool:
    return not policy.regions or region in policy.regions


def check_region(policy: TenantPolicy, region: str | None) -> None:
    """Raise ResidencyDenied if ``region`` (this deployment's) may not serve ``policy``."""
    if region is not None and not region_allowed(policy, region):
        raise ResidencyDenied(
            f"region '{region}' may not serve this tenant (data residency policy); "
            "use an endpoint in one of the tenant's allowed regions"
        )


class Residency:
    """Residency decisions for one deployment (its ``region``) against the live table.

    Sinks that persist request data (payload captures, audit records) call
    ``destination(tenant, sink)`` for their directory: it is under this region's
    data root, and raises if the tenant's data may not be stored here.
    """

    def __init__(self, region: str, table: Callable[[], RoutingTable], data_root: Path) -> None:
        self.region = region
        self._table = table
        self.data_root = Path(data_root)

    def allowed(self, tenant: str, region: str | None = None) -> bool:
        """May ``region`` (default: this one) serve and store ``tenant``? Unknown: no."""
        policy = self._table().tenants.get(tenant)
        return policy is not None and region_allowed(policy, region or self.region)

    def check(self, tenant: str) -> None:
        policy = self._table().tenants.get(tenant)
        if policy is None:
            raise ResidencyDenied("unknown tenant has no residency policy")
        check_region(policy, self.region)

    def destination(self, tenant: str, sink: str) -> Path:
        """``<data_root>/<region>/<sink>`` for this tenant's records (checked first)."""
        self.check(tenant)
        return self.data_root / self.region / sink

    def replica_regions(self, tenant: str, candidates: Iterable[str]) -> list[str]:
        """The subset of ``candidates`` a copy of this tenant's data may go to
        (backups, replication): never outside the allowed regions."""
        return [r for r in candidates if self.allowed(tenant, r)]
