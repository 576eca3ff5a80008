"""INT8 / FP16 variants of the ranker: calibration data, graph rewrites, accuracy,
and the repository entry the router loads (triton_models/quantize.py).

Everything runs for real: the ranker is trained as the build trains it, then
quantized by onnxruntime and scored on the held-out split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from router.pipeline.catalog import load_version
from triton_models import build as tb
from triton_models import quantize as q


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A build-like ``out`` dir holding the trained FP32 ranker and its ONNX."""
    out = tmp_path_factory.mktemp("quant")
    ds = tb.ranker_dataset()
    model, _ = tb.train_ranker(ds)
    (out / "training").mkdir()
    src = out / "training" / "ranker_v1.onnx"
    onnx.save(tb.mlp_to_onnx(model, ds.x.shape[1]), str(src))
    return {"out": out, "ds": ds, "model": model, "src": src}


def test_calibration_rows_are_deterministic_training_rows(ranker: dict[str, Any]) -> None:
    ds = ranker["ds"]
    a, b = q.calibration_rows(ds), q.calibration_rows(ds)
    assert a.shape == (q.CALIB_ROWS, 26) and a.dtype == np.float32
    assert np.array_equal(a, b)
    pool, val, test = q.split_rows(ds)
    assert len(set(pool) & set(val)) == 0 and len(set(pool) & set(test)) == 0
    assert len(val) == q.VALIDATION_ROWS and test[0] == int(len(ds.y) * 0.8)
    # Every calibration row is a row of the calibration pool (not validation/test).
    pool_rows = {r.tobytes() for r in ds.x[pool]}
    assert all(r.tobytes() in pool_rows for r in a)
    assert not np.array_equal(a, q.calibration_rows(ds, seed=q.CALIB_SEED + 1))


def test_rows_reader_batches_and_rewinds() -> None:
    rows = np.arange(130 * 3, dtype=np.float32).reshape(130, 3)
    reader = q.RowsReader(rows, "x", batch=64)
    sizes = []
    while (feed := reader.get_next()) is not None:
        sizes.append(feed["x"].shape[0])
        assert list(feed) == ["x"] and feed["x"].dtype == np.float32
    assert sizes == [64, 64, 2]
    reader.rewind()
    first = reader.get_next()
    assert first is not None and np.array_equal(first["x"], rows[:64])


def test_fp16_keeps_scaling_and_sigmoid_in_fp32(ranker: dict[str, Any], tmp_path: Path) -> None:
    half = q.convert_fp16(ranker["src"], tmp_path / "fp16.onnx")
    g = onnx.load(str(half)).graph
    dtypes = {i.name: i.data_type for i in g.initializer}
    assert dtypes["mean"] == dtypes["scale"] == TensorProto.FLOAT
    assert {dtypes[f"w{i}"] for i in range(3)} == {TensorProto.FLOAT16}
    assert {dtypes[f"b{i}"] for i in range(3)} == {TensorProto.FLOAT16}
    ops = [n.op_type for n in g.node]
    assert ops[:3] == ["Sub", "Div", "Cast"] and ops[-2:] == ["Cast", "Sigmoid"]
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    ds = ranker["ds"]
    x = ds.x[-1000:]
    diff = np.abs(q.predict(half, x) - q.predict(ranker["src"], x))
    assert diff.max() < 2e-3 and diff.mean() < 2e-4


def test_int8_quantizes_only_matmuls_within_auc_budget(
    ranker: dict[str, Any], tmp_path: Path
) -> None:
    ds = ranker["ds"]
    dst = tmp_path / "int8.onnx"
    info = q.choose_int8(ranker["src"], dst, ds)
    g = onnx.load(str(dst)).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("MatMul") == 3 and ops.count("QuantizeLinear") == 3
    assert {"Sub", "Div", "Sigmoid", "Relu"} <= set(ops)
    # Weights stored as int8, biases and scaling untouched.
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    assert {str(inits[n].dtype) for n in inits if n.startswith("w") and "quantized" in n} == {
        "int8"
    }
    assert inits["mean"].dtype == np.float32 and inits["b0"].dtype == np.float32
    assert set(info["validation_logloss"]) == {"per_channel", "per_tensor"}
    assert info["per_channel"] == (
        info["validation_logloss"]["per_channel"] <= info["validation_logloss"]["per_tensor"]
    )
    acc = q.accuracy({"fp32": ranker["src"], "int8": dst}, ds)
    assert 0.80 < acc["fp32"]["auc"] < 0.85
    assert acc["int8"]["auc_drop"] <= q.MAX_AUC_DROP
    assert abs(acc["int8"]["logloss_delta"]) < 0.005


