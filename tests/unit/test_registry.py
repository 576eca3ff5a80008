"""Registry: validation checks, the SQLite store's immutability and atomic
release changes, and the routing-table overlay."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.backends.registry_sqlite import SqliteRegistryStore
from router.backends.triton_repository import read_serving_config
from router.pipeline.experiment import Arm, Experiment, ShadowSpec
from router.pipeline.routing import RoutingTable
from router.pipeline.schema import feature_schema_hash
from router.registry import validation
from router.registry.errors import RegistrationError
from router.registry.models import AliasKey, ReleaseChange, VersionRecord
from router.registry.overlay import overlay

FEATURES: list[dict[str, Any]] = [
    {
        "name": "a",
        "dtype": "float32",
        "source": "feast",
        "view": "acct",
        "default": 0.5,
        "min": 0.0,
        "max": 1.0,
    },
    {
        "name": "b",
        "dtype": "float32",
        "source": "feast",
        "view": "acct",
        "default": 2.0,
        "min": 0.0,
        "max": 9.0,
    },
    {
        "name": "amount",
        "dtype": "float32",
        "source": "request",
        "view": None,
        "default": 1.0,
        "min": 0.0,
        "max": 5.0,
    },
]
VIEWS = {"acct": {"a": "float32", "b": "float32", "c": "int64"}}
CONFIG = """
name: "m"
backend: "python"
max_batch_size: 8
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
version_policy: { all { } }
"""


def write_version(repo: Path, version: int = 1, **changes: Any) -> Path:
    vdir = repo / "m" / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "model.bin").write_bytes(b"weights-%d" % version)
    meta: dict[str, Any] = {
        "format": 1,
        "model": "m",
        "version": version,
        "kind": "gbdt",
        "framework": "x",
        "tensors": {"input": "input__0", "output": "output__0", "datatype": "FP32"},
        "entities": {"acct": ["account_id"]},
        "features": FEATURES,
        "schema_hash": feature_schema_hash(FEATURES),
        "default_score": 0.1,
        "artifact": {
            "file": "model.bin",
            "sha256": hashlib.sha256(b"weights-%d" % version).hexdigest(),
        },
        "training": {"data_sha256": "d" * 64, "metrics": {"auc": 0.9}, "code_revision": "abc"},
    }
    meta.update(changes)
    (vdir / "metadata.json").write_text(json.dumps(meta))
    (repo / "m" / "config.pbtxt").write_text(CONFIG)
    return vdir


def check_all(repo: Path, views: validation.ViewSchemas = VIEWS) -> None:
    files = validation.read_version(repo, "m", 1)
    config, _ = read_serving_config(repo / "m")
    validation.check_config(config, files)
    validation.check_artifact(files)
    validation.check_feature_views(files, views)


def reason(exc: pytest.ExceptionInfo[RegistrationError]) -> str:
    return exc.value.reason


def test_a_consistent_version_passes(tmp_path: Path) -> None:
    write_version(tmp_path)
    check_all(tmp_path)


def test_schema_hash_mismatch_vs_feature_view_is_a_clear_error(tmp_path: Path) -> None:
    # The feature view changed a dtype since training: the hash the views give
    # no longer equals the one recorded with the version.
    write_version(tmp_path)
    views = {"acct": {"a": "float32", "b": "int64"}}
    with pytest.raises(RegistrationError) as exc:
        check_all(tmp_path, views)
    assert reason(exc) == "schema_hash_mismatch"
    assert exc.value.code.name == "FAILED_PRECONDITION"
    assert "acct.b: float32 in metadata, int64 in view" in exc.value.public_message


def test_edited_schema_hash_is_refused(tmp_path: Path) -> None:
    reordered = [FEATURES[1], FEATURES[0], FEATURES[2]]
    write_version(tmp_path, schema_hash=feature_schema_hash(reordered))
    with pytest.raises(RegistrationError) as exc:
        check_all(tmp_path)
    assert reason(exc) == "schema_hash_mismatch"
    assert "does not match the Feast feature views" in exc.value.public_message
    assert "not that of metadata.json's own feature list" in exc.value.public_message


@pytest.mark.parametrize(
    ("views", "expected"),
    [
        ({"acct": {"a": "float32"}}, "feature 'b' is not in feature view 'acct'"),
        ({}, "feature view 'acct' is not in the Feast registry"),
    ],
)
def test_feature_missing_from_view(tmp_path: Path, views: Any, expected: str) -> None:
    write_version(tmp_path)
    with pytest.raises(RegistrationError) as exc:
        check_all(tmp_path, views)
    assert reason(exc) == "feature_not_in_view"
    assert expected in exc.value.public_message


def test_artifact_checksum_mismatch(tmp_path: Path) -> None:
    vdir = write_version(tmp_path)
    (vdir / "model.bin").write_bytes(b"tampered")
    with pytest.raises(RegistrationError) as exc:
        check_all(tmp_path)
    assert reason(exc) == "artifact_checksum"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (CONFIG.replace("dims: [ 3 ]", "dims: [ 4 ]"), "config_mismatch"),
        (CONFIG.replace('name: "m"', 'name: "other"'), "config_mismatch"),
        (CONFIG.replace("max_batch_size: 8", "max_batch_size: 0"), "config_mismatch"),
        (CONFIG.replace("TYPE_FP32 dims: [ 3 ]", "TYPE_INT64 dims: [ 3 ]"), "config_mismatch"),
        (CONFIG + "\nnot_a_field: 1\n", "config_invalid"),
        ("input [ {", "config_invalid"),
    ],
)
def test_config_checked_with_tritons_schema(tmp_path: Path, config: str, expected: str) -> None:
    write_version(tmp_path)
    (tmp_path / "m" / "config.pbtxt").write_text(config)
    with pytest.raises(RegistrationError) as exc:
        check_all(tmp_path)
    assert reason(exc) == expected


@pytest.mark.parametrize(("model", "version"), [("../etc", 1), ("M", 1), ("m", 0)])
def test_names_and_numbers_are_checked(tmp_path: Path, model: str, version: int) -> None:
    with pytest.raises(RegistrationError) as exc:
        validation.read_version(tmp_path, model, version)
    assert reason(exc) == "invalid_argument"


def test_metadata_problems(tmp_path: Path) -> None:
    with pytest.raises(RegistrationError) as exc:
        validation.read_version(tmp_path, "m", 7)
    assert reason(exc) == "not_found"
    write_version(tmp_path, version=2, model="other")
    with pytest.raises(RegistrationError) as exc:
        validation.read_version(tmp_path, "m", 2)
    assert reason(exc) == "metadata_invalid"


@pytest.mark.parametrize("where", ["default_score", "feature default"])
def test_non_finite_metadata_numbers_are_refused(tmp_path: Path, where: str) -> None:
    """A NaN feature default (e.g. a column mean over missing values) would be
    imputed into every request; a NaN default score served as a fallback."""
    if where == "default_score":
        write_version(tmp_path, default_score=float("nan"))
    else:
        features = [dict(FEATURES[0], default=float("inf")), *FEATURES[1:]]
        write_version(tmp_path, features=features, schema_hash=feature_schema_hash(features))
    with pytest.raises(RegistrationError) as exc:
        validation.read_version(tmp_path, "m", 1)
    assert reason(exc) == "metadata_invalid"


def record(version: int, artifact: str = "a" * 64) -> VersionRecord:
    return VersionRecord(
        model="m",
        version=version,
        artifact_file="model.bin",
        artifact_sha256=artifact,
        config_sha256="c" * 64,
        metadata_sha256="e" * 64,
        schema_hash="s" * 64,
        schema_signature=(("a", "float32", "feast", "acct"),),
        training_data_sha256="d" * 64,
        offline_metrics={"auc": 0.9},
        provenance={"code_revision": "abc"},
        registered_by="ops",
        registered_at="2026-11-28T00:00:00+00:00",
        drift_reference={"score": {"edges": [0.5], "proportions": [0.5, 0.5]}},
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRegistryStore]:
    s = SqliteRegistryStore(tmp_path / "registry.db")
    yield s
    s.close()


def test_versions_are_immutable(store: SqliteRegistryStore, tmp_path: Path) -> None:
    first = store.insert_version(record(1))
    assert store.insert_version(record(1, artifact="b" * 64)) == first  # existing wins
    assert store.get_version("m", 1) == first
    assert not first.same_artifact(record(1, artifact="b" * 64))
    # Even a direct UPDATE or DELETE is refused by the database.
    db = sqlite3.connect(tmp_path / "registry.db")
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        db.execute("UPDATE model_versions SET artifact_sha256 = 'x'")
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        db.execute("DELETE FROM model_versions")
    db.close()


def test_release_change_is_atomic(store: SqliteRegistryStore) -> None:
    store.insert_version(record(1))
    store.insert_version(record(2))
    prod, canary = AliasKey("m", "prod"), AliasKey("m", "canary")
    rev = store.commit(ReleaseChange("ops", "alias", set_aliases={prod: 1, canary: 2}))
    assert rev == 1
    # One bad target aborts the whole change: prod does not move either.
    with pytest.raises(RegistrationError) as exc:
        store.commit(ReleaseChange("ops", "alias", set_aliases={prod: 2, AliasKey("m", "x"): 9}))
    assert reason(exc) == "alias_target"
    state = store.state()
    assert state.revision == 1
    assert state.aliases == {prod: 1, canary: 2}
    arms = (Arm(name="a", version=1, weight=1), Arm(name="b", version=2, weight=1))
    exp = Experiment(model="m", name="ab", salt="s", arms=arms)
    rev = store.commit(
        ReleaseChange(
            "ops",
            "experiment",
            set_experiments=(exp,),
            drop_aliases=(canary,),
            set_shadows=(ShadowSpec(model="m", version=2, fraction=0.1),),
            detail={"model": "m"},
        )
    )
    state = store.state()
    assert (rev, state.aliases, state.experiments["m"], state.shadows["m"].version) == (
        2,
        {prod: 1},
        exp,
        2,
    )
    assert [e.action for e in store.events("m")] == ["experiment"]


def test_overlay_applies_registry_state(store: SqliteRegistryStore) -> None:
    table = RoutingTable.model_validate(
        {
            "version": "t",
            "models": {"m": {"versions": [1], "aliases": {"prod": 1}}},
            "tenants": {"t1": {"models": ["m"]}, "t2": {"models": []}},
        }
    )
    assert overlay(table, store.state()) is table  # empty registry: file as is
    for v in (1, 2, 3):
        store.insert_version(record(v))
    store.commit(
        ReleaseChange(
            "ops",
            "alias",
            set_aliases={
                AliasKey("m", "prod"): 3,
                AliasKey("m", "lkg"): 2,
                AliasKey("m", "prod", "t1"): 1,
                AliasKey("m", "prod", "t2"): 1,
            },
        )
    )
    out = overlay(table, store.state())
    route = out.models["m"]
    assert route.versions == (1, 2, 3)
    assert route.aliases == {"prod": 3, "lkg": 2}
    assert route.fallback.version == 2
    assert out.tenants["t1"].aliases == {"m:prod": 1}
    assert out.tenants["t2"].aliases == {}  # t2 is not granted m: pin ignored
    assert out.version == "t+r1"


async def test_a_models_load_lock_excludes_other_routers_and_not_other_models(
    tmp_path: Path,
) -> None:
    """Two routers (two stores on one database): while one changes fraud's
    loaded versions the other waits for fraud, not for the ranker."""
    import asyncio

    a = SqliteRegistryStore(tmp_path / "registry.db")
    b = SqliteRegistryStore(tmp_path / "registry.db")
    try:
        async with a.model_lock("fraud"):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    async with b.model_lock("fraud"):
                        pass
            async with asyncio.timeout(1):
                async with b.model_lock("ranker"):
                    pass
        async with asyncio.timeout(1):  # released: the other router gets it
            async with b.model_lock("fraud"):
                pass
    finally:
        a.close()
        b.close()
