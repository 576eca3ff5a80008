"""The registry service: register immutable versions, move aliases, run
canaries, experiments and shadows. Plain async Python over three ports:

- ``RegistryStore`` (SQLite by default) holds versions and release state;
- ``ModelServerControl`` (Triton's repository API) loads versions and runs warmup;
- ``FeatureViews`` (the Feast registry) gives each view's feature dtypes.

Registration order: metadata contract -> Triton config (its own schema) ->
artifact checksum -> feature schema vs the Feast views -> load in Triton and
warm up -> only then insert the version. Any failure leaves no record and, if
the version had been loaded for warmup, unloads it again.

Every change is one store transaction, then ``on_change`` rebuilds and swaps
the router's routing snapshot; other routers see the revision move and rebuild
on their next poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog

from router.errors import InferlineError
from router.pipeline.experiment import Arm, Experiment, ShadowSpec
from router.registry import validation
from router.registry.audit import AuditEvent, AuditSink, NoopAuditSink
from router.registry.errors import RegistrationError
from router.registry.models import AliasKey, ReleaseChange, ServingConfig, VersionRecord
from router.registry.overlay import LKG_ALIAS
from router.registry.store import RegistryStore

log = structlog.get_logger("router.registry")

PROD, CANARY = "prod", "canary"


class ModelServerControl(Protocol):
    async def load_versions(self, model: str, versions: Iterable[int]) -> None: ...

    async def loaded_versions(self, model: str) -> frozenset[int]: ...

    async def warmup(
        self, model: str, version: int, input_name: str, output_name: str, rows: np.ndarray
    ) -> np.ndarray: ...


class FeatureViews(Protocol):
    def view_schemas(self) -> validation.ViewSchemas: ...


ConfigReader = Callable[[Path], tuple[ServingConfig, bytes]]


class RegistryService:
    def __init__(
        self,
        *,
        store: RegistryStore,
        repository: Path,
        control: ModelServerControl,
        views: FeatureViews,
        read_config: ConfigReader,
        audit: AuditSink | None = None,
        on_change: Callable[[], Awaitable[None]] | None = None,
        warmup_rows: int = 8,
    ) -> None:
        self.store = store
        self.repository = repository
        self._control = control
        self._views = views
        self._read_config = read_config
        self.audit: AuditSink = audit or NoopAuditSink()
        self._on_change = on_change
        self._warmup_rows = warmup_rows
        # One registration per model at a time: each computes the next loaded
        # version set from the current one.
        self._model_locks: dict[str, asyncio.Lock] = {}

    # -- audit plumbing ------------------------------------------------------

    async def _audited(
        self, actor: str, action: str, target: str, detail: Mapping[str, Any], op: Any
    ) -> Any:
        try:
            result = await op()
        except InferlineError as e:
            self.audit.record(
                AuditEvent(actor, action, target, "failed", {**detail, "error": e.public_message})
            )
            log.warning("release.refused", action=action, target=target, error=e.public_message)
            raise
        except Exception:
            # An unexpected failure is recorded too (generically: no internals in
            # the trail), then the interceptor answers INTERNAL.
            self.audit.record(
                AuditEvent(actor, action, target, "failed", {**detail, "error": "internal error"})
            )
            raise
        self.audit.record(AuditEvent(actor, action, target, "ok", dict(detail)))
        log.info("release.done", action=action, target=target, actor=actor, **detail)
        return result

    async def _commit(self, change: ReleaseChange) -> int:
        revision = self.store.commit(change)
        if self._on_change is not None:
            await self._on_change()
        return revision

    # -- registration --------------------------------------------------------

    async def register(self, model: str, version: int, actor: str) -> VersionRecord:
        """Validate, load, warm up and record ``model@version`` (idempotent for
        identical content; a different artifact under an existing version fails)."""

        async def op() -> VersionRecord:
            async with (
                self._model_locks.setdefault(model, asyncio.Lock()),
                self.store.model_lock(model),
            ):
                return await self._register(model, version, actor)

        result: VersionRecord = await self._audited(actor, "register", f"{model}@{version}", {}, op)
        return result

    async def _register(self, model: str, version: int, actor: str) -> VersionRecord:
        t0 = time.monotonic()
        files = validation.read_version(self.repository, model, version)
        config, config_raw = self._read_config(self.repository / model)
        validation.check_config(config, files)
        artifact_sha = validation.check_artifact(files)
        validation.check_feature_views(files, self._views.view_schemas())
        training = files.data["training"]
        record = VersionRecord(
            model=model,
            version=version,
            artifact_file=files.data["artifact"]["file"],
            artifact_sha256=artifact_sha,
            config_sha256=validation.sha256(config_raw),
            metadata_sha256=validation.sha256(files.raw),
            schema_hash=files.meta.schema_hash,
            schema_signature=validation.signature(files),
            training_data_sha256=str(training.get("data_sha256", "")),
            offline_metrics=dict(training.get("metrics", {})),
            provenance={
                k: training.get(k) for k in ("code_revision", "created_at", "seed", "rows")
            },
            registered_by=actor,
            registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
            drift_reference=files.data.get("drift_reference"),
            dq_profile=validation.dq_profile(files),
        )
        existing = self.store.get_version(model, version)
        if existing is not None:
            if not existing.same_artifact(record):
                raise RegistrationError(
                    "version_immutable",
                    f"{model}@{version} is registered with artifact "
                    f"{existing.artifact_sha256[:12]}...; register the new one as a new version",
                )
            return existing
        loaded = await self._control.loaded_versions(model)
        await self._control.load_versions(model, loaded | {version})
        try:
            rows = np.asarray(validation.warmup_rows(files, self._warmup_rows), dtype=np.float32)
            await self._control.warmup(
                model, version, files.meta.tensors.input, files.meta.tensors.output, rows
            )
        except BaseException:  # refused, or the caller gone: leave nothing loaded
            await asyncio.shield(self._control.load_versions(model, loaded - {version}))
            raise
        stored = self.store.insert_version(record)
        if not stored.same_artifact(record):  # lost a race with another registrar
            raise RegistrationError(
                "version_immutable", f"{model}@{version} was registered meanwhile"
            )
        log.info(
            "registry.registered",
            model=model,
            version=version,
            ms=round((time.monotonic() - t0) * 1000, 1),
        )
        return stored

    async def ensure_loaded(self, model: str) -> None:
        """Load every registered version of ``model`` Triton does not have (router
        start in explicit mode): aliases may only flip onto warm versions."""
        async with self.store.model_lock(model):
            registered = {r.version for r in self.store.list_versions(model)}
            loaded = await self._control.loaded_versions(model)
            if registered - loaded:
                await self._control.load_versions(model, loaded | registered)

    # -- aliases, rollback, promote -------------------------------------------

    def _require(self, model: str, version: int) -> None:
        if self.store.get_version(model, version) is None:
            raise RegistrationError("alias_target", f"{model}@{version} is not registered")

    async def set_alias(
        self, model: str, alias: str, version: int, actor: str, tenant: str = ""
    ) -> int:
        """Point ``model:alias`` (or a tenant's pin) at a registered version.
        Moving ``prod`` keeps the previous prod as ``lkg`` in the same transaction."""

        async def op() -> int:
            validation.check_name("alias", alias)
            if tenant:
                validation.check_name("tenant", tenant)
            self._require(model, version)
            key = AliasKey(model, alias, tenant)
            changes = {key: version}
            state = self.store.state()
            old = state.aliases.get(key)
            if alias == PROD and not tenant and old is not None and old != version:
                changes[AliasKey(model, LKG_ALIAS)] = old
            return await self._commit(
                ReleaseChange(
                    actor,
                    "alias",
                    set_aliases=changes,
                    detail={"model": model, "alias": str(key), "version": version, "previous": old},
                    based_on=state.revision,
                )
            )

        detail = {"alias": alias, "tenant": tenant, "version": version}
        result: int = await self._audited(actor, "alias", f"{model}:{alias}", detail, op)
        return result

    async def rollback(self, model: str, actor: str, reason: str = "manual") -> int:
        """Back to the last-known-good: a running canary ends (prod never left
        the LKG); otherwise ``prod`` flips to ``lkg``. One transaction, no load."""

        async def op() -> int:
            state = self.store.state()
            exp = state.experiments.get(model)
            if exp is not None and exp.kind == "canary":
                return await self._commit(
                    ReleaseChange(
                        actor,
                        "rollback",
                        drop_experiments=(model,),
                        drop_aliases=(AliasKey(model, CANARY),),
                        detail={"model": model, "ended": exp.name, "reason": reason},
                        based_on=state.revision,
                    )
                )
            aliases = {k: v for k, v in state.aliases.items() if k.model == model}
            lkg = aliases.get(AliasKey(model, LKG_ALIAS))
            prod = aliases.get(AliasKey(model, PROD))
            if lkg is None or lkg == prod:
                raise RegistrationError(
                    "release_conflict", f"{model} has no last-known-good to return to"
                )
            return await self._commit(
                ReleaseChange(
                    actor,
                    "rollback",
                    set_aliases={AliasKey(model, PROD): lkg},
                    detail={"model": model, "from": prod, "to": lkg, "reason": reason},
                    based_on=state.revision,
                )
            )

        result: int = await self._audited(actor, "rollback", model, {"reason": reason}, op)
        return result

    async def promote(self, model: str, actor: str, reason: str = "manual") -> int:
        """The canary's version becomes ``prod``; the old prod becomes ``lkg``
        and stays loaded; the canary experiment ends. One transaction."""

        async def op() -> int:
            state = self.store.state()
            exp = state.experiments.get(model)
            target = state.aliases.get(AliasKey(model, CANARY))
            if target is None:
                raise RegistrationError("release_conflict", f"{model} has no canary to promote")
            prod = state.aliases.get(AliasKey(model, PROD))
            changes = {AliasKey(model, PROD): target}
            if prod is not None and prod != target:
                changes[AliasKey(model, LKG_ALIAS)] = prod
            return await self._commit(
                ReleaseChange(
                    actor,
                    "promote",
                    set_aliases=changes,
                    drop_aliases=(AliasKey(model, CANARY),),
                    drop_experiments=(model,) if exp is not None else (),
                    detail={"model": model, "from": prod, "to": target, "reason": reason},
                    based_on=state.revision,
                )
            )

        result: int = await self._audited(actor, "promote", model, {"reason": reason}, op)
        return result

    # -- canary, experiments, shadow -------------------------------------------

    async def start_canary(self, model: str, version: int, weight: float, actor: str) -> int:
        """Send ``weight`` of ``model:prod`` units to ``version`` (arm "canary")
        and the rest to prod (arm "control")."""

        async def op() -> int:
            if not 0 < weight < 1:
                raise RegistrationError("invalid_argument", "canary weight must be in (0, 1)")
            self._require(model, version)
            state = self.store.state()
            prod = state.aliases.get(AliasKey(model, PROD))
            if prod is None:
                raise RegistrationError(
                    "release_conflict", f"{model}:prod is not set in the registry"
                )
            if prod == version:
                raise RegistrationError("release_conflict", f"{model}@{version} is already prod")
            running = state.experiments.get(model)
            if running is not None and running.enabled:  # a killed one may be replaced
                raise RegistrationError("release_conflict", f"{model} already runs an experiment")
            exp = Experiment(
                model=model,
                name=f"canary-v{version}",
                kind="canary",
                salt=f"{model}:canary:{version}:{state.revision}",
                arms=(
                    Arm(name="control", version=prod, weight=1 - weight),
                    Arm(name="canary", version=version, weight=weight),
                ),
            )
            return await self._commit(
                ReleaseChange(
                    actor,
                    "canary",
                    set_aliases={AliasKey(model, CANARY): version},
                    set_experiments=(exp,),
                    detail={"model": model, "version": version, "weight": weight},
                    based_on=state.revision,
                )
            )

        detail = {"version": version, "weight": weight}
        result: int = await self._audited(actor, "canary", model, detail, op)
        return result

    async def set_canary_weight(self, model: str, weight: float, actor: str) -> int:
        """Re-weight a running canary, keeping its salt: units only ever move
        from control to canary as the weight grows (cumulative assignment)."""

        async def op() -> int:
            if not 0 < weight < 1:
                raise RegistrationError("invalid_argument", "canary weight must be in (0, 1)")
            state = self.store.state()
            exp = state.experiments.get(model)
            if exp is None or exp.kind != "canary" or not exp.enabled:
                raise RegistrationError("release_conflict", f"{model} runs no canary")
            arms = tuple(
                a.model_copy(update={"weight": weight if a.name == CANARY else 1 - weight})
                for a in exp.arms
            )
            return await self._commit(
                ReleaseChange(
                    actor,
                    "canary_weight",
                    set_experiments=(exp.model_copy(update={"arms": arms}),),
                    detail={"model": model, "weight": weight},
                    based_on=state.revision,
                )
            )

        result: int = await self._audited(actor, "canary_weight", model, {"weight": weight}, op)
        return result

    async def set_experiment(self, experiment: Experiment, actor: str) -> int:
        """Start or replace an A/B experiment (or flip its kill switch)."""

        async def op() -> int:
            for arm in experiment.arms:
                self._require(experiment.model, arm.version)
            return await self._commit(
                ReleaseChange(
                    actor,
                    "experiment",
                    set_experiments=(experiment,),
                    detail={
                        "model": experiment.model,
                        "name": experiment.name,
                        "enabled": experiment.enabled,
                    },
                )
            )

        detail = {"name": experiment.name, "enabled": experiment.enabled}
        result: int = await self._audited(actor, "experiment", experiment.model, detail, op)
        return result

    async def kill_experiment(self, model: str, actor: str) -> int:
        """The kill switch: the experiment stays recorded but routes nothing."""
        exp = self.store.state().experiments.get(model)
        if exp is None:
            raise RegistrationError("release_conflict", f"{model} runs no experiment")
        return await self.set_experiment(exp.model_copy(update={"enabled": False}), actor)

    async def set_shadow(self, model: str, version: int, fraction: float, actor: str) -> int:
        """Mirror ``fraction`` of ``model:prod`` traffic to ``version`` (0 stops)."""

        async def op() -> int:
            if fraction <= 0:
                return await self._commit(
                    ReleaseChange(actor, "shadow", drop_shadows=(model,), detail={"model": model})
                )
            if not fraction <= 1:  # NaN too
                raise RegistrationError("invalid_argument", "shadow fraction must be in (0, 1]")
            self._require(model, version)
            spec = ShadowSpec(model=model, version=version, fraction=fraction)
            return await self._commit(
                ReleaseChange(
                    actor,
                    "shadow",
                    set_shadows=(spec,),
                    detail={"model": model, "version": version, "fraction": fraction},
                )
            )

        detail = {"version": version, "fraction": fraction}
        result: int = await self._audited(actor, "shadow", model, detail, op)
        return result

    def status(self, model: str | None = None) -> dict[str, Any]:
        """Versions, aliases, experiments and shadows (for one model or all)."""
        state = self.store.state()
        models = sorted(
            {r.model for r in self.store.list_versions(model)} | ({model} if model else set())
        )
        out: dict[str, Any] = {"revision": state.revision, "models": {}}
        for m in models:
            exp = state.experiments.get(m)
            shadow = state.shadows.get(m)
            out["models"][m] = {
                "versions": [
                    {
                        "version": r.version,
                        "artifact_sha256": r.artifact_sha256,
                        "schema_hash": r.schema_hash,
                        "metrics": dict(r.offline_metrics),
                        "registered_by": r.registered_by,
                        "registered_at": r.registered_at,
                    }
                    for r in self.store.list_versions(m)
                ],
                "aliases": {
                    str(k): v
                    for k, v in sorted(state.aliases.items(), key=lambda kv: str(kv[0]))
                    if k.model == m
                },
                "experiment": exp.model_dump(mode="json") if exp else None,
                "shadow": shadow.model_dump(mode="json") if shadow else None,
                "events": [
                    {
                        "revision": e.revision,
                        "at": e.at,
                        "actor": e.actor,
                        "action": e.action,
                        "detail": dict(e.detail),
                    }
                    for e in self.store.events(m, limit=10)
                ],
            }
        return out
