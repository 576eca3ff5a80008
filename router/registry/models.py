"""Registry domain records: plain frozen data, no storage or transport types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.pipeline.experiment import Experiment, ShadowSpec


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """What ``config.pbtxt`` declares, as far as the registry checks it."""

    name: str
    backend: str
    max_batch_size: int
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    """(name, datatype, dims) per input tensor."""
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One immutable registered model version.

    Everything needed to audit or reproduce what was served: the exact bytes
    (artifact, config, metadata checksums), the feature contract (ordered
    signature and its hash), the training data hash and offline metrics, who
    registered what from which code revision, and the training-time
    distributions drift and data-quality checks compare live traffic with.
    """

    model: str
    version: int
    artifact_file: str
    artifact_sha256: str
    config_sha256: str
    metadata_sha256: str
    schema_hash: str
    schema_signature: tuple[tuple[str, str, str, str | None], ...]
    """Ordered (name, dtype, source, view): what the hash is computed over."""
    training_data_sha256: str
    offline_metrics: Mapping[str, Any]
    provenance: Mapping[str, Any]
    """code_revision, created_at (build), seed, params."""
    registered_by: str
    registered_at: str
    drift_reference: Mapping[str, Any] | None = None
    dq_profile: Mapping[str, Any] | None = None
    """feature -> training profile (range, categorical values, action)."""

    def same_artifact(self, other: VersionRecord) -> bool:
        """Re-registering is idempotent only for byte-identical content."""
        return (
            self.artifact_sha256,
            self.config_sha256,
            self.schema_hash,
        ) == (other.artifact_sha256, other.config_sha256, other.schema_hash)


@dataclass(frozen=True, slots=True)
class AliasKey:
    model: str
    alias: str
    tenant: str = ""
    """"" for the model's shared alias, else a per-tenant pin."""

    def __str__(self) -> str:
        ref = f"{self.model}:{self.alias}"
        return f"{ref}[{self.tenant}]" if self.tenant else ref


@dataclass(frozen=True, slots=True)
class ReleaseChange:
    """Everything one admin action changes, committed in one transaction."""

    actor: str
    action: str
    set_aliases: Mapping[AliasKey, int] = field(default_factory=dict)
    drop_aliases: tuple[AliasKey, ...] = ()
    set_experiments: tuple[Experiment, ...] = ()
    drop_experiments: tuple[str, ...] = ()
    """Model names whose experiment ends."""
    set_shadows: tuple[ShadowSpec, ...] = ()
    drop_shadows: tuple[str, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)
    based_on: int | None = None
    """The registry revision the change was decided on: committed only if the
    registry is still at it. Routers share the database, so another router's
    action in between (a rollback while this one promotes) refuses this one
    (release_conflict) instead of being silently undone. None: unconditional."""


@dataclass(frozen=True, slots=True)
class RegistryState:
    """The release state the routing snapshot is built from (read in one go)."""

    revision: int
    versions: Mapping[str, tuple[int, ...]]
    """model -> registered versions."""
    aliases: Mapping[AliasKey, int]
    experiments: Mapping[str, Experiment]
    shadows: Mapping[str, ShadowSpec]


@dataclass(frozen=True, slots=True)
class ReleaseEvent:
    revision: int
    at: str
    actor: str
    action: str
    detail: Mapping[str, Any]
