"""inferline.v1.AdminService over the registry service.

Identity comes from the same place as Predict's (``caller_tenant``: the edge's
forwarded identity or, in development, a header); the tenant must hold the
``admin`` scope and, for a model-scoped call, be granted that model. A refusal
is reported to the audit sink like any other action.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
from pydantic import ValidationError

from inferline.v1 import admin_pb2, admin_pb2_grpc
from router.errors import InvalidArgument, PermissionDenied
from router.pipeline.arms import ArmStats
from router.pipeline.auth import Principal, authenticate
from router.pipeline.experiment import Experiment
from router.pipeline.snapshot import Snapshot
from router.registry.audit import AuditEvent
from router.registry.canary import CONTROL, CanaryController
from router.registry.service import RegistryService
from router.settings import AuthSettings
from router.transport.identity import caller_tenant, peer_uris

ADMIN_SCOPE = "admin"
SERVICE_NAME: str = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name


def _problems(e: ValidationError) -> str:
    """``field: problem; ...``: what the caller must change, without pydantic's
    links, type codes or an echo of the input."""
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'experiment'}: {err['msg']}"
        for err in e.errors(include_url=False, include_input=False)
    )


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        service: RegistryService,
        arms: ArmStats,
        controller: CanaryController,
        *,
        snapshot: Callable[[], Snapshot],
        auth: AuthSettings,
    ) -> None:
        self._service = service
        self._arms = arms
        self._controller = controller
        self._snapshot = snapshot
        self._auth = auth

    def _actor(self, context: grpc.aio.ServicerContext, action: str, model: str | None) -> str:
        """The calling tenant, if it may administer ``model``."""
        return self._principal(context, action, model).tenant

    def _principal(
        self, context: grpc.aio.ServicerContext, action: str, model: str | None
    ) -> Principal:
        """The calling tenant's principal, if it holds the admin scope and (for a
        model-scoped call) that model's grant. None: a call across models, which
        must then only reach the caller's granted models."""
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        tenant = caller_tenant(self._auth, metadata, lambda: peer_uris(context))
        principal = authenticate(self._snapshot().table, tenant)
        if ADMIN_SCOPE not in principal.policy.scopes:
            self._deny(principal.tenant, action, model or "", "tenant lacks the admin scope")
        if model is not None and model not in principal.policy.models:
            self._deny(principal.tenant, action, model, "model not granted to this tenant")
        return principal

    def _deny(self, tenant: str, action: str, target: str, why: str) -> None:
        self._service.audit.record(AuditEvent(tenant, action, target, "denied", {"why": why}))
        raise PermissionDenied(f"{why}")

    @staticmethod
    def _model(name: str) -> str:
        if not name:
            raise InvalidArgument("model is required")
        return name

    async def RegisterVersion(
        self, request: admin_pb2.RegisterVersionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RegisterVersionResponse:
        model = self._model(request.model)
        actor = self._actor(context, "register", model)
        rec = await self._service.register(model, int(request.version), actor)
        metrics = {
            k: float(v) for k, v in rec.offline_metrics.items() if isinstance(v, int | float)
        }
        return admin_pb2.RegisterVersionResponse(
            model=rec.model,
            version=rec.version,
            artifact_sha256=rec.artifact_sha256,
            schema_hash=rec.schema_hash,
            offline_metrics=metrics,
        )

    async def SetAlias(
        self, request: admin_pb2.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReleaseResponse:
        model = self._model(request.model)
        actor = self._actor(context, "alias", model)
        if not request.alias:
            raise InvalidArgument("alias is required")
        rev = await self._service.set_alias(
            model, request.alias, int(request.version), actor, request.tenant
        )
        return admin_pb2.ReleaseResponse(revision=rev)

    async def StartCanary(
        self, request: admin_pb2.StartCanaryRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReleaseResponse:
        model = self._model(request.model)
        actor = self._actor(context, "canary", model)
        rev = await self._service.start_canary(model, int(request.version), request.weight, actor)
        return admin_pb2.ReleaseResponse(revision=rev)

    async def SetExperiment(
        self, request: admin_pb2.SetExperimentRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReleaseResponse:
        model = self._model(request.model)
        actor = self._actor(context, "experiment", model)
        try:
            exp = Experiment.model_validate(
                {
                    "model": model,
                    "name": request.name,
                    "kind": "ab",
                    "alias": request.alias or "prod",
                    "salt": request.salt,
                    "arms": [
                        {"name": a.name, "version": a.version, "weight": a.weight}
                        for a in request.arms
                    ],
                    "unit": request.unit or "entity",
                    "unit_key": request.unit_key or None,
                }
            )
        except ValidationError as e:
            raise InvalidArgument(f"invalid experiment: {_problems(e)}") from e
        return admin_pb2.ReleaseResponse(revision=await self._service.set_experiment(exp, actor))

    async def KillExperiment(
        self, request: admin_pb2.ModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReleaseResponse:
        model = self._model(request.model)
        actor = self._actor(context, "experiment", model)
        return admin_pb2.ReleaseResponse(revision=await self._service.kill_experiment(model, actor))

    async def SetShadow(
        self, request: admin_pb2.SetShadowRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReleaseResponse:
        model = self._model(request.model)
        actor = self._actor(context, "shadow", model)
        rev = await self._service.set_shadow(model, int(request.version), request.fraction, actor)
        return admin_pb2.ReleaseResponse(revision=rev)

    async def Promote(
        self, request: admin_pb2.ModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReleaseResponse:
        model = self._model(request.model)
        actor = self._actor(context, "promote", model)
        rev = await self._service.promote(model, actor, request.reason or "manual")
        return admin_pb2.ReleaseResponse(revision=rev)

    async def Rollback(
        self, request: admin_pb2.ModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReleaseResponse:
        model = self._model(request.model)
        actor = self._actor(context, "rollback", model)
        rev = await self._service.rollback(model, actor, request.reason or "manual")
        return admin_pb2.ReleaseResponse(revision=rev)

    async def GetStatus(
        self, request: admin_pb2.ModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.StatusResponse:
        principal = self._principal(context, "status", request.model or None)
        status = self._service.status(request.model or None)
        granted = principal.policy.models
        status["models"] = {m: d for m, d in status["models"].items() if m in granted}
        for model, doc in status["models"].items():
            doc["arms"] = self._arm_status(model)
            verdict = self._controller.last.get(model)
            if verdict is not None:
                doc["canary_verdict"] = {
                    "action": verdict.action,
                    "reasons": list(verdict.reasons),
                    "figures": verdict.figures,
                }
        doc_json = json.dumps(status, sort_keys=True, default=str)
        return admin_pb2.StatusResponse(revision=status["revision"], status_json=doc_json)

    def _arm_status(self, model: str) -> dict[str, Any]:
        out = {}
        for (m, arm), w in self._arms.items():
            if m != model:
                continue
            scores = w.scores()
            out[arm] = {
                "requests": w.count,
                "error_rate": w.error_rate(),
                "p99_ms": w.latency_quantile(0.99) * 1e3,
                "score_mean": float(scores.mean()) if len(scores) else None,
                "outcomes": w.outcomes,
                "kpi": w.kpi(),
                "calibration_gap": w.calibration_gap(),
            }
        return dict(sorted(out.items(), key=lambda kv: kv[0] != CONTROL))

    async def IngestOutcomes(
        self, request: admin_pb2.IngestOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.IngestOutcomesResponse:
        principal = self._principal(context, "outcomes", None)
        actor = principal.tenant
        # Only requests served for the caller's granted models: another model's
        # arms (and the canary verdict built on them) are not this caller's to move.
        joined, unknown = self._arms.join(
            ((o.request_id, o.value) for o in request.outcomes), principal.policy.models
        )
        self._service.store.record_outcomes(joined)
        self._service.audit.record(
            AuditEvent(actor, "outcomes", "", "ok", {"joined": len(joined), "unknown": unknown})
        )
        return admin_pb2.IngestOutcomesResponse(joined=len(joined), unknown=unknown)


class _Capture:
    """Collects the handler the generated ``add_..._to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
        return None


def admin_handler(
    service: RegistryService,
    arms: ArmStats,
    controller: CanaryController,
    *,
    snapshot: Callable[[], Snapshot],
    auth: AuthSettings,
) -> grpc.GenericRpcHandler:
    """The AdminService as a generic handler for ``GrpcServer``'s extra handlers."""
    capture = _Capture()
    servicer = AdminServicer(service, arms, controller, snapshot=snapshot, auth=auth)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, capture)
    (handler,) = capture.handlers
    return handler
