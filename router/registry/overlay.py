"""Registry state -> routing table: the YAML table owns tenancy and policy, the
registry owns versions and aliases. The result is validated whole like any
table and published in one snapshot swap, so a request never sees half a flip.
"""

from __future__ import annotations

from typing import Any

from router.pipeline.routing import RoutingTable
from router.registry.models import RegistryState

LKG_ALIAS = "lkg"


def overlay(table: RoutingTable, state: RegistryState) -> RoutingTable:
    """``table`` with the registry's versions, aliases and tenant pins applied.

    Registered versions join a model's servable versions; registry aliases
    override the file's; the ``lkg`` alias becomes the fallback ladder's
    last-known-good version. Models the file does not route are ignored: a
    model is served only once the table grants it to some tenant.
    """
    if state.revision == 0:
        return table
    raw: dict[str, Any] = table.model_dump(mode="python")
    models: dict[str, Any] = raw["models"]
    for name, route in models.items():
        route["versions"] = sorted(set(route["versions"]) | set(state.versions.get(name, ())))
    for key, version in sorted(state.aliases.items(), key=lambda kv: str(kv[0])):
        route = models.get(key.model)
        if route is None:
            continue
        if not key.tenant:
            route["aliases"][key.alias] = version
            if key.alias == LKG_ALIAS:
                route["fallback"]["version"] = version
            continue
        tenant = raw["tenants"].get(key.tenant)
        if tenant is not None and key.model in tenant["models"]:
            tenant["aliases"][f"{key.model}:{key.alias}"] = version
    raw["version"] = f"{table.version}+r{state.revision}"
    return RoutingTable.model_validate(raw)
