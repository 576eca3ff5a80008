"""Models on Triton's onnxruntime backend: what the builder writes for a cluster
whose Triton has it (triton_models/onnx_io.py, build.py, xgb_onnx.write_forest).

The pytriton build here has no onnxruntime backend, so Triton cannot load these
versions on this machine. What is checked instead is everything the backend
reads: the config against Triton's own model-config schema and the router's
registration contract, the graph's tensor names and shapes against the config,
the IR version and opsets against the onnxruntime Triton 2.51 bundles, and the
scores of each file (run by onnxruntime here) against the model it came from.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import xgboost as xgb
from onnx import TensorProto, helper

from router.backends.triton_repository import read_serving_config
from router.pipeline.catalog import load_version
from router.registry.validation import check_artifact, check_config, read_version
from triton_models import build as tb
from triton_models import xgb_onnx
from triton_models.onnx_io import INPUT, OUTPUT, OrtLimits, ort_refusal, with_triton_io

ORT_CLUSTER = frozenset({"onnxruntime", "python"})


@pytest.fixture(scope="module")
def ort_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ort")
    tb.build_repository(out, ORT_CLUSTER)
    return out


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def test_backend_choice_prefers_native_backends() -> None:
    assert tb.choose_backend("gbdt", frozenset({"python"})) == "python"
    assert tb.choose_backend("gbdt", ORT_CLUSTER) == "onnxruntime"
    assert tb.choose_backend("gbdt", ORT_CLUSTER | {"fil"}) == "fil"
    assert tb.choose_backend("dnn", ORT_CLUSTER | {"fil"}) == "onnxruntime"
    assert tb.choose_backend("dnn", frozenset({"python", "fil"})) == "python"
    assert tb.choose_backend("gbdt", ORT_CLUSTER | {"fil"}, "python") == "python"
    with pytest.raises(RuntimeError, match="not installed"):
        tb.choose_backend("gbdt", frozenset({"python"}), "onnxruntime")
    with pytest.raises(RuntimeError, match="cannot be served"):
        tb.choose_backend("dnn", frozenset({"python", "fil"}), "fil")


@pytest.mark.parametrize("model", ["fraud", "ranker"])
def test_configs_name_the_backend_and_bind_the_graphs_tensors(ort_build: Path, model: str) -> None:
    repo = ort_build / "model_repository"
    config, raw = read_serving_config(repo / model)  # Triton's ModelConfig schema
    text = raw.decode()
    assert config.backend == tb.served_backend(repo / model) == "onnxruntime"
    params = dict(re.findall(r'key: "(\w+)" value: \{ string_value: "([^"]*)" \}', text))
    assert params == {"intra_op_thread_count": "1", "inter_op_thread_count": "1",
                      "execution_mode": "0"}  # fmt: skip
    assert "max_queue_delay_microseconds: 0 }" in text and "KIND_CPU" in text
    for version in (1, 2) if model == "fraud" else (1,):
        vdir = repo / model / str(version)
        graph = onnx.load(str(vdir / "model.onnx"))
        assert ort_refusal(graph) is None
        (name, dtype, dims), = config.inputs  # fmt: skip
        assert [i.name for i in graph.graph.input] == [name] and dtype == "FP32"
        assert _dims(graph.graph.input[0]) == [None, *dims]  # batch dimension free
        assert [o.name for o in graph.graph.output] == [o[0] for o in config.outputs]
        assert _dims(graph.graph.output[0]) == [None, 1]
        # No Python process serves it: nothing for the Python backend to load.
        assert not (vdir / "model.py").exists() and not (vdir / "batched.py").exists()
        # The registry's contract holds: tensors, artifact checksum, schema.
        files = read_version(repo, model, version)
        check_config(config, files)
        assert check_artifact(files) == tb._sha256(vdir / "model.onnx")
        loaded = load_version(repo, model, version)
        assert loaded.schema_ok and loaded.n_features == dims[0]


@pytest.mark.parametrize("version", [1, 2])
def test_fraud_forest_scores_like_the_xgboost_model_it_came_from(
    ort_build: Path, version: int
) -> None:
    vdir = ort_build / "model_repository" / "fraud" / str(version)
    meta = json.loads((vdir / "metadata.json").read_text())
    source = meta["artifact"]["converted_from"]
    assert meta["artifact"]["file"] == "model.onnx" and source["file"] == "xgboost.json"
    assert source["sha256"] == tb._sha256(vdir / "xgboost.json")
    assert source["sha256"] == tb._sha256(ort_build / "training" / f"fraud_v{version}.json")
    assert 0 <= source["max_abs_diff"] <= xgb_onnx.PARITY_ATOL
    booster = xgb.Booster(model_file=str(vdir / "xgboost.json"))
    rng = np.random.default_rng(version)
    x = tb.fraud_dataset().x[-3000:].copy()
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values follow default_left
    session = _session(vdir / "model.onnx")
    for n in (1, 7, 64, 3000):
        got = session.run([OUTPUT], {INPUT: x[:n]})[0]
        assert got.shape == (n, 1)
        np.testing.assert_allclose(got[:, 0], booster.inplace_predict(x[:n]), atol=1e-5)


def test_ranker_graph_is_the_python_backends_and_scores_like_sklearn(ort_build: Path) -> None:
    vdir = ort_build / "model_repository" / "ranker" / "1"
    assert (vdir / "model.onnx").read_bytes() == (
        ort_build / "training" / "ranker_v1.onnx"
    ).read_bytes()
    pipeline = pickle.loads((ort_build / "training" / "ranker_v1.pkl").read_bytes())
    x = tb.ranker_dataset().x[-2000:]
    got = _session(vdir / "model.onnx").run([OUTPUT], {INPUT: x})[0][:, 0]
    np.testing.assert_allclose(got, pipeline.predict_proba(x)[:, 1], atol=1e-5)


def test_a_forest_that_does_not_convert_stays_off_the_onnxruntime_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    # A regression forest: its raw sum is the score, which the converter (built
    # for probabilities) refuses rather than wrapping in a Sigmoid.
    booster = xgb.train(
        {"objective": "reg:squarederror", "max_depth": 3},
        xgb.DMatrix(x, label=x[:, 0] * 2.0),
        num_boost_round=5,
    )
    booster.save_model(str(tmp_path / "fraud_v1.json"))
    boosters = {1: booster}
    assert tb.gbdt_forests(tmp_path, boosters, x, ORT_CLUSTER) == ("python", {})
    said = capsys.readouterr().out
    assert "not on the onnxruntime backend (objective 'reg:squarederror')" in said
    assert not (tmp_path / "fraud_v1.onnx").exists()
    # FIL, where installed, needs no conversion at all.
    assert tb.gbdt_forests(tmp_path, boosters, x, ORT_CLUSTER | {"fil"}) == ("fil", {})
    # Asked for by name, the refusal is an error, not a silent substitute.
    with pytest.raises(xgb_onnx.UnsupportedForest):
        tb.gbdt_forests(tmp_path, boosters, x, ORT_CLUSTER, "onnxruntime")


def _tiny(
    ir_version: int, opsets: list[tuple[str, int]], names: tuple[str, str]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", [names[0]], [names[1]])],
        "tiny",
        [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info(names[1], TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = ir_version
    return model


def test_ort_refusal_names_what_triton_2_51_cannot_read() -> None:
    ok = _tiny(8, [("", 17)], (INPUT, OUTPUT))
    assert ort_refusal(ok) is None
    assert "IR version 11 > 10" in str(ort_refusal(_tiny(11, [("", 17)], (INPUT, OUTPUT))))
    assert "opset ai.onnx 22 > 21" in str(ort_refusal(_tiny(10, [("", 22)], (INPUT, OUTPUT))))
    assert "ai.onnx.ml 5 > 4" in str(
        ort_refusal(_tiny(10, [("", 17), ("ai.onnx.ml", 5)], (INPUT, OUTPUT)))
    )
    assert "unknown to" in str(ort_refusal(_tiny(8, [("", 17), ("ai.onnx.x", 1)], (INPUT, OUTPUT))))
    assert "not ['input__0']" in str(ort_refusal(_tiny(8, [("", 17)], ("x", "y"))))
    # A newer release's limits are a parameter, not an edit of the check.
    newer = OrtLimits("later", ir_version=11, opsets={"": 23})
    assert ort_refusal(_tiny(11, [("", 22)], (INPUT, OUTPUT)), newer) is None


def test_with_triton_io_renames_inputs_outputs_and_their_readers() -> None:
    model = with_triton_io(_tiny(8, [("", 17)], ("x", "y")))
    assert ort_refusal(model) is None
    x = np.array([[-1.0, 2.0]], dtype=np.float32)
    out = ort.InferenceSession(model.SerializeToString()).run([OUTPUT], {INPUT: x})[0]
    np.testing.assert_array_equal(out, [[0.0, 2.0]])
    two = _tiny(8, [("", 17)], ("x", "y"))
    two.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 2]))
    with pytest.raises(ValueError, match="one input and one output"):
        with_triton_io(two)


def test_build_demo_builds_for_the_backends_it_is_told() -> None:
    from scripts import build_demo

    assert build_demo.backend_names("fil, onnxruntime,python") == {"fil", "onnxruntime", "python"}
    for typo in ("onnx", "fil,pyhton", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown Triton backend"):
            build_demo.backend_names(typo)
