"""Throughput and server CPU with h2load, a native HTTP/2 load generator.

A Python client spends about as much CPU per request as the server it measures
(0.2-0.8 ms on these 2-core machines), so client-bound numbers understate the
server. h2load replays one prebuilt gRPC request (5-byte frame prefix +
serialized protobuf) over h2c at a fraction of that cost.

Caveat: h2load counts any HTTP 200 as "succeeded", and gRPC reports failures
with HTTP 200 plus a ``grpc-status`` trailer that h2load never looks at. So the
same bytes are first sent with a real gRPC call and the response is checked,
and with ``--start-stack`` Triton's own success/failure counters are compared
before and after each run (every router request makes one Triton inference).

    python -m bench.h2load --start-stack --build build -c 4 -m 8 --duration 10
    python -m bench.h2load --triton 127.0.0.1:Q -n 20000 -c 2 -m 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.loadgen import Target, add_target_args, check_response, make_targets

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_TIME_ROW = re.compile(
    r"time for request:\s+(?P<min>[\d.]+)(?P<u1>us|ms|s)\s+(?P<max>[\d.]+)(?P<u2>us|ms|s)"
    r"\s+(?P<mean>[\d.]+)(?P<u3>us|ms|s)\s+(?P<sd>[\d.]+)(?P<u4>us|ms|s)"
)
_FINISHED = re.compile(r"finished in (?P<t>[\d.]+)(?P<u>us|ms|s), (?P<rps>[\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def grpc_frame(message: bytes) -> bytes:
    """Length-prefixed gRPC message: flag 0 (uncompressed) + big-endian uint32 length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclasses.dataclass(frozen=True)
class H2LoadResult:
    """h2load's summary. ``succeeded`` means HTTP 2xx, not grpc-status OK."""

    total: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    req_per_s: float
    finished_ms: float
    latency_ms: dict[str, float]  # min, max, mean, sd of "time for request"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_h2load(text: str) -> H2LoadResult:
    """Parse h2load's stdout; raise ValueError naming the missing line."""
    found = {}
    for name, rx in (("finished", _FINISHED), ("requests", _REQUESTS), ("status codes", _STATUS)):
        m = rx.search(text)
        if m is None:
            raise ValueError(f"no '{name}' line in h2load output:\n{text[-2000:]}")
        found[name] = m
    t = _TIME_ROW.search(text)
    if t is None:
        raise ValueError(f"no 'time for request' line in h2load output:\n{text[-2000:]}")
    fin, req = found["finished"], found["requests"]
    lat = {
        k: _ms(t[k], t[u]) for k, u in (("min", "u1"), ("max", "u2"), ("mean", "u3"), ("sd", "u4"))
    }
    return H2LoadResult(
        total=int(req["total"]),
        succeeded=int(req["succeeded"]),
        failed=int(req["failed"]),
        errored=int(req["errored"]),
        timeout=int(req["timeout"]),
        status_2xx=int(found["status codes"][1]),
        req_per_s=float(fin["rps"]),
        finished_ms=_ms(fin["t"], fin["u"]),
        latency_ms=lat,
    )


@dataclasses.dataclass(frozen=True)
class CpuRun:
    """One h2load run against a server: what it answered and the CPU it spent."""

    result: H2LoadResult
    cpu_us_per_request: float
    """The server's process-group CPU (``/proc``) per request h2load counted as
    succeeded."""


def run_for_cpu(pgid: int, args: Sequence[str]) -> CpuRun:
    """``h2load ARGS`` against the server whose process group is ``pgid``."""
    from scripts.supervisor import group_cpu_seconds

    c0 = group_cpu_seconds(pgid)
    out = subprocess.run(["h2load", *args], capture_output=True, text=True, check=True).stdout
    cpu_s = group_cpu_seconds(pgid) - c0
    r = parse_h2load(out)
    return CpuRun(r, 1e6 * cpu_s / max(r.succeeded, 1))


def h2load_command(
    target: Target,
    body: Path,
    *,
    requests: int | None,
    duration_s: float | None,
    warmup_s: float,
    clients: int,
    streams: int,
    threads: int = 1,
) -> list[str]:
    exe = shutil.which("h2load")
    if exe is None:
        raise FileNotFoundError("h2load not found: apt-get install -y nghttp2-client")
    cmd = [exe, f"--clients={clients}", f"--max-concurrent-streams={streams}"]
    cmd += [f"--threads={threads}", f"--data={body}"]
    if duration_s is not None:
        cmd += [f"--duration={duration_s:g}", f"--warm-up-time={warmup_s:g}"]
    else:
        cmd += [f"--requests={requests}"]
    for k, v in (("content-type", "application/grpc"), ("te", "trailers"), *target.metadata):
        cmd += ["-H", f"{k}: {v}"]
    return [*cmd, f"http://{target.address}{target.method}"]


def grpc_check(target: Target, timeout_s: float = 10.0) -> str:
    """Send the exact bytes h2load will send, as a real gRPC call, and check the answer."""
    with grpc.insecure_channel(target.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=timeout_s)
        call = ch.unary_unary(target.method)
        body: bytes = call(target.request, metadata=target.metadata, timeout=timeout_s)
    return check_response(target, body)


_METRIC = re.compile(r"^nv_inference_request_(success|failure)\{([^}]*)\} (\S+)$", re.M)


