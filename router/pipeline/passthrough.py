"""KServe v2 (Open Inference Protocol) pass-through with inferline's policies.

A tenant addresses models by their routed name; ``model_version`` may be a
version number, an alias ("prod", "canary", or a tenant alias) or empty
(meaning "prod"). Authorization, admission and routing are exactly Predict's,
so a tenant sees only its own models; tensors are forwarded untouched.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from router.backends import kserve
from router.backends.triton import TritonModelServer
from router.errors import DeadlineExceeded, NotFound, Unavailable
from router.logging import bind_request
from router.pipeline.admission import Admission, effective_priority
from router.pipeline.auth import authenticate
from router.pipeline.routing import ModelRef, parse_model_ref, resolve
from router.pipeline.snapshot import Snapshot

_DIGITS = re.compile(r"^[0-9]{1,9}$")


def _ref(model: str, version: str) -> ModelRef:
    if not version:
        return parse_model_ref(f"{model}:prod", None)
    if _DIGITS.fullmatch(version):
        return parse_model_ref(None, f"{model}@{version}")
    return parse_model_ref(f"{model}:{version}", None)


class Passthrough:
    def __init__(
        self,
        *,
        snapshot: Callable[[], Snapshot],
        servers: Callable[[str], TritonModelServer],
        admission: Admission,
        region: str | None = None,
    ) -> None:
        self._region = region  # this deployment's region: residency is checked at auth
        self._snapshot = snapshot
        self._servers = servers
        self._admission = admission

    async def server_call(self, method: str) -> bytes:
        """ServerLive / ServerReady: the router's own view (Triton reachable)."""
        return kserve.server_response(method, True)

    async def model_call(
        self,
        method: str,
        raw: bytes,
        tenant: str | None,
        priority: str | None,
        deadline: float,
    ) -> bytes:
        snap = self._snapshot()
        principal = authenticate(snap.table, tenant, self._region)
        call = kserve.parse(method, raw)
        route = resolve(snap.table, principal.policy, _ref(call.model, call.version))
        bind_request(model=route.model, version=route.version)
        if (route.model, route.version) not in snap.catalog:
            raise NotFound(f"version '{route.model}@{route.version}' is not loaded")
        forwarder = self._servers(route.pool).forwarder
        if forwarder is None:
            raise Unavailable("model server unavailable")
        body = kserve.rewrite(call, route.version)
        ticket = None
        if method == "ModelInfer":
            prio = effective_priority(priority, principal.policy.max_priority)
            ticket = self._admission.admit(principal.tenant, prio, principal.policy.max_in_flight)
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("deadline exceeded")
            return await forwarder.forward(method, body, remaining)
        finally:
            if ticket is not None:
                self._admission.release(ticket)
