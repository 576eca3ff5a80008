"""GPU benchmark of the ranker on Triton (``bench/gpu.sh`` drives it).

``prepare`` runs here (CPU, repo venv): it exports each ranker's weights from
its FP32 ONNX and writes reference rows with their FP32 scores into a kit
directory. ``run`` runs on the CUDA machine, which has no network, no
tritonclient and no grpc health package: only the standard library, NumPy and
grpcio are imported. It writes the GPU model repository (``ranker_gpu``
variants: FP32/FP16 x with/without dynamic batching), starts the pytriton
tritonserver from the kit, checks every variant's scores against the
reference, then measures throughput and p50/p99 at several rows-per-request
with closed-loop gRPC clients in several processes (one Python client process
saturates near 10k rps), and writes JSON + a markdown table stamped with the
GPU model (nvidia-smi) and the date. ``table`` re-renders a result file.

    python -m bench.gpu_bench prepare --build build --kit build/gpu_kit
    python -m bench.gpu_bench run --kit build/gpu_kit --triton /tmp/tri --out results/
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing as mp
import os
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "triton_models" / "ranker_gpu" / "config.python.pbtxt.tmpl"
MODEL_PY = ROOT / "triton_models" / "ranker_gpu" / "model.py"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
INPUT, OUTPUT = "input__0", "output__0"
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3}  # max |score - FP32 onnxruntime score|
REF_ROWS = 256


# --- ModelInferRequest / ModelInferResponse on the wire (no tritonclient there) ---


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def encode_infer_request(model: str, rows: np.ndarray, version: str = "1") -> bytes:
    """inference.ModelInferRequest with one FP32 input (raw contents) and one output."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    shape = b"".join(_varint(int(d)) for d in rows.shape)
    tensor = _field(1, INPUT.encode()) + _field(2, b"FP32") + _field(3, shape)
    return (
        _field(1, model.encode())
        + _field(2, version.encode())
        + _field(5, tensor)
        + _field(6, _field(1, OUTPUT.encode()))
        + _field(7, rows.tobytes())
    )


