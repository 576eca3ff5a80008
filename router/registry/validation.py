"""Registration checks that need no server: pure functions over files and data.

Order matters only for the message a user sees first: the metadata contract,
the Triton config against it, the artifact's checksum, then the feature schema
against the Feast feature views (the train/serve contract).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from router.pipeline.catalog import VersionMetadata
from router.pipeline.schema import feature_schema_hash
from router.registry.errors import RegistrationError
from router.registry.models import ServingConfig

NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,62}$")
"""Model, alias and tenant names (the routing table's rule; also keeps paths safe)."""

ViewSchemas = Mapping[str, Mapping[str, str]]
"""feature view -> {feature name -> dtype, lowercase ("float32")}."""


@dataclass(frozen=True, slots=True)
class VersionFiles:
    """A version directory's parsed metadata and its raw bytes."""

    path: Path
    raw: bytes
    data: dict[str, Any]
    meta: VersionMetadata


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_name(kind: str, name: str) -> None:
    if not NAME.fullmatch(name):
        raise RegistrationError("invalid_argument", f"invalid {kind} name {name!r}")


def read_version(repository: Path, model: str, version: int) -> VersionFiles:
    check_name("model", model)
    if version < 1:
        raise RegistrationError("invalid_argument", "versions are numbered from 1")
    vdir = repository / model / str(version)
    if not vdir.is_dir():
        raise RegistrationError(
            "not_found", f"no directory {model}/{version} in the model repository"
        )
    try:
        raw = (vdir / "metadata.json").read_bytes()
        data = json.loads(raw)
        meta = VersionMetadata.model_validate(data)
    except OSError as e:
        raise RegistrationError(
            "metadata_invalid", f"{model}/{version} has no metadata.json"
        ) from e
    except (ValueError, ValidationError) as e:
        raise RegistrationError(
            "metadata_invalid", f"{model}/{version}/metadata.json breaks the metadata contract: {e}"
        ) from e
    if (meta.model, meta.version) != (model, version):
        raise RegistrationError(
            "metadata_invalid",
            f"{model}/{version}/metadata.json describes {meta.model}@{meta.version}",
        )
    for key in ("artifact", "training"):
        if not isinstance(data.get(key), dict):
            raise RegistrationError("metadata_invalid", f"metadata.json lacks the {key!r} section")
    return VersionFiles(vdir, raw, data, meta)


def check_config(config: ServingConfig, files: VersionFiles) -> None:
    """config.pbtxt must serve exactly the tensors the metadata describes."""
    meta = files.meta
    problems = []
    if config.name and config.name != meta.model:
        problems.append(f"config name {config.name!r} != model {meta.model!r}")
    if config.max_batch_size < 1:
        problems.append("max_batch_size must be >= 1 (the router sends [N, features])")
    want_in = (meta.tensors.input, "FP32", (len(meta.features),))
    if config.inputs != (want_in,):
        problems.append(f"inputs {list(config.inputs)} != [{want_in}]")
    if [o[0] for o in config.outputs] != [meta.tensors.output]:
        problems.append(f"outputs {[o[0] for o in config.outputs]} != [{meta.tensors.output!r}]")
    if problems:
        raise RegistrationError("config_mismatch", "; ".join(problems))


def check_artifact(files: VersionFiles) -> str:
    """The artifact exists and matches the checksum recorded at build time."""
    art = files.data["artifact"]
    name, want = art.get("file"), art.get("sha256")
    if not isinstance(name, str) or not isinstance(want, str) or "/" in name:
        raise RegistrationError("metadata_invalid", "artifact needs 'file' and 'sha256'")
    try:
        got = sha256((files.path / name).read_bytes())
    except OSError as e:
        raise RegistrationError("artifact_checksum", f"artifact {name!r} is missing") from e
    if got != want:
        raise RegistrationError(
            "artifact_checksum",
            f"artifact {name!r} has sha256 {got[:12]}..., metadata says {want[:12]}...",
        )
    return got


def check_feature_views(files: VersionFiles, views: ViewSchemas) -> str:
    """The version's feature schema hash must equal the one the live Feast
    feature views produce for the same ordered features; returns that hash.

    The expected hash is recomputed with each Feast feature's dtype taken from
    its feature view, so a view that changed a type, or a metadata file whose
    order or list was edited, is caught before any traffic reaches the version.
    """
    meta = files.meta
    rows = [f.model_dump() for f in meta.features]
    served: list[dict[str, Any]] = []
    differ: list[str] = []
    for f in rows:
        if f["source"] != "feast":
            served.append(f)
            continue
        view = views.get(f["view"] or "")
        if view is None:
            raise RegistrationError(
                "feature_not_in_view", f"feature view {f['view']!r} is not in the Feast registry"
            )
        dtype = view.get(f["name"])
        if dtype is None:
            raise RegistrationError(
                "feature_not_in_view",
                f"feature {f['name']!r} is not in feature view {f['view']!r}",
            )
        if dtype != f["dtype"]:
            differ.append(f"{f['view']}.{f['name']}: {f['dtype']} in metadata, {dtype} in view")
        served.append({**f, "dtype": dtype})
    view_hash = feature_schema_hash(served)
    if view_hash != meta.schema_hash:
        if feature_schema_hash(rows) != meta.schema_hash:
            differ.append("the recorded hash is not that of metadata.json's own feature list")
        why = "; ".join(differ) or "feature order differs"
        raise RegistrationError(
            "schema_hash_mismatch",
            f"{meta.model}@{meta.version} schema hash {meta.schema_hash[:12]}... does not match "
            f"the Feast feature views' {view_hash[:12]}... ({why})",
        )
    return view_hash


def signature(files: VersionFiles) -> tuple[tuple[str, str, str, str | None], ...]:
    return tuple((f.name, f.dtype, f.source, f.view) for f in files.meta.features)


def dq_profile(files: VersionFiles) -> dict[str, Any] | None:
    profiles = {f.name: f.profile.model_dump() for f in files.meta.features if f.profile}
    return profiles or None


def warmup_rows(files: VersionFiles, n: int) -> list[list[float]]:
    """Warmup inputs: the training defaults, then rows at each feature's min and
    max (the edges the model must still score finitely)."""
    feats = files.meta.features
    mid = [f.default for f in feats]
    lo = [f.min if f.min is not None else f.default for f in feats]
    hi = [f.max if f.max is not None else f.default for f in feats]
    rows = [mid, lo, hi]
    return [rows[i % 3] for i in range(max(1, n))]
