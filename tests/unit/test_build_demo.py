"""The demo build: deterministic artifacts, metadata contract, backend choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.pipeline.catalog import load_version
from router.pipeline.schema import feature_schema_hash
from triton_models.build import build_repository, choose_gbdt_backend, render_config


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


def test_backend_choice_follows_installed_backends() -> None:
    assert choose_gbdt_backend(frozenset({"python"})) == "python"
    assert choose_gbdt_backend(frozenset({"python", "fil"})) == "fil"
    assert choose_gbdt_backend(frozenset({"python", "fil"}), "python") == "python"
    with pytest.raises(RuntimeError):
        choose_gbdt_backend(frozenset({"python"}), "fil")


def test_fil_and_python_configs() -> None:
    fil = render_config("fraud", "fil", 33)
    assert 'backend: "fil"' in fil and '"xgboost_json"' in fil and "predict_proba" in fil
    py = render_config("fraud", "python", 33)
    assert 'backend: "python"' in py and "dims: [ 33 ]" in py
    for cfg in (fil, py):
        assert "max_queue_delay_microseconds: 200" in cfg
        assert "version_policy: { all { } }" in cfg
        assert "response_cache { enable: false }" in cfg
