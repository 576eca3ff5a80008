"""CPU-side pieces of the GPU path, tested without a GPU or TensorRT.

triton_models/tensorrt_build.py: plan config generation, calibration batches,
the calibration cache round trip, the ONNX I/O rename and the skip path.
bench/gpu_bench.py + bench/gpu.sh: the hand-encoded ModelInfer wire format
(checked against tritonclient's generated protobufs), the ranker_gpu configs
(parsed as real Triton ModelConfig protos), kit preparation, table output.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2

from bench import gpu_bench as gb
from triton_models import build as tb
from triton_models import tensorrt_build as trtb

ROOT = Path(__file__).resolve().parents[2]


def _config(text: str) -> Any:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build dir with the trained ranker's ONNX, as build_demo leaves it."""
    out = tmp_path_factory.mktemp("build")
    ds = tb.ranker_dataset()
    model, _ = tb.train_ranker(ds)
    (out / "training").mkdir()
    onnx.save(tb.mlp_to_onnx(model, ds.x.shape[1]), str(out / "training" / "ranker_v1.onnx"))
    return out


def test_plan_config_is_a_valid_gpu_tensorrt_config() -> None:
    cfg = _config(trtb.render_plan_config("ranker_trt", 26, max_batch=512, instances=2,
                                          delay_us=100, preferred=(64, 256)))  # fmt: skip
    assert cfg.name == "ranker_trt" and cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == 512
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input__0", [26])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("output__0", [1])]
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(cfg.version_policy.specific.versions) == [1, 2]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert list(cfg.dynamic_batching.preferred_batch_size) == [64, 256]
    (group,) = cfg.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 2
    assert list(group.profile) == ["0"]
    assert [(p.version, p.precision) for p in trtb.PLANS] == [(1, "fp16"), (2, "int8")]


def test_calibration_batches() -> None:
    rows = np.arange(200 * 4, dtype=np.float64).reshape(200, 4)
    b = trtb.CalibrationBatches(rows, batch_size=64)
    assert len(b) == 3  # 8 trailing rows dropped: the calibrator binds one shape
    got = list(b)
    assert [x.shape for x in got] == [(64, 4)] * 3 and got[0].dtype == np.float32
    assert np.array_equal(got[2], rows[128:192].astype(np.float32))
    assert b.next_batch() is None
    b.reset()
    first = b.next_batch()
    assert first is not None and np.array_equal(first, rows[:64].astype(np.float32))
    assert b.fingerprint() == trtb.CalibrationBatches(rows, 64).fingerprint()
    assert b.fingerprint() != trtb.CalibrationBatches(rows, 32).fingerprint()
    with pytest.raises(ValueError, match="at least 64 rows"):
        trtb.CalibrationBatches(rows[:10], 64)


def test_calibration_cache_round_trip_and_invalidation(tmp_path: Path) -> None:
    path = tmp_path / "v2" / "calibration.cache"
    cache = trtb.CalibrationCache(path, "model-a", "rows-a")
    assert cache.read() is None
    blob = b"TRT-100000-EntropyCalibration2\ninput__0: 3c010a14\n"
    cache.write(bytearray(blob))
    assert path.read_bytes() == blob
    assert trtb.CalibrationCache(path, "model-a", "rows-a").read() == blob
    assert trtb.CalibrationCache(path, "model-b", "rows-a").read() is None
    assert trtb.CalibrationCache(path, "model-a", "rows-b").read() is None
    cache.sidecar.write_text("not json")
    assert cache.read() is None


