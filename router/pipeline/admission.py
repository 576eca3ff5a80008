"""Admission control: bounded in-flight work, per tenant and by priority class.

Shedding early and cheaply beats timing out late: when the router is full, a
request is refused in microseconds with RESOURCE_EXHAUSTED and a retry hint,
instead of queueing behind work that will miss its deadline anyway. Lower
priority classes may only use part of the capacity, so under overload "batch"
is shed first, then "standard"; "critical" gets the last slots. Each tenant
also has its own in-flight cap so one tenant's burst cannot take every slot.

Counters are plain ints: the router runs one event loop per process, so no
locking is needed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from router.errors import ResourceExhausted
from router.pipeline.routing import PRIORITY_RANK

# Share of the global in-flight capacity each class may fill.
CLASS_SHARE: dict[str, float] = {"critical": 1.0, "standard": 0.8, "batch": 0.5}


def effective_priority(requested: str | None, allowed_max: str) -> str:
    """The caller's class, lowered to what its tenant may claim; unknown -> standard."""
    p = requested if requested in PRIORITY_RANK else "standard"
    if PRIORITY_RANK[p] > PRIORITY_RANK[allowed_max]:
        return allowed_max
    return p


@dataclass(slots=True)
class Ticket:
    tenant: str
    released: bool = False


class Admission:
    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        # At least one slot per class: a share of a tiny capacity must not
        # round down to a class that is always shed.
        self._limits = {p: max(1, int(max_in_flight * s)) for p, s in CLASS_SHARE.items()}
        self.in_flight = 0
        self._per_tenant: defaultdict[str, int] = defaultdict(int)
        self.shed: defaultdict[tuple[str, str], int] = defaultdict(int)
        """(reason, priority) -> count of refused requests."""

    def admit(self, tenant: str, priority: str, tenant_cap: int) -> Ticket:
        if self.in_flight >= self._limits[priority]:
            self.shed[("overload", priority)] += 1
            raise ResourceExhausted(
                "server overloaded, retry later",
                retry_after_s=1.0,
                quota_subject=f"priority:{priority}",
            )
        if self._per_tenant[tenant] >= tenant_cap:
            self.shed[("tenant_concurrency", priority)] += 1
            raise ResourceExhausted(
                "tenant concurrency limit reached",
                retry_after_s=0.5,
                quota_subject=f"tenant:{tenant}:in_flight",
            )
        self.in_flight += 1
        self._per_tenant[tenant] += 1
        return Ticket(tenant)

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        self.in_flight -= 1
        self._per_tenant[ticket.tenant] -= 1
        if self._per_tenant[ticket.tenant] == 0:
            del self._per_tenant[ticket.tenant]

    def tenant_in_flight(self, tenant: str) -> int:
        return self._per_tenant.get(tenant, 0)
