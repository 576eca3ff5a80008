"""Model version metadata: what each served version consumes and produces.

Every version directory in the Triton model repository carries a
``metadata.json`` written when the version was built: the ordered feature
schema (the tensor's column order), its hash, tensor names and the static
default score. The catalog validates each file, recomputes the schema hash
(a mismatch means the file was edited by hand: refuse to serve it) and
precomputes the per-view read plan so the hot path only indexes arrays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.errors import ConfigError
from router.pipeline.schema import feature_schema_hash


class _Frozen(BaseModel):
    # Finite numbers only: a NaN feature default (a column mean taken over
    # missing values) would be imputed into every request, a NaN default score
    # served; an unbounded range is min/max None, not infinity.
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class FeatureProfile(_Frozen):
    lo: float
    hi: float
    values: tuple[float, ...] | None = None
    action: Literal["impute", "reject"] = "impute"


class FeatureSpec(_Frozen):
    profile: FeatureProfile | None = None
    name: str
    dtype: Literal["float32"]
    source: Literal["feast", "request"]
    view: str | None = None
    default: float
    min: float | None = None
    max: float | None = None


class TensorSpec(_Frozen):
    input: str
    output: str
    datatype: Literal["FP32"] = "FP32"


class VersionMetadata(_Frozen):
    format: Literal[1]
    model: str
    version: int = Field(ge=1)
    kind: str
    framework: str
    tensors: TensorSpec
    entities: dict[str, tuple[str, ...]]
    features: tuple[FeatureSpec, ...] = Field(min_length=1)
    schema_hash: str
    default_score: float
    drift_reference: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ViewPlan:
    """How to fill this view's columns of the input tensor."""

    view: str
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    columns: tuple[int, ...]
    defaults: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class RequestFeature:
    name: str
    column: int


@dataclass(frozen=True, slots=True)
class DataQuality:
    """Vectorised form of the per-feature profiles, in tensor column order."""

    lo: np.ndarray
    hi: np.ndarray
    reject: np.ndarray
    """True where a violation rejects the request (request features)."""
    categorical: tuple[tuple[int, frozenset[float]], ...]
    """(column, allowed float32 values as Python floats) for low-cardinality
    features: set lookups beat np.isin by ~20x at a handful of rows."""
    lo_list: tuple[float, ...] = field(init=False)
    hi_list: tuple[float, ...] = field(init=False)
    """``lo`` and ``hi`` as Python floats: a request's few rows are checked in a
    plain loop, ~2x cheaper than four numpy calls on arrays this small."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo_list", tuple(np.asarray(self.lo, np.float64).tolist()))
        object.__setattr__(self, "hi_list", tuple(np.asarray(self.hi, np.float64).tolist()))


@dataclass(frozen=True, slots=True)
class ModelVersion:
    model: str
    version: int
    input_name: str
    output_name: str
    n_features: int
    schema_hash: str
    default_score: float
    views: tuple[ViewPlan, ...]
    request_features: tuple[RequestFeature, ...]
    defaults: tuple[float, ...]
    """Default per column, in tensor order (imputation for missing/stale rows)."""
    assembled_hash: str = ""
    """Hash of the schema the router actually assembles for this version."""
    feature_names: tuple[str, ...] = ()
    dq: DataQuality | None = None
    """Training profile checks (None: the version carries no profile)."""
    drift_reference: dict[str, Any] | None = None

    @property
    def schema_ok(self) -> bool:
        """Train/serve parity: a version whose hashes differ is never scored."""
        return self.assembled_hash == self.schema_hash


def _plan(meta: VersionMetadata, assembled_hash: str) -> ModelVersion:
    views: dict[str, list[tuple[int, FeatureSpec]]] = {}
    request: list[RequestFeature] = []
    for col, f in enumerate(meta.features):
        if not math.isfinite(f.default):
            raise ValueError(f"feature {f.name!r} has a non-finite default")
        if f.source == "feast":
            if not f.view:
                raise ValueError(f"feast feature {f.name!r} names no view")
            views.setdefault(f.view, []).append((col, f))
        else:
            request.append(RequestFeature(name=f.name, column=col))
    plans = []
    for view, cols in views.items():
        if view not in meta.entities:
            raise ValueError(f"view {view!r} has no entity join keys in metadata")
        plans.append(
            ViewPlan(
                view=view,
                join_keys=meta.entities[view],
                features=tuple(f.name for _, f in cols),
                columns=tuple(c for c, _ in cols),
                defaults=tuple(f.default for _, f in cols),
            )
        )
    return ModelVersion(
        model=meta.model,
        version=meta.version,
        input_name=meta.tensors.input,
        output_name=meta.tensors.output,
        n_features=len(meta.features),
        schema_hash=meta.schema_hash,
        default_score=meta.default_score,
        views=tuple(plans),
        request_features=tuple(request),
        defaults=tuple(f.default for f in meta.features),
        assembled_hash=assembled_hash,
        feature_names=tuple(f.name for f in meta.features),
        dq=_data_quality(meta.features),
        drift_reference=meta.drift_reference,
    )


def _data_quality(features: tuple[FeatureSpec, ...]) -> DataQuality | None:
    profiles = [f.profile for f in features]
    if any(p is None for p in profiles):
        return None
    ps = [p for p in profiles if p is not None]
    return DataQuality(
        lo=np.asarray([p.lo for p in ps], dtype=np.float64),
        hi=np.asarray([p.hi for p in ps], dtype=np.float64),
        reject=np.asarray([p.action == "reject" for p in ps]),
        # The training default (a mean) is always allowed: it is what missing or
        # stale rows are imputed with.
        categorical=tuple(
            (j, frozenset(np.asarray([*p.values, f.default], dtype=np.float32).tolist()))
            for j, (p, f) in enumerate(zip(ps, features, strict=True))
            if p.values is not None
        ),
    )


def load_version(repository: Path, model: str, version: int) -> ModelVersion:
    path = repository / model / str(version) / "metadata.json"
    try:
        meta = VersionMetadata.model_validate(json.loads(path.read_text()))
        if (meta.model, meta.version) != (model, version):
            raise ValueError(f"metadata names {meta.model}@{meta.version}")
        # What the router will assemble is exactly this ordered list: if its hash
        # differs from the one recorded at training time, the file was edited or
        # the schema drifted. The version still loads (so the fallback ladder
        # can answer for it), but it is never scored.
        assembled = feature_schema_hash(f.model_dump() for f in meta.features)
        return _plan(meta, assembled)
    except (OSError, ValueError, ValidationError) as e:
        raise ConfigError(f"bad metadata for {model}@{version} at {path}: {e}") from e


class ModelCatalog:
    """Immutable map (model, version) -> ModelVersion for the routed versions."""

    def __init__(self, versions: Iterable[ModelVersion]) -> None:
        self._versions = {(v.model, v.version): v for v in versions}

    @classmethod
    def load(cls, repository: Path, wanted: Iterable[tuple[str, int]]) -> ModelCatalog:
        return cls(load_version(repository, m, v) for m, v in wanted)

    def get(self, model: str, version: int) -> ModelVersion:
        return self._versions[(model, version)]

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self._versions

    def __iter__(self) -> Iterator[ModelVersion]:
        return iter(self._versions.values())
