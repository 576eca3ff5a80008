"""The quantized and GPU model variants against the real tritonserver (issue 7).

- ``ranker_int8`` served by Triton scores exactly as the INT8 ONNX does in
  process, and close to the FP32 ranker; malformed rows are rejected per request.
- bench/gpu_bench.py's hand-encoded gRPC client and its multi-process closed
  loop work against a real Triton (here the CPU models; the GPU run uses the same code).
- ``ranker_gpu`` refuses to load on this CPU-only host with a message naming
  what is missing, and Triton refuses its KIND_GPU config without a GPU.
- ``python -m bench.sweep --quick`` runs end to end and picks a setting.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import InferenceServerClient, InferInput
from tritonclient.utils import InferenceServerException

from bench import gpu_bench as gb
from bench import sweep
from scripts.stack import TritonServer
from triton_models import build as tb
from triton_models import quantize as q


@pytest.fixture(scope="module")
def quant_build(demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo build's fraud + ranker with ranker_int8 added (as the
    build hook adds it), so the shared demo repository is left as it is."""
    out = tmp_path_factory.mktemp("quant-build")
    shutil.copytree(demo_build / "training", out / "training")
    for model in ("fraud", "ranker", q.INT8_MODEL):
        if (demo_build / "model_repository" / model).is_dir():
            shutil.copytree(demo_build / "model_repository" / model,
                            out / "model_repository" / model)  # fmt: skip
    if not (out / "model_repository" / q.INT8_MODEL).is_dir():
        pipeline = pickle.loads((out / "training" / "ranker_v1.pkl").read_bytes())
        q.add_quantized_models(out, out / "model_repository", pipeline, tb.ranker_dataset())
    return out


@pytest.fixture(scope="module")
def triton(quant_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with TritonServer(quant_build / "model_repository", tmp_path_factory.mktemp("logs")) as t:
        yield t


def _infer(client: InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    inp = InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    out = client.infer(model, [inp], model_version="1").as_numpy("output__0")
    assert out is not None
    return np.asarray(out).reshape(-1)


def test_int8_ranker_serves_its_onnx(triton: TritonServer, quant_build: Path) -> None:
    ds = tb.ranker_dataset()
    _, test = tb._split(ds)
    x = ds.x[test][:200]
    int8 = quant_build / "model_repository" / q.INT8_MODEL / "1" / "model.onnx"
    want = q.predict(int8, x)
    fp32 = q.predict(quant_build / "training" / "ranker_v1.onnx", x)
    with InferenceServerClient(triton.grpc_url) as c:
        assert c.is_model_ready(q.INT8_MODEL, "1")
        batch = _infer(c, q.INT8_MODEL, x[:64])
        singles = np.concatenate([_infer(c, q.INT8_MODEL, x[i : i + 1]) for i in range(64, 200)])
        got = np.concatenate([batch, singles])
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert np.abs(got - fp32).mean() < 0.01 and np.abs(got - fp32).max() < 0.08
        bad = x[:2].copy()
        bad[1, 3] = np.nan
        with pytest.raises(InferenceServerException, match="NaN or Inf"):
            _infer(c, q.INT8_MODEL, bad)
        meta = json.loads((int8.parent / "metadata.json").read_text())
        assert meta["tier"] == "cheap" and meta["quantized_from"]["model"] == "ranker"


def test_gpu_bench_client_against_real_triton(triton: TritonServer, quant_build: Path) -> None:
    """The GPU script's client, minus the GPU: wire format, scores, closed loop."""
    import grpc

    x = tb.ranker_dataset().x[-32:]
    want = q.predict(quant_build / "training" / "ranker_v1.onnx", x)
    with grpc.insecure_channel(triton.grpc_url) as ch:
        body = ch.unary_unary(gb.METHOD)(gb.encode_infer_request("ranker", x), timeout=10)
    (raw,) = gb.decode_raw_outputs(body)
    np.testing.assert_allclose(np.frombuffer(raw, np.float32), want, atol=1e-6)
    r = gb.closed_loop(triton.grpc_url, gb.encode_infer_request("ranker", x[:1]), procs=2,
                       conc=2, warmup_s=0.3, duration_s=1.0)  # fmt: skip
    assert r["errors"] == 0 and r["ok"] > 50 and r["in_flight"] == 4
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert r["rps"] == pytest.approx(r["ok"] / 1.0)


def test_ranker_gpu_refuses_cpu_only_hosts(quant_build: Path, tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    gb.prepare(quant_build, kit)
    fp32 = gb.Variant("ranker", "fp32", True)
    gb.write_gpu_repository(kit, tmp_path / "cpu", [fp32], instances=1, kind="KIND_CPU")
    gb.write_gpu_repository(kit, tmp_path / "gpu", [fp32], instances=1)
    with TritonServer(tmp_path / "cpu", tmp_path / "logs", model_control_mode="explicit") as t:
        status, body = t.load_model(fp32.name)
    assert status == 400
    try:
        import torch  # type: ignore[import-not-found]  # noqa: F401

        assert "sees no CUDA device" in body
    except ImportError:
        assert "needs PyTorch with CUDA in the model process" in body
        assert "serve the 'ranker' model instead" in body
    with TritonServer(tmp_path / "gpu", tmp_path / "logs", model_control_mode="explicit") as t:
        status, body = t.load_model(fp32.name)
    assert status == 400 and "gpu" in body.lower()


def test_quick_sweep_end_to_end(quant_build: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    rc = sweep.main([
        "--quick", "--build", str(quant_build), "--models", f"fraud,{q.INT8_MODEL}",
        "--json", str(out), "--plots", str(tmp_path / "img"), "--markdown", str(tmp_path / "s.md"),
        "--measurements", str(tmp_path / "m.json"), "--log-dir", str(tmp_path / "logs"),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert [(r["model"], r["setting"]["delay_us"]) for r in report["results"]] == [
        ("fraud", 0), ("fraud", 1000), (q.INT8_MODEL, 0), (q.INT8_MODEL, 1000)
    ]  # fmt: skip
    for r in report["results"]:
        assert [p["concurrency"] for p in r["points"]] == [1, 8]
        for p in r["points"]:
            assert p["n"] > 20 and p["bad_status"] == 0 and p["triton_failures"] == 0
            # Count-based h2load runs end with nothing in flight: nothing is cancelled.
            assert p["triton_canceled"] == 0
            assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] < 100
            assert 0 < p["triton_cpu_ms_per_req"] < 20
    # A 1 ms queue delay costs light traffic about a millisecond.
    for model in ("fraud", q.INT8_MODEL):
        c1 = {r["setting"]["delay_us"]: r["points"][0]["p50_ms"] for r in report["results"]
              if r["model"] == model}  # fmt: skip
        assert c1[1000] > c1[0] + 0.5
    assert set(report["picks"]) == {"fraud", q.INT8_MODEL}
    assert all(p["within_budget"] for p in report["picks"].values())
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [
        "sweep-fraud.png", f"sweep-{q.INT8_MODEL}.png"
    ]  # fmt: skip
    econ = json.loads((tmp_path / "m.json").read_text())["triton_cpu_batching_pick"]["values"]
    assert econ["fraud"]["rps_per_core"] > 0 and report["wall_s"] < 120