def decode_raw_outputs(body: bytes) -> list[bytes]:
    """``raw_output_contents`` (field 6) of a serialized ModelInferResponse."""
    out, i = [], 0
    while i < len(body):
        key, i = _read_varint(body, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _read_varint(body, i)
        elif wire == 2:
            n, i = _read_varint(body, i)
            if num == 6:
                out.append(body[i : i + n])
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire} at byte {i}")
    return out


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = b[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


# --- kit (prepared here) and GPU model repository (written there) ---


@dataclasses.dataclass(frozen=True)
class Variant:
    net: str
    precision: str
    batching: bool

    @property
    def name(self) -> str:
        return f"{self.net}_gpu_{self.precision}" + ("" if self.batching else "_nobatch")


def variants(
    nets: Sequence[str], precisions: Sequence[str], batching: Sequence[bool]
) -> list[Variant]:
    return [Variant(n, p, b) for n in nets for p in precisions for b in batching]


def onnx_weights(path: Path) -> dict[str, np.ndarray]:
    """mean, scale, w0.., b0.. from an ONNX written by ``triton_models.build.mlp_to_onnx``."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    missing = {"mean", "scale", "w0", "b0"} - set(inits)
    if missing:
        raise ValueError(f"{path}: not a ranker MLP export, missing {sorted(missing)}")
    return {k: np.asarray(v, dtype=np.float32) for k, v in inits.items()}


def prepare(build: Path, kit: Path) -> dict[str, Any]:
    """Weights, reference rows and scores for ``ranker`` (and ``ranker_wide`` where
    ``triton_models.quantize`` trained it), plus INT8 calibration rows."""
    import onnxruntime as ort

    from triton_models import build as tb

    kit.mkdir(parents=True, exist_ok=True)
    ds = tb.ranker_dataset()
    _, test = tb._split(ds)
    rows = np.ascontiguousarray(ds.x[test][:REF_ROWS], dtype=np.float32)
    sources = {"ranker": build / "training" / "ranker_v1.onnx",
               "ranker_wide": build / "quant" / "ranker_wide.onnx"}  # fmt: skip
    nets = {}
    for net, src in sources.items():
        if not src.exists():
            continue
        np.savez(kit / f"weights_{net}.npz", **onnx_weights(src))  # type: ignore[arg-type]
        (kit / f"onnx_{net}.onnx").write_bytes(src.read_bytes())  # for the TensorRT builder
        sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        expected = np.asarray(sess.run(None, {sess.get_inputs()[0].name: rows})[0]).reshape(-1)
        np.savez(kit / f"ref_{net}.npz", rows=rows, expected=expected.astype(np.float32))
        nets[net] = {"n_features": int(rows.shape[1]), "onnx": str(src)}
    from triton_models.quantize import calibration_rows

    np.save(kit / "calib_ranker.npy", calibration_rows(ds))  # TensorRT INT8 calibration
    if "ranker" not in nets:
        raise FileNotFoundError(f"{sources['ranker']} missing: run `make build` first")
    manifest = {"nets": nets, "prepared": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (kit / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def render_gpu_config(
    v: Variant, n_features: int, *, instances: int = 2, max_batch: int = 1024,
    delay_us: int = 200, kind: str = "KIND_GPU",
) -> str:  # fmt: skip
    batching = (
        f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}"
        if v.batching
        else "# no dynamic_batching: each request runs alone"
    )
    return string.Template(TEMPLATE.read_text()).substitute(
        name=v.name, max_batch_size=max_batch, n_features=n_features, instances=instances,
        kind=kind, precision=v.precision, dynamic_batching=batching,
    )  # fmt: skip


def write_gpu_repository(
    kit: Path, repo: Path, chosen: Sequence[Variant], **config: Any
) -> list[str]:
    manifest = json.loads((kit / "manifest.json").read_text())
    names = []
    for v in chosen:
        vdir = repo / v.name / "1"
        vdir.mkdir(parents=True, exist_ok=True)
        (vdir / "model.py").write_bytes(MODEL_PY.read_bytes())
        (vdir / "weights.npz").write_bytes((kit / f"weights_{v.net}.npz").read_bytes())
        n = manifest["nets"][v.net]["n_features"]
        (repo / v.name / "config.pbtxt").write_text(render_gpu_config(v, n, **config))
        names.append(v.name)
    return names


# --- Triton process ---


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Triton:
    """tritonserver from an unpacked pytriton wheel; its own process group."""

    def __init__(self, root: Path, repo: Path, log: Path) -> None:
        self.grpc_port, self.http_port, metrics = _free_ports(3)
        cmd = [
            str(root / "bin" / "tritonserver"), f"--model-repository={repo}",
            f"--backend-directory={root / 'backends'}", "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}", "--http-address=127.0.0.1",
            f"--http-port={self.http_port}", f"--metrics-port={metrics}",
            "--exit-timeout-secs=5",
        ]  # fmt: skip
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


# --- load generation: closed loop, several processes, raw bytes over grpc.aio ---


def _client(args: tuple[str, bytes, int, float, float, float]) -> tuple[bytes, int]:
    """One process: ``conc`` workers from ``start`` (wall clock); latencies (s) of the
    measured window as float64 bytes, and the error count."""
    address, body, conc, start, warmup_s, duration_s = args
    import grpc

    async def go() -> tuple[list[float], int]:
        lat: list[float] = []
        errors = 0
        async with grpc.aio.insecure_channel(address) as ch:
            call = ch.unary_unary(METHOD)
            await asyncio.sleep(max(0.0, start - time.time()))
            t_measure = time.monotonic() + warmup_s
            t_end = t_measure + duration_s

            async def worker() -> None:
                nonlocal errors
                while (t0 := time.monotonic()) < t_end:
                    try:
                        await call(body, timeout=10)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    if t0 >= t_measure:
                        lat.append(time.monotonic() - t0)

            await asyncio.gather(*(worker() for _ in range(conc)))
        return lat, errors

    lat, errors = asyncio.run(go())
    return np.asarray(lat, dtype=np.float64).tobytes(), errors


def closed_loop(
    address: str, body: bytes, procs: int, conc: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """``procs`` x ``conc`` requests in flight; throughput and latency percentiles."""
    start = time.time() + 2.0  # spawn + imports, so every process measures the same window
    jobs = [(address, body, conc, start, warmup_s, duration_s)] * procs
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(_client, jobs)
    lat = np.concatenate([np.frombuffer(b, dtype=np.float64) for b, _ in parts]) * 1e3
    errors = sum(e for _, e in parts)
    if lat.size == 0:
        return {"ok": 0, "errors": errors}
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {
        "ok": int(lat.size), "errors": errors, "rps": round(lat.size / duration_s, 1),
        "p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3), "in_flight": procs * conc,
    }  # fmt: skip


class GpuSampler:
    """nvidia-smi utilization samples every 0.5 s while a load runs (best effort)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            value = util_pct(_smi("utilization.gpu"))
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def util_pct(text: str) -> float | None:
    """nvidia-smi's "37 %" as 37.0; None for "[N/A]" or nothing."""
    value = text.split(" ")[0]
    return float(value) if value.isdigit() else None


def _smi(query: str) -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


def check_scores(address: str, kit: Path, v: Variant, rows: int = 64) -> dict[str, Any]:
    """One real call: the variant's scores against the FP32 onnxruntime reference."""
    import grpc

    ref = np.load(kit / f"ref_{v.net}.npz")
    x, want = ref["rows"][:rows], ref["expected"][:rows]
    with grpc.insecure_channel(address) as ch:
        body = ch.unary_unary(METHOD)(encode_infer_request(v.name, x), timeout=30)
    raw = decode_raw_outputs(body)
    got = np.frombuffer(raw[0], dtype=np.float32) if raw else np.zeros(0, np.float32)
    if got.shape != want.shape:
        return {"ok": False, "why": f"{got.size} scores for {rows} rows"}
    diff = float(np.max(np.abs(got - want)))
    return {"ok": diff <= TOLERANCE[v.precision], "max_abs_diff": diff,
            "tolerance": TOLERANCE[v.precision]}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    kit, out = args.kit.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((kit / "manifest.json").read_text())
    nets = [n for n in args.nets.split(",") if n in manifest["nets"]]
    chosen = variants(nets, args.precisions.split(","), [True, False])
    repo = Path(args.workdir).resolve() / "model_repository"
    names = write_gpu_repository(kit, repo, chosen, instances=args.instances,
                                 max_batch=args.max_batch, delay_us=args.delay_us)  # fmt: skip
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.gpu_bench", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpu": _smi("name,driver_version,memory.total") or "no nvidia-smi",
        "instances": args.instances, "delay_us": args.delay_us, "models": names,
        "checks": {}, "results": [],
    }  # fmt: skip
    triton = Triton(args.triton, repo, out / "triton.log")
    try:
        triton.wait_ready(args.ready_timeout)
        address = f"127.0.0.1:{triton.grpc_port}"
        for v in chosen:
            report["checks"][v.name] = check_scores(address, kit, v)
            print(f"check {v.name}: {report['checks'][v.name]}", flush=True)
        for v in chosen:
            if not report["checks"][v.name]["ok"]:
                continue
            ref = np.load(kit / f"ref_{v.net}.npz")["rows"]
            for batch in args.batches:
                body = encode_infer_request(v.name, np.resize(ref, (batch, ref.shape[1])))
                for load, procs, conc in (("latency", 1, 1),
                                          ("throughput", args.procs, args.conc)):  # fmt: skip
                    with GpuSampler() as gpu:
                        r = closed_loop(address, body, procs, conc, args.warmup, args.duration)
                    r |= {"model": v.name, "net": v.net, "precision": v.precision,
                          "batching": v.batching, "batch": batch, "load": load,
                          "rows_per_s": round(r.get("rps", 0) * batch, 1),
                          "gpu_util_pct": round(float(np.mean(gpu.samples)), 1)
                          if gpu.samples else None}  # fmt: skip
                    report["results"].append(r)
                    print(format_row(r), flush=True)
                    # after every row: a run cut off by its time limit keeps what it measured
                    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    finally:
        triton.stop()
    return report


