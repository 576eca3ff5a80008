"""ONNX -> TensorRT FP16 and INT8 engines, written as Triton ``tensorrt_plan`` versions.

Runs where the ``tensorrt`` Python package and a CUDA device are present (the
NGC Triton/TensorRT images); the pytriton build used here has neither the
TensorRT backend nor TensorRT, so elsewhere the CLI says so and exits 0 (1
with ``--require``). Config generation, the calibration batches and the
calibration cache are plain Python and tested without TensorRT.

Layout written (``--name ranker_trt``):

    <repo>/ranker_trt/config.pbtxt            platform tensorrt_plan, KIND_GPU, dynamic batching
    <repo>/ranker_trt/1/model.plan            FP16
    <repo>/ranker_trt/2/model.plan            INT8 (FP16 fallback), IInt8EntropyCalibrator2
    <repo>/ranker_trt/2/calibration.cache     TensorRT's cache (+ .json: what made it)

The ONNX I/O is renamed to Triton's ``input__0``/``output__0`` first (the
builder's own graphs already use them; an engineer's export may not), so the
plans take the router's tensors unchanged. Engines have one optimization
profile, batch 1..max (optimal at ``opt_batch``). Implicit INT8 calibration is
deprecated in TensorRT 10 (explicit QDQ is the successor: the QDQ ONNX from
``triton_models.quantize`` can be built with ``--int8-from-qdq``); the
calibrator stays because it needs no re-export of the model.

    python -m triton_models.tensorrt_build --onnx build/training/ranker_v1.onnx \\
        --calibration build/gpu_kit/calib_ranker.npy --repository build/trt_repository
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

INPUT, OUTPUT = "input__0", "output__0"
MAX_BATCH = 1024
OPT_BATCH = 64
CALIB_BATCH = 64
WORKSPACE_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class PlanSpec:
    version: int
    precision: str  # "fp16" | "int8"


PLANS = (PlanSpec(1, "fp16"), PlanSpec(2, "int8"))
PLAN_VERSIONS = tuple(spec.version for spec in PLANS)


def render_plan_config(
    name: str,
    n_features: int,
    *,
    max_batch: int = MAX_BATCH,
    instances: int = 1,
    delay_us: int = 200,
    preferred: tuple[int, ...] = (),
    versions: tuple[int, ...] = PLAN_VERSIONS,
) -> str:
    """config.pbtxt for the plans: GPU instances, dynamic batching, the listed versions."""
    pref = f" preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else ""
    return "\n".join(
        [
            f"# {name}: TensorRT engines of the ranker MLP (written by",
            "# triton_models/tensorrt_build.py; version 1 FP16, version 2 INT8).",
            f'name: "{name}"',
            'platform: "tensorrt_plan"',
            f"max_batch_size: {max_batch}",
            f'input [ {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ {n_features} ] }} ]',
            f'output [ {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ 1 ] }} ]',
            f"version_policy: {{ specific {{ versions: [ {', '.join(map(str, versions))} ] }} }}",
            f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us}{pref} }}",
            f'instance_group [ {{ count: {instances} kind: KIND_GPU profile: [ "0" ] }} ]',
            "",
        ]
    )


class CalibrationBatches:
    """Fixed-size FP32 batches over the calibration rows (a trailing partial batch is
    dropped: the calibrator binds one shape). ``next_batch`` returns None at the end."""

    def __init__(self, rows: np.ndarray, batch_size: int = CALIB_BATCH) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or len(rows) < batch_size:
            raise ValueError(f"need at least {batch_size} rows of [N, F], got {list(rows.shape)}")
        self.rows = rows
        self.batch_size = batch_size
        self._next = 0

    def __len__(self) -> int:
        return len(self.rows) // self.batch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        self.reset()
        while (b := self.next_batch()) is not None:
            yield b

    def next_batch(self) -> np.ndarray | None:
        if self._next >= len(self):
            return None
        i = self._next * self.batch_size
        self._next += 1
        return self.rows[i : i + self.batch_size]

    def reset(self) -> None:
        self._next = 0

    def fingerprint(self) -> str:
        return hashlib.sha256(self.rows.tobytes() + str(self.batch_size).encode()).hexdigest()


class CalibrationCache:
    """TensorRT's opaque calibration cache plus a JSON sidecar naming what made it.

    ``read`` returns the cache only when the sidecar matches the current model and
    calibration rows, so a changed model or data set recalibrates instead of
    silently reusing stale scales.
    """

    def __init__(self, path: Path, model_sha256: str, rows_fingerprint: str) -> None:
        self.path = path
        self.sidecar = path.with_name(path.name + ".json")
        self.key = {"model_sha256": model_sha256, "calibration_rows": rows_fingerprint}

    def read(self) -> bytes | None:
        if not (self.path.exists() and self.sidecar.exists()):
            return None
        try:
            if json.loads(self.sidecar.read_text()) != self.key:
                return None
        except ValueError:
            return None
        return self.path.read_bytes()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(bytes(data))
        self.sidecar.write_text(json.dumps(self.key, sort_keys=True) + "\n")


def tensorrt_status() -> tuple[bool, str]:
    """(usable, why not): TensorRT importable and a CUDA device visible to torch."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt Python package is not installed"
    if importlib.util.find_spec("torch") is None:
        return False, "torch (used for calibration device buffers) is not installed"
    import torch  # type: ignore[import-not-found]

    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    return True, ""


