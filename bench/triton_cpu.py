"""Triton's CPU per request (server + Python-backend stub), two allocators side by side.

Starts two tritonservers on the demo's model repository, one per allocator
(scripts/allocator.py), and replays one serialized ``ModelInfer`` of the fraud
GBDT (version 1, one row) with h2load at concurrency 1, alternating runs
between the two (A B, B A, ...) so the VM's drift hits both alike. CPU comes
from ``/proc`` for each server's process group (tritonserver and its stubs).

    python -m bench.triton_cpu --build build
    python -m bench.triton_cpu --build build --allocator jemalloc --against-allocator system
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.h2load import grpc_frame, run_for_cpu
from bench.loadgen import TRITON_METHOD, triton_request
from scripts.allocator import MODES


def fraud_row(seed: int = 1) -> np.ndarray:
    """One [1, 33] float32 row of the fraud model's input, the same for a seed."""
    return np.random.default_rng(seed).random((1, 33), dtype=np.float32)


def fraud_request(seed: int = 1) -> bytes:
    row = fraud_row(seed)
    return triton_request("fraud", row, version="1", input_name="input__0", output_name="output__0")


def main(argv: list[str] | None = None) -> int:
    from scripts.stack import TritonServer

    p = argparse.ArgumentParser(prog="python -m bench.triton_cpu", description=__doc__)
    p.add_argument("--build", type=Path, default=Path("build"))
    p.add_argument("--allocator", choices=MODES, default="jemalloc")
    p.add_argument("--against-allocator", choices=MODES, default="system")
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    names = (args.allocator, args.against_allocator)
    if names[0] == names[1]:
        p.error("--allocator and --against-allocator must differ")
    repo = args.build.resolve() / "model_repository"
    logs = args.build / "logs" / time.strftime("triton-cpu-%H%M%S")
    with tempfile.TemporaryDirectory() as d:
        body = Path(d) / "req.grpc"
        body.write_bytes(grpc_frame(fraud_request()))
        with (
            TritonServer(repo, logs, allocator=names[0]) as a,  # type: ignore[arg-type]
            TritonServer(repo, logs, allocator=names[1]) as b,  # type: ignore[arg-type]
        ):
            servers = dict(zip(names, (a, b), strict=True))
            cpu: dict[str, list[float]] = {n: [] for n in names}

            def run(t: TritonServer, n: int) -> float:
                h2 = ["-n", str(n), "-c", "1", "-m", "1", f"--data={body}"]
                h2 += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
                h2 += [f"http://{t.grpc_url}{TRITON_METHOD}"]
                return run_for_cpu(t.pid, h2).cpu_us_per_request

            for t in servers.values():
                run(t, 1500)  # warm-up
            for i in range(args.repeats):
                for name in names if i % 2 == 0 else names[::-1]:
                    cpu[name].append(run(servers[name], args.requests))
                    print(f"{name}: {cpu[name][-1]:.0f} us Triton CPU / request", flush=True)
    new, ref = (statistics.median(cpu[n]) for n in names)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')}; fraud v1 ModelInfer, concurrency 1; "
        f"{args.repeats} alternating runs of {args.requests}"
    )
    print(f"| {names[0]} | {names[1]} | ratio |\n| --- | --- | --- |")
    print(f"| {new:.0f} us | {ref:.0f} us | {new / ref:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