# --- output ---


def format_row(r: dict[str, Any]) -> str:
    return (
        f"| {r['model']} | {r['batch']} | {r['load']} ({r.get('in_flight', '?')}) | "
        f"{r.get('rps', 0):,.0f} | {r.get('rows_per_s', 0):,.0f} | "
        f"{r.get('p50_ms', float('nan')):.2f} | "
        f"{r.get('p99_ms', float('nan')):.2f} | {r.get('errors', 0)} | "
        f"{'' if r.get('gpu_util_pct') is None else r['gpu_util_pct']} |"
    )


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of a ``run`` report, with its GPU stamp, date and command."""
    head = [
        f"GPU: {report.get('gpu')}; date: {report.get('date')}; Triton instances per model: "
        f"{report.get('instances')}; dynamic batching delay {report.get('delay_us')} us",
        f"Command: `{report.get('command')}`",
        "",
        "| model | rows/request | load (in flight) | req/s | rows/s | p50 ms | p99 ms | errors "
        "| GPU util % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    failed = [
        f"- check failed: {k}: {v}" for k, v in report.get("checks", {}).items() if not v["ok"]
    ]
    return "\n".join(
        head + [format_row(r) for r in report["results"]] + (["", *failed] if failed else [])
    )


def _batches(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="export weights + reference scores (CPU side)")
    pr.add_argument("--build", type=Path, default=ROOT / "build")
    pr.add_argument("--kit", type=Path, default=ROOT / "build" / "gpu_kit")
    r = sub.add_parser("run", help="start Triton on the GPU and measure")
    r.add_argument("--kit", type=Path, default=ROOT / "build" / "gpu_kit")
    r.add_argument("--triton", type=Path, required=True, help="unpacked pytriton/tritonserver")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--workdir", type=Path, default=Path("/tmp/inferline-gpu"))
    r.add_argument("--nets", default="ranker,ranker_wide")
    r.add_argument("--precisions", default="fp32,fp16")
    r.add_argument("--batches", type=_batches, default=[1, 32, 256], help="rows per request")
    r.add_argument("--instances", type=int, default=2)
    r.add_argument("--max-batch", type=int, default=1024)
    r.add_argument("--delay-us", type=int, default=200)
    r.add_argument("--procs", type=int, default=4, help="client processes (throughput load)")
    r.add_argument("--conc", type=int, default=16, help="in flight per client process")
    r.add_argument("--warmup", type=float, default=0.5)
    r.add_argument("--duration", type=float, default=2.0)
    r.add_argument("--ready-timeout", type=float, default=240.0)
    t = sub.add_parser("table", help="markdown table of a result JSON")
    t.add_argument("json", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "prepare":
        print(json.dumps(prepare(args.build, args.kit), indent=2))
        return 0
    if args.cmd == "table":
        print(format_table(json.loads(args.json.read_text())))
        return 0
    report = run(args)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu.md").write_text(format_table(report) + "\n")
    print(format_table(report))
    try:
        from bench.plots import gpu_plot

        gpu_plot(report, args.out / "gpu.png")
    except ImportError as e:  # matplotlib is optional there
        print(f"no plot: {e}")
    ok = all(c["ok"] for c in report["checks"].values()) and report["results"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
