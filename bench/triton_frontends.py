"""What one inference costs Triton, by frontend and by how many arrive together.

The router calls Triton over HTTP/1.1 with binary tensors, not gRPC, to save
its own CPU (docs/benchmarks.md). This measures what that choice costs Triton,
and how Triton's CPU per request falls as its dynamic batcher gets more
requests per execution, which sets Triton's share of the full path at
concurrency 32 (the router delivers requests one at a time, so batches stay
small).

One tritonserver on the demo's model repository; h2load replays the fraud
GBDT's one-row request (version 1) as gRPC ``ModelInfer`` and as the HTTP/1.1
binary-tensor POST the router sends, alternating runs at each concurrency. CPU
per request is Triton's process group (server and Python-backend stub) from
``/proc``; requests per execution come from Triton's own counters
(``nv_inference_count`` / ``nv_inference_exec_count``).

    python -m bench.triton_frontends --build build
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.chain import machine_info
from bench.h2load import grpc_frame, run_for_cpu
from bench.loadgen import TRITON_METHOD
from bench.triton_cpu import fraud_request, fraud_row
from router.backends.triton_http import inference_header

PROTOCOLS = ("grpc", "http")
_COUNT = re.compile(r"^nv_inference_(count|exec_count)\{([^}]*)\} (\S+)$", re.M)


def http_request() -> tuple[bytes, bytes]:
    """The router's request for the same row as ``fraud_request``: the JSON
    inference header (built by the router's own client code) and the body
    (header + float32 bytes)."""
    row = fraud_row()
    n, f = row.shape
    head = inference_header(n, f, "input__0", "output__0")
    return head, head + row.tobytes()


def executions(metrics_text: str, model: str) -> tuple[float, float]:
    """(inferences, executions) Triton counted for ``model``, all versions."""
    totals = {"count": 0.0, "exec_count": 0.0}
    for kind, labels, value in _COUNT.findall(metrics_text):
        if f'model="{model}"' in labels:
            totals[kind] += float(value)
    return totals["count"], totals["exec_count"]


def h2load_args(
    protocol: str, url: str, body: Path, head_len: int, c: int, secs: float
) -> list[str]:
    """One duration-bound h2load run: gRPC on ``--clients`` x streams (as the
    overhead benchmark drives Triton), HTTP/1.1 on one connection per request in
    flight (as the router's pool does)."""
    if protocol == "grpc":
        clients = min(c, 4)
        args = ["-c", str(clients), "-m", str(max(1, c // clients))]
        args += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        return ["-D", f"{secs:g}", *args, f"--data={body}", f"http://{url}{TRITON_METHOD}"]
    args = ["--h1", "-c", str(c), "-m", "1", "-H", "content-type: application/octet-stream"]
    args += ["-H", f"inference-header-content-length: {head_len}"]
    return [
        "-D",
        f"{secs:g}",
        *args,
        f"--data={body}",
        f"http://{url}/v2/models/fraud/versions/1/infer",
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from scripts.stack import TritonServer

    machine = machine_info(args.machine)
    repo = args.build.resolve() / "model_repository"
    logs = args.build / "logs" / time.strftime("triton-frontends-%H%M%S")
    runs: dict[int, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as d, TritonServer(repo, logs) as triton:
        grpc_body = Path(d) / "req.grpc"
        grpc_body.write_bytes(grpc_frame(fraud_request()))
        head, body = http_request()
        http_body = Path(d) / "req.http"
        http_body.write_bytes(body)
        files = {"grpc": (triton.grpc_url, grpc_body), "http": (triton.http_url, http_body)}

        def metrics() -> tuple[float, float]:
            with urllib.request.urlopen(f"http://{triton.metrics_url}/metrics", timeout=5) as r:
                return executions(r.read().decode(), "fraud")

        def once(protocol: str, c: int, secs: float) -> dict[str, float]:
            url, path = files[protocol]
            n0, e0 = metrics()
            r = run_for_cpu(triton.pid, h2load_args(protocol, url, path, len(head), c, secs))
            n1, e1 = metrics()
            return {
                "cpu_us": r.cpu_us_per_request,
                "rps": r.result.succeeded / secs,
                "per_execution": (n1 - n0) / max(e1 - e0, 1.0),
            }

        for protocol in PROTOCOLS:  # warm-up: connections, the stub, caches
            once(protocol, 4, 2.0)
        for c in args.concurrency:
            runs[c] = {p: [] for p in PROTOCOLS}
            for i in range(args.repeats):
                for protocol in PROTOCOLS if i % 2 == 0 else PROTOCOLS[::-1]:
                    r = once(protocol, c, args.duration)
                    runs[c][protocol].append(r)
                    print(f"c{c} {protocol}: {json.dumps({k: round(v, 1) for k, v in r.items()})}",
                          flush=True)  # fmt: skip
    median = {
        c: {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in by.items()}
        for c, by in runs.items()
    }
    return {
        "machine": machine,
        "plan": {"repeats": args.repeats, "duration": args.duration},
        "runs": runs,
        "median": median,
    }


def markdown(result: dict[str, Any], command: str) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['label']}: {m['cpus']} vCPU, {m['mem_gib']} GiB, {m['os']}, tritonserver "
        f"of the nvidia-pytriton {m['versions'].get('nvidia-pytriton', '?')} wheel; {m['date']}; "
        f"load average at start {' '.join(m['loadavg_start'])}.",
        "",
        f"    {command}",
        "",
        "| concurrency | gRPC: Triton CPU / req | HTTP/1.1: Triton CPU / req | HTTP / gRPC "
        "| gRPC rps | HTTP rps | requests per execution (gRPC / HTTP) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c, by in result["median"].items():
        g, h = by["grpc"], by["http"]
        lines.append(
            f"| {c} | {g['cpu_us']:.0f} us | {h['cpu_us']:.0f} us "
            f"| {h['cpu_us'] / g['cpu_us']:.2f} "
            f"| {g['rps']:,.0f} | {h['rps']:,.0f} "
            f"| {g['per_execution']:.1f} / {h['per_execution']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.triton_frontends", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--build", type=Path, default=Path("build"))
    p.add_argument("--machine", default="2 vCPU dev VM")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--repeats", type=int, default=3, help="runs per protocol and concurrency")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.duration <= 0 or min(args.concurrency) < 1:
        p.error("--repeats, --duration and --concurrency must be positive")
    result = run(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    given = sys.argv[1:] if argv is None else argv
    print(markdown(result, " ".join(["python -m bench.triton_frontends", *given])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