def triton_counts(metrics_text: str, model: str) -> dict[str, float]:
    """Triton's request totals for one model (all versions): successes, failures,
    and the failures with reason CANCELED kept apart as ``canceled`` (h2load
    resets the streams still in flight when a ``--duration`` run ends, at most
    its concurrency; Triton counts them as failed requests)."""
    out = {"success": 0.0, "failure": 0.0, "canceled": 0.0}
    for kind, labels, value in _METRIC.findall(metrics_text):
        if f'model="{model}"' in labels:
            key = "canceled" if kind == "failure" and 'reason="CANCELED"' in labels else kind
            out[key] += float(value)
    return out


_EXEC = re.compile(
    r"^nv_inference_(exec_count|queue_duration_us|compute_infer_duration_us)\{([^}]*)\} (\S+)$",
    re.M,
)


def triton_batching(metrics_text: str, model: str) -> dict[str, float]:
    """Triton's model executions for one model (all versions) and the time its
    requests spent queued and computing (us, summed): requests per execution is
    the batch its dynamic batcher formed."""
    out = {"exec_count": 0.0, "queue_duration_us": 0.0, "compute_infer_duration_us": 0.0}
    for kind, labels, value in _EXEC.findall(metrics_text):
        if f'model="{model}"' in labels:
            out[kind] += float(value)
    return out


def run_target(
    target: Target, args: argparse.Namespace, metrics: Any, model: str
) -> dict[str, Any]:
    from scripts.supervisor import group_cpu_seconds

    with tempfile.TemporaryDirectory() as d:
        body = Path(d) / "request.grpc"
        body.write_bytes(grpc_frame(target.request))
        cmd = h2load_command(
            target,
            body,
            requests=args.requests,
            duration_s=None if args.requests else args.duration,
            warmup_s=args.warmup,
            clients=args.clients,
            streams=args.streams,
            threads=args.threads,
        )
        before = triton_counts(metrics(), model) if metrics else None
        cpu0 = {k: group_cpu_seconds(p) for k, p in target.cpu_pgids.items()}
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.monotonic() - t0
        cpu = {k: group_cpu_seconds(p) - cpu0[k] for k, p in target.cpu_pgids.items()}
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stderr}\n{proc.stdout}")
    r = parse_h2load(proc.stdout)
    out: dict[str, Any] = {"command": cmd, "h2load": dataclasses.asdict(r), "wall_s": wall}
    # CPU covers the whole run, warm-up included, and so must the request count:
    # Triton's counters (one inference per request on either path) when known,
    # else h2load's total with -n, else its rate times the wall time.
    n = r.total if args.requests else r.req_per_s * wall
    if before is not None:
        after = triton_counts(metrics(), model)
        out["triton_delta"] = delta = {k: after[k] - before[k] for k in after}
        n = delta["success"] + delta["failure"] + delta["canceled"]
    if target.cpu_pgids and n > 0:
        out["server_cpu_ms_per_req"] = {k: 1e3 * v / n for k, v in cpu.items()}
    return out


def _describe(e: Exception) -> str:
    if isinstance(e, grpc.RpcError) and isinstance(e, grpc.Call):
        return f"check call failed: {e.code().name}: {e.details()}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.h2load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_args(p)
    p.add_argument("-c", "--clients", type=int, default=2, help="HTTP/2 connections")
    p.add_argument("-m", "--streams", type=int, default=4, help="concurrent streams each")
    p.add_argument("-t", "--threads", type=int, default=1, help="h2load threads")
    p.add_argument("-D", "--duration", type=float, default=10.0, help="s per target")
    p.add_argument("-n", "--requests", type=int, help="count instead of --duration")
    p.add_argument("--warmup", type=float, default=1.0, help="s, with --duration")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from scripts.stack import Stack, stack_from_args
    from scripts.supervisor import StackError

    router, triton, pgids = args.router, args.triton, {}
    stack: Stack | None = None
    try:
        if args.start_stack:
            stack = stack_from_args(args)
            stack.router_env = dict(kv.split("=", 1) for kv in args.router_env)
            stack.start()
            assert stack.triton is not None
            triton, pgids["triton"] = stack.triton.grpc_url, stack.triton.pid
            if stack.router is not None:
                router, pgids["router"] = stack.router.address, stack.router.pid
        if not (router or triton):
            sys.exit("give --router and/or --triton, or --start-stack")
        targets, source = make_targets(args, router, triton, pgids)
        t = stack.triton if stack else None
        metrics = (lambda: t.http_get("/metrics", metrics=True, timeout=5).decode()) if t else None
        result: dict[str, Any] = {"direct_input": source, "targets": {}}
        for target in targets:
            print(f"check {target.name:7} {target.address}: {grpc_check(target)}")
        for target in targets:
            r = run_target(target, args, metrics, args.model)
            result["targets"][target.name] = r
            h, lat = r["h2load"], r["h2load"]["latency_ms"]
            line = (
                f"{target.name:7} {h['req_per_s']:9.1f} req/s  {h['succeeded']} http-ok "
                f"{h['failed'] + h['errored'] + h['timeout']} failed  latency mean "
                f"{lat['mean']:.3f} sd {lat['sd']:.3f} max {lat['max']:.2f} ms"
            )
            cpu = r.get("server_cpu_ms_per_req", {})
            line += "".join(f"  {k} cpu {v:.3f} ms/req" for k, v in cpu.items())
            if "triton_delta" in r:
                d = r["triton_delta"]
                line += f"  triton ok {d['success']:.0f} failed {d['failure']:.0f} (incl. warm-up)"
            print(line)
    except (StackError, grpc.RpcError, ValueError) as e:
        sys.exit(f"error: {_describe(e)}")
    finally:
        if stack is not None:
            stack.stop()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
