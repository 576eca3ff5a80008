"""The demo build: deterministic artifacts, metadata contract, configs (the backend
choice and the onnxruntime backend's versions: test_onnx_backend.py)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feast_repo.data import VIEWS, generate_tables
from feast_repo.definitions import TIMESTAMP_FIELD
from router.pipeline.catalog import load_version
from router.pipeline.schema import feature_schema_hash
from triton_models.build import build_repository, render_config


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    build_repository(a, frozenset({"python"}))
    build_repository(b, frozenset({"python"}))
    return a / "model_repository", b / "model_repository"


def test_artifacts_are_byte_identical_across_builds(two_builds: tuple[Path, Path]) -> None:
    a, b = two_builds
    for rel in ("fraud/1/xgboost.json", "fraud/2/xgboost.json", "ranker/1/model.onnx"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # Reference copies the parity tests load.
    for rel in ("fraud_v1.json", "fraud_v2.json", "ranker_v1.pkl"):
        ta, tb = a.parent / "training" / rel, b.parent / "training" / rel
        assert ta.read_bytes() == tb.read_bytes(), rel
    served = (a / "fraud/1/xgboost.json").read_bytes()
    assert served == (a.parent / "training/fraud_v1.json").read_bytes()
    for rel in ("fraud/1/metadata.json", "ranker/1/metadata.json"):
        ma, mb = json.loads((a / rel).read_text()), json.loads((b / rel).read_text())
        assert ma["artifact"]["sha256"] == mb["artifact"]["sha256"]
        assert ma["training"]["data_sha256"] == mb["training"]["data_sha256"]


@pytest.mark.parametrize(
    ("model", "version", "n", "views"),
    [
        ("fraud", 1, 33, {"account_features"}),
        ("fraud", 2, 33, {"account_features"}),
        ("ranker", 1, 26, {"user_features", "item_features"}),
    ],
)
def test_metadata_contract(
    two_builds: tuple[Path, Path], model: str, version: int, n: int, views: set[str]
) -> None:
    repo = two_builds[0]
    meta = json.loads((repo / model / str(version) / "metadata.json").read_text())
    assert len(meta["features"]) == n
    assert meta["schema_hash"] == feature_schema_hash(meta["features"])
    assert set(meta["entities"]) == views
    assert meta["training"]["metrics"]["auc"] > 0.7
    # Feast features first, request features last: the tensor's column order.
    sources = [f["source"] for f in meta["features"]]
    assert sources == sorted(sources)  # "feast" < "request"
    assert all(f["profile"]["lo"] <= f["default"] <= f["profile"]["hi"] for f in meta["features"])
    v = load_version(repo, model, version)
    assert v.schema_ok and v.n_features == n and v.dq is not None
    assert (repo / model / str(version) / "model.py").exists()


def _fil_params(cfg: str) -> dict[str, str]:
    return dict(re.findall(r'key: "(\w+)" value: \{ string_value: "([^"]*)" \}', cfg))


def test_fil_and_python_configs() -> None:
    fil = render_config("fraud", "fil", 33)
    assert 'backend: "fil"' in fil and "dims: [ 1 ]" in fil
    # One column holding P(positive): FIL must neither threshold (output_class /
    # is_classifier) nor return both classes (predict_proba).
    params = _fil_params(fil)
    assert params["model_type"] == "xgboost_json"
    assert params["output_class"] == params["is_classifier"] == params["predict_proba"] == "false"
    assert params["cpu_nthread"] == "1"
    py = render_config("fraud", "python", 33)
    assert 'backend: "python"' in py and "dims: [ 33 ]" in py
    for cfg in (fil, py):
        assert "max_queue_delay_microseconds: 0 }" in cfg
        assert "version_policy: { all { } }" in cfg
        assert "response_cache { enable: false }" in cfg


def test_the_ranker_has_a_gpu_config_identical_but_for_its_instances(
    two_builds: tuple[Path, Path],
) -> None:
    """What a GPU pool loads (--model-config-name=gpu): the same model, tensors,
    batching and versions as config.pbtxt, on KIND_GPU instances."""
    ranker = two_builds[0] / "ranker"
    cpu, gpu = (ranker / "config.pbtxt").read_text(), (ranker / "configs" / "gpu.pbtxt").read_text()
    assert "kind: KIND_CPU" in cpu and "kind: KIND_GPU" in gpu
    assert gpu.replace("KIND_GPU", "KIND_CPU") == cpu
    assert not (two_builds[0] / "fraud" / "configs").exists()  # the GBDT stays on CPU pools


def test_gbdt_artifact_is_readable_by_older_treelite(two_builds: tuple[Path, Path]) -> None:
    raw = (two_builds[0] / "fraud" / "1" / "xgboost.json").read_text()
    base_score = json.loads(raw)["learner"]["learner_model_param"]["base_score"]
    assert not base_score.startswith("["), base_score  # scalar, not XGBoost 3.1's list
    float(base_score)


def test_offline_tables_follow_the_freshness_contract() -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    a, b = generate_tables(now), generate_tables(now + timedelta(hours=3))
    for spec in VIEWS:
        ta, tb = a[spec.name], b[spec.name]
        cols = [spec.join_key, *spec.features]
        pd.testing.assert_frame_equal(ta[cols], tb[cols])  # values ignore the clock
        assert list(ta[spec.join_key]) == list(range(1, spec.n_entities + 1))
        assert all(ta[f].dtype == np.float32 for f in spec.features)
        age = (pd.Timestamp(now) - ta[TIMESTAMP_FIELD]).dt.total_seconds().to_numpy()
        ttl = spec.ttl.total_seconds()
        stale = ta[spec.join_key].to_numpy() % 50 == 7
        np.testing.assert_allclose(age[stale], 1.5 * ttl)
        assert age[~stale].min() >= 0 and age[~stale].max() <= ttl / 2