def test_add_quantized_models_writes_a_routable_cheap_tier(ranker: dict[str, Any]) -> None:
    out = ranker["out"]
    repo = out / "model_repository"
    ds = ranker["ds"]
    written = q.add_quantized_models(out, repo, ranker["model"], ds)
    vdir, fp16 = written
    assert vdir == repo / "ranker_int8" / "1" and fp16 == out / "training" / "ranker_v1_fp16.onnx"
    assert sorted(p.name for p in vdir.iterdir()) == [
        "batched.py", "metadata.json", "model.onnx", "model.py"
    ]  # fmt: skip
    meta = json.loads((vdir / "metadata.json").read_text())
    assert meta["model"] == "ranker_int8" and meta["tier"] == "cheap"
    # Same inputs as the FP32 ranker: names, order and training defaults.
    assert [f["name"] for f in meta["features"]] == [f["name"] for f in ds.features]
    train = ds.x[: int(len(ds.y) * 0.8)]
    assert [f["default"] for f in meta["features"]] == [float(v) for v in train.mean(axis=0)]
    assert meta["quantized_from"]["sha256"] == tb._sha256(ranker["src"])
    assert meta["quantization"]["accuracy_test"]["int8"]["auc_drop"] <= q.MAX_AUC_DROP
    config = (repo / "ranker_int8" / "config.pbtxt").read_text()
    assert 'name: "ranker_int8"' in config and "dims: [ 26 ]" in config
    assert "max_queue_delay_microseconds: 0 }" in config and "KIND_CPU" in config
    version = load_version(repo, "ranker_int8", 1)
    assert version.schema_ok and version.n_features == 26
    # Deterministic: a second run writes the same model bytes.
    first = (vdir / "model.onnx").read_bytes()
    q.add_quantized_models(out, repo, ranker["model"], ds)
    assert (vdir / "model.onnx").read_bytes() == first


def test_add_quantized_models_exports_missing_onnx(ranker: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "training").mkdir()
    written = q.add_quantized_models(tmp_path, tmp_path / "repo", ranker["model"], ranker["ds"])
    assert (tmp_path / "training" / "ranker_v1.onnx").read_bytes() == ranker["src"].read_bytes()
    assert written[0].joinpath("model.onnx").exists()
    shutil.rmtree(tmp_path / "repo")


def test_speed_reports_medians_and_ratios(ranker: dict[str, Any]) -> None:
    out = q.speed({"fp32": ranker["src"], "int8": ranker["src"]}, ranker["ds"], batches=(1, 8),
                  repeats=3, min_s=0.02)  # fmt: skip
    assert set(out) == {"batch_1", "batch_8"}
    for b, rows in (("batch_1", 1), ("batch_8", 8)):
        fp32 = out[b]["fp32"]
        assert fp32["speedup_vs_fp32"] == 1.0 and fp32["us_per_call"] > 0
        assert fp32["rows_per_s_per_core"] == pytest.approx(
            rows * 1e6 / fp32["us_per_call"], rel=0.01
        )
        # The same model under two names: within noise of each other.
        assert 0.5 < out[b]["int8"]["speedup_vs_fp32"] < 2.0


def test_format_table_rows() -> None:
    report = {"models": [{
        "model": "ranker", "shape": [26, 64, 32, 1],
        "accuracy": {"fp32": {"auc": 0.8214, "logloss": 0.5033},
                     "int8": {"auc": 0.8207, "logloss": 0.5042, "auc_drop": 0.0007}},
        "speed": {"batch_1": {"fp32": {"us_per_call": 6.0, "speedup_vs_fp32": 1.0},
                              "int8": {"us_per_call": 12.0, "speedup_vs_fp32": 0.5}},
                  "batch_64": {"fp32": {"us_per_call": 13.0, "speedup_vs_fp32": 1.0},
                               "int8": {"us_per_call": 20.0, "speedup_vs_fp32": 0.65}}},
    }]}  # fmt: skip
    lines = q.format_table(report).splitlines()
    assert len(lines) == 4
    assert lines[3] == (
        "| ranker (26->64->32->1) | int8 | 0.8207 | +0.0007 | 0.5042 "
        "| 12.0 | 0.50x | 20.0 | 0.65x |"
    )


def test_cheap_tier_follows_the_ranker_onto_the_onnxruntime_backend(
    ranker: dict[str, Any], tmp_path: Path
) -> None:
    from triton_models.onnx_io import INPUT, OUTPUT, ort_refusal

    repo = tmp_path / "model_repository"
    (repo / "ranker").mkdir(parents=True)
    (repo / "ranker" / "config.pbtxt").write_text(tb.render_config("ranker", "onnxruntime", 26))
    (tmp_path / "training").mkdir()
    shutil.copyfile(ranker["src"], tmp_path / "training" / "ranker_v1.onnx")
    vdir, _ = q.add_quantized_models(tmp_path, repo, ranker["model"], ranker["ds"])
    assert sorted(p.name for p in vdir.iterdir()) == ["metadata.json", "model.onnx"]
    config = (repo / "ranker_int8" / "config.pbtxt").read_text()
    assert 'name: "ranker_int8"' in config and 'backend: "onnxruntime"' in config
    graph = onnx.load(str(vdir / "model.onnx"))
    # The QDQ graph keeps the ranker's tensors and what onnxruntime 1.19 reads.
    assert ort_refusal(graph) is None, ort_refusal(graph)
    assert [i.name for i in graph.graph.input] == [INPUT]
    assert [o.name for o in graph.graph.output] == [OUTPUT]
    assert load_version(repo, "ranker_int8", 1).schema_ok