def make_entropy_calibrator(trt: Any, batches: CalibrationBatches, cache: CalibrationCache) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` through one device buffer."""
    import torch  # type: ignore[import-not-found]

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            batches.reset()
            shape = (batches.batch_size, batches.rows.shape[1])
            self.buf = torch.empty(shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            b = batches.next_batch()
            if b is None:
                return None
            self.buf.copy_(torch.from_numpy(b))
            return [int(self.buf.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read()

        def write_calibration_cache(self, data: Any) -> None:
            cache.write(bytes(data))

    return EntropyCalibrator()


def with_triton_io(onnx_bytes: bytes) -> bytes:
    """The model with its single input/output renamed to ``input__0``/``output__0``."""
    import onnx

    from triton_models.onnx_io import with_triton_io as renamed

    return bytes(renamed(onnx.load_from_string(onnx_bytes)).SerializeToString())


def build_engine(
    trt: Any,
    onnx_bytes: bytes,
    spec: PlanSpec,
    n_features: int,
    *,
    max_batch: int = MAX_BATCH,
    opt_batch: int = OPT_BATCH,
    calibrator: Any = None,
) -> bytes:
    """Serialized engine for one precision, one optimization profile (batch 1..max)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (1, n_features), (opt_batch, n_features), (max_batch, n_features))
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    if spec.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if calibrator is not None:
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build the {spec.precision} engine")
    return bytes(plan)


def write_plans(
    repo: Path,
    onnx_path: Path,
    rows: np.ndarray,
    *,
    name: str = "ranker_trt",
    int8_from_qdq: Path | None = None,
    max_batch: int = MAX_BATCH,
    instances: int = 1,
) -> list[Path]:
    """Build both plans and the config; returns the plan files written."""
    import tensorrt as trt  # type: ignore[import-not-found]

    base = with_triton_io(onnx_path.read_bytes())
    n_features = int(rows.shape[1])
    mdir = repo / name
    written = []
    for spec in PLANS:
        vdir = mdir / str(spec.version)
        vdir.mkdir(parents=True, exist_ok=True)
        calibrator = None
        source = base
        if spec.precision == "int8" and int8_from_qdq is not None:
            source = with_triton_io(int8_from_qdq.read_bytes())  # explicit QDQ scales
        elif spec.precision == "int8":
            batches = CalibrationBatches(rows)
            cache = CalibrationCache(
                vdir / "calibration.cache", hashlib.sha256(base).hexdigest(), batches.fingerprint()
            )
            calibrator = make_entropy_calibrator(trt, batches, cache)
        plan = build_engine(trt, source, spec, n_features, max_batch=max_batch,
                            calibrator=calibrator)  # fmt: skip
        (vdir / "model.plan").write_bytes(plan)
        written.append(vdir / "model.plan")
    config = render_plan_config(name, n_features, max_batch=max_batch, instances=instances)
    (mdir / "config.pbtxt").write_text(config)
    return written


def load_rows(path: Path) -> np.ndarray:
    """Calibration rows from ``.npy`` or from ``.npz`` (key ``rows``)."""
    data = np.load(path)
    rows = data["rows"] if isinstance(data, np.lib.npyio.NpzFile) else data
    return np.ascontiguousarray(rows, dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m triton_models.tensorrt_build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--onnx", type=Path, required=True, help="FP32 ranker ONNX")
    p.add_argument("--calibration", type=Path, required=True, help=".npy or .npz (rows)")
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--name", default="ranker_trt")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--int8-from-qdq", type=Path, help="build INT8 from this QDQ ONNX instead")
    p.add_argument("--require", action="store_true", help="exit 1 when TensorRT is unusable")
    args = p.parse_args(argv)
    ok, why = tensorrt_status()
    if not ok:
        print(f"TensorRT plan build skipped: {why}. Plans are built where TensorRT and a "
              "CUDA device are present (e.g. the NGC tritonserver image); the config, "
              "calibration batches and cache are tested without it.")  # fmt: skip
        return 1 if args.require else 0
    rows = load_rows(args.calibration)
    for plan in write_plans(args.repository, args.onnx, rows, name=args.name,
                            int8_from_qdq=args.int8_from_qdq, max_batch=args.max_batch,
                            instances=args.instances):  # fmt: skip
        print(f"wrote {plan} ({plan.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