def test_skip_path_says_why(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ok, why = trtb.tensorrt_status()
    assert not ok and "tensorrt" in why
    argv = ["--onnx", "x.onnx", "--calibration", "c.npy", "--repository", str(tmp_path)]
    assert trtb.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("TensorRT plan build skipped: the tensorrt Python package is not")
    assert trtb.main([*argv, "--require"]) == 1
    assert list(tmp_path.iterdir()) == []


def test_triton_io_rename_keeps_scores(trained: Path, tmp_path: Path) -> None:
    # An export with its own tensor names (the builder's ranker already uses Triton's).
    model = onnx.load(str(trained / "training" / "ranker_v1.onnx"))
    g = model.graph
    theirs = {"input__0": "x", "output__0": "y"}
    for node in g.node:
        node.input[:] = [theirs.get(n, n) for n in node.input]
        node.output[:] = [theirs.get(n, n) for n in node.output]
    g.input[0].name, g.output[0].name = "x", "y"
    src = tmp_path / "theirs.onnx"
    onnx.save(model, str(src))
    renamed = tmp_path / "r.onnx"
    renamed.write_bytes(trtb.with_triton_io(src.read_bytes()))
    x = tb.ranker_dataset().x[:50]
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    s = ort.InferenceSession(str(renamed), providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == ["input__0"]
    assert [o.name for o in s.get_outputs()] == ["output__0"]
    assert np.array_equal(s.run(None, {"input__0": x})[0], a)
    np.save(tmp_path / "c.npy", x)
    np.savez(tmp_path / "c.npz", rows=x)
    assert np.array_equal(trtb.load_rows(tmp_path / "c.npy"), trtb.load_rows(tmp_path / "c.npz"))


def test_infer_request_wire_format_matches_protobuf() -> None:
    rows = np.random.default_rng(0).random((3, 26), dtype=np.float32)
    req = service_pb2.ModelInferRequest.FromString(gb.encode_infer_request("ranker_gpu_fp16", rows))
    assert req.model_name == "ranker_gpu_fp16" and req.model_version == "1"
    (inp,) = req.inputs
    assert (inp.name, inp.datatype, list(inp.shape)) == ("input__0", "FP32", [3, 26])
    assert [o.name for o in req.outputs] == ["output__0"]
    assert np.array_equal(np.frombuffer(req.raw_input_contents[0], np.float32).reshape(3, 26), rows)
    big = gb.encode_infer_request("m", np.zeros((300, 26), np.float32))  # multi-byte varints
    assert list(service_pb2.ModelInferRequest.FromString(big).inputs[0].shape) == [300, 26]
    resp = service_pb2.ModelInferResponse(model_name="m", model_version="1", id="x")
    resp.outputs.add(name="output__0", datatype="FP32", shape=[2, 1])
    resp.parameters["p"].int64_param = 7
    scores = np.array([0.25, 0.5], np.float32)
    resp.raw_output_contents.append(scores.tobytes())
    (raw,) = gb.decode_raw_outputs(resp.SerializeToString())
    assert np.array_equal(np.frombuffer(raw, np.float32), scores)


def test_gpu_configs_and_repository(trained: Path, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    manifest = gb.prepare(trained, kit)
    assert list(manifest["nets"]) == ["ranker"] and manifest["nets"]["ranker"]["n_features"] == 26
    ref = np.load(kit / "ref_ranker.npz")
    assert ref["rows"].shape == (gb.REF_ROWS, 26) and ref["expected"].shape == (gb.REF_ROWS,)
    assert np.load(kit / "calib_ranker.npy").shape == (2048, 26)
    w = np.load(kit / "weights_ranker.npz")
    assert [w[f"w{i}"].shape for i in range(3)] == [(26, 64), (64, 32), (32, 1)]
    # The weights reproduce the reference scores (the math model.py runs in torch).
    h = (ref["rows"] - w["mean"]) / w["scale"]
    for i in range(3):
        h = h @ w[f"w{i}"] + w[f"b{i}"]
        h = np.maximum(h, 0) if i < 2 else h
    assert np.abs(1 / (1 + np.exp(-h[:, 0])) - ref["expected"]).max() < 1e-5

    vs = gb.variants(["ranker"], ["fp32", "fp16"], [True, False])
    assert [v.name for v in vs] == ["ranker_gpu_fp32", "ranker_gpu_fp32_nobatch",
                                    "ranker_gpu_fp16", "ranker_gpu_fp16_nobatch"]  # fmt: skip
    names = gb.write_gpu_repository(kit, tmp_path / "repo", vs, instances=3, delay_us=150)
    assert names == [v.name for v in vs]
    batched = _config((tmp_path / "repo" / "ranker_gpu_fp16" / "config.pbtxt").read_text())
    assert batched.backend == "python" and batched.max_batch_size == 1024
    assert batched.dynamic_batching.max_queue_delay_microseconds == 150
    assert batched.parameters["precision"].string_value == "fp16"
    (group,) = batched.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and group.count == 3
    alone = _config((tmp_path / "repo" / "ranker_gpu_fp32_nobatch" / "config.pbtxt").read_text())
    assert not alone.HasField("dynamic_batching")
    assert alone.parameters["precision"].string_value == "fp32"
    vdir = tmp_path / "repo" / "ranker_gpu_fp32" / "1"
    assert sorted(p.name for p in vdir.iterdir()) == ["model.py", "weights.npz"]


def test_gpu_table_and_cli() -> None:
    report = {"gpu": "NVIDIA H100 80GB HBM3, 580.1, 81559 MiB", "date": "2026-11-28 10:00 UTC",
              "instances": 2, "delay_us": 200, "command": "python -m bench.gpu_bench run",
              "checks": {"ranker_gpu_fp32": {"ok": True}, "ranker_gpu_fp16": {"ok": False}},
              "results": [{"model": "ranker_gpu_fp32", "batch": 32, "load": "throughput",
                           "in_flight": 64, "rps": 5000.0, "rows_per_s": 160000.0,
                           "p50_ms": 1.5, "p99_ms": 9.25, "errors": 0, "gpu_util_pct": 4.5}]}  # fmt: skip  # noqa: E501
    lines = gb.format_table(report).splitlines()
    assert lines[0].startswith("GPU: NVIDIA H100 80GB HBM3, 580.1, 81559 MiB; date: 2026-11-28")
    assert (
        lines[5]
        == "| ranker_gpu_fp32 | 32 | throughput (64) | 5,000 | 160,000 | 1.50 | 9.25 | 0 | 4.5 |"
    )
    assert lines[-1] == "- check failed: ranker_gpu_fp16: {'ok': False}"
    args = gb.build_parser().parse_args(
        ["run", "--triton", "/t", "--out", "/o", "--batches", "1,8"]
    )
    assert args.batches == [1, 8] and args.procs * args.conc == 64 and args.instances == 2
    assert args.nets == "ranker,ranker_wide" and args.precisions == "fp32,fp16"


def test_gpu_sh_usage_and_syntax() -> None:
    script = ROOT / "bench" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "usage:" in r.stderr
    assert "  prepare) " in script.read_text() and "  run) " in script.read_text()


def test_gpu_utilisation_reads_nvidia_smis_percent() -> None:
    # nvidia-smi --format=csv,noheader prints "37 %": the first run on a real H200
    # recorded no utilisation at all because the sampler wanted bare digits.
    assert gb.util_pct("37 %") == 37.0 and gb.util_pct("0 %") == 0.0
    assert gb.util_pct("[N/A]") is None and gb.util_pct("") is None


def test_recorded_gpu_results_back_the_docs() -> None:
    """docs/gpu/*.json are the H200 runs the docs quote: every variant passed its
    score check, no request failed, and the capacity model's GPU figure is the
    recorded 4-instance, 256-row throughput."""
    runs = sorted((ROOT / "docs" / "gpu").glob("*.json"))
    assert len(runs) >= 2
    for path in runs:
        report = json.loads(path.read_text())
        assert report["gpu"].startswith("NVIDIA"), path
        assert report["checks"] and all(c["ok"] for c in report["checks"].values()), path
        assert report["results"] and all(r["errors"] == 0 for r in report["results"]), path
        assert gb.format_table(report).count("\n| ranker") == len(report["results"])
    wide_json = ROOT / "docs" / "gpu" / "2026-11-29-ranker-wide-4-instances.json"
    wide = json.loads(wide_json.read_text())
    (sized,) = [r for r in wide["results"] if r["model"] == "ranker_wide_gpu_fp32"
                and r["batch"] == 256 and r["load"] == "throughput"]  # fmt: skip
    assert sized["p99_ms"] <= 10.0 and wide["instances"] == 4
    measured = json.loads((ROOT / "docs" / "measurements.json").read_text())["measurements"]
    assert measured["gpu_mlp_rps_4_instances_p99_10ms"]["value"] == round(sized["rps"])
    doc = (ROOT / "docs" / "benchmarks-batching.md").read_text()
    assert f"{round(sized['rps']):,} rps" in doc and f"{sized['p99_ms']:.2f} ms" in doc
