"""Router vs direct-Triton latency and throughput, side by side in one run.

Both targets get the same client work: a prebuilt serialized request sent as raw
bytes over one grpc.aio channel each (no per-call protobuf building or parsing),
so the difference between them is the router. After a warmup of each target,
the measured time is split into alternating blocks (A B B A ...) so drift on a
noisy shared host hits both targets alike. Percentiles come from raw samples.

Closed loop: ``--concurrency N`` workers, each sends its next request when the
last one returns (``--duration S`` or ``--requests N`` per target). Open loop:
``--rps R`` Poisson (or uniform) arrivals, sent whether or not earlier ones
returned; latency is reported from the send and from the scheduled time (the
coordinated-omission-free figure), and requests sent more than ``--late-ms``
after schedule are counted as late.

    python -m bench.loadgen --router 127.0.0.1:P --triton 127.0.0.1:Q --concurrency 1
    python -m bench.loadgen --start-stack --build build --rps 200 --json out.json

Python clients cost about as much CPU per request as the server on 2 cores:
use ``bench.h2load`` for throughput ceilings and CPU figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from inferline.v1 import inference_pb2

ROUTER_METHOD = "/inferline.v1.InferenceService/Predict"
TRITON_METHOD = "/inference.GRPCInferenceService/ModelInfer"
TENANT_HEADER = "x-inferline-tenant"

Call = Callable[[], Awaitable[bytes]]


@dataclasses.dataclass(frozen=True)
class Target:
    """One endpoint plus the exact bytes every request to it carries."""

    name: str
    address: str
    method: str
    request: bytes
    metadata: tuple[tuple[str, str], ...] = ()
    cpu_pgids: dict[str, int] = dataclasses.field(default_factory=dict)
    """Server process groups whose CPU is charged to this target (``--start-stack``)."""


def router_request(alias: str = "fraud:prod", account_id: int = 42) -> bytes:
    v = inference_pb2.Value
    req = inference_pb2.PredictRequest(
        alias=alias,
        candidates=[
            inference_pb2.Candidate(
                entities={"account_id": v(int64_value=account_id)},
                features={
                    "amount": v(double_value=12.5),
                    "hour_of_day": v(double_value=13),
                    "is_international": v(double_value=0),
                },
            )
        ],
    )
    return req.SerializeToString()  # type: ignore[no-any-return]


def triton_request(
    model: str, row: np.ndarray, *, version: str = "", input_name: str, output_name: str
) -> bytes:
    row = np.ascontiguousarray(row, dtype=np.float32)
    req = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name=input_name, datatype="FP32", shape=list(row.shape))
    req.outputs.add(name=output_name)
    req.raw_input_contents.append(row.tobytes())
    return req.SerializeToString()  # type: ignore[no-any-return]


def check_response(target: Target, body: bytes) -> str:
    """Parse one response for real and say what came back; raise if it is empty.

    Guards against benchmarking an endpoint that answers OK with nothing useful
    (e.g. a Python-backend model returning an empty tensor).
    """
    if target.method == ROUTER_METHOD:
        r = inference_pb2.PredictResponse.FromString(body)
        if len(r.scores) != 1:
            raise ValueError(f"router returned {len(r.scores)} scores for 1 candidate")
        return f"score={r.scores[0].score:.6f} model={r.model.name}@{r.model.version}"
    t = service_pb2.ModelInferResponse.FromString(body)
    if not t.raw_output_contents or not t.raw_output_contents[0]:
        raise ValueError(f"Triton returned no output data: {t}")
    out = np.frombuffer(t.raw_output_contents[0], dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"Triton returned non-finite output {out}")
    return f"{t.outputs[0].name}={out.tolist()} model={t.model_name}@{t.model_version}"


@dataclasses.dataclass
class Samples:
    """Raw results of one or more blocks against one target."""

    latencies_s: list[float] = dataclasses.field(default_factory=list)
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    elapsed_s: float = 0.0
    late: int = 0
    sched_lag_s: list[float] = dataclasses.field(default_factory=list)
    from_schedule_s: list[float] = dataclasses.field(default_factory=list)
    client_cpu_s: float = 0.0
    server_cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)

    def merge(self, other: Samples) -> None:
        self.latencies_s += other.latencies_s
        self.errors += other.errors
        self.elapsed_s += other.elapsed_s
        self.late += other.late
        self.sched_lag_s += other.sched_lag_s
        self.from_schedule_s += other.from_schedule_s
        self.client_cpu_s += other.client_cpu_s
        for k, v in other.server_cpu_s.items():
            self.server_cpu_s[k] = self.server_cpu_s.get(k, 0.0) + v


def percentiles_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds (linear interpolation, numpy default)."""
    if not values_s:
        return {k: float("nan") for k in ("p50", "p95", "p99", "max", "mean")}
    a = np.asarray(values_s, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


def summarize(s: Samples) -> dict[str, Any]:
    ok = len(s.latencies_s)
    sent = ok + sum(s.errors.values())
    out: dict[str, Any] = {
        "ok": ok,
        "errors": dict(sorted(s.errors.items())),
        "error_count": sent - ok,
        "throughput_rps": ok / s.elapsed_s if s.elapsed_s > 0 else float("nan"),
        "latency_ms": percentiles_ms(s.latencies_s),
        "client_cpu_ms_per_req": 1e3 * s.client_cpu_s / sent if sent else float("nan"),
    }
    for name, cpu in s.server_cpu_s.items():
        out[f"{name}_cpu_ms_per_req"] = 1e3 * cpu / sent if sent else float("nan")
    if s.sched_lag_s:
        out["late"] = s.late
        out["schedule_lag_ms"] = percentiles_ms(s.sched_lag_s)
        out["latency_from_schedule_ms"] = percentiles_ms(s.from_schedule_s)
    return out


def median_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field across repeats; error counts are summed."""
    first = runs[0]
    out: dict[str, Any] = {}
    for key, val in first.items():
        if isinstance(val, dict) and key == "errors":
            total: collections.Counter[str] = collections.Counter()
            for r in runs:
                total.update(r[key])
            out[key] = dict(sorted(total.items()))
        elif isinstance(val, dict):
            out[key] = median_summary([r[key] for r in runs])
        elif isinstance(val, int | float):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def overhead(router: dict[str, Any], direct: dict[str, Any]) -> dict[str, float]:
    """What the router adds: latency deltas in ms, and the throughput ratio."""
    rl, dl = router["latency_ms"], direct["latency_ms"]
    return {
        "p50_ms": rl["p50"] - dl["p50"],
        "p99_ms": rl["p99"] - dl["p99"],
        "throughput_ratio": router["throughput_rps"] / direct["throughput_rps"],
    }


def arrival_offsets(
    rps: float, duration_s: float, *, poisson: bool, rng: np.random.Generator
) -> np.ndarray:
    """Send times in seconds from block start: Poisson process or evenly spaced."""
    n = max(1, round(rps * duration_s))
    if not poisson:
        return np.arange(n) / rps
    gaps = rng.exponential(1.0 / rps, size=int(n * 1.5) + 16)
    t: np.ndarray = np.cumsum(gaps) - gaps[0]
    kept: np.ndarray = t[t < duration_s]
    return kept


class _CpuMeter:
    """Client process CPU (all threads) and server process-group CPU over a block."""

    def __init__(self, pgids: dict[str, int]) -> None:
        from scripts.supervisor import group_cpu_seconds

        self._read = group_cpu_seconds
        self._pgids = pgids
        self._c0 = time.process_time()
        self._s0 = {k: self._read(p) for k, p in pgids.items()}

    def stop(self, s: Samples) -> None:
        s.client_cpu_s = time.process_time() - self._c0
        s.server_cpu_s = {k: self._read(p) - self._s0[k] for k, p in self._pgids.items()}


class CallError(Exception):
    """A non-gRPC call's error status (e.g. the router's HTTP/1.1 fast lane), by
    gRPC status name, counted like an ``AioRpcError``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def _timed(call: Call, s: Samples, due: float | None = None) -> None:
    start = time.monotonic()
    try:
        await call()
    except grpc.aio.AioRpcError as e:
        s.errors[e.code().name] += 1
    except CallError as e:
        s.errors[e.code] += 1
    else:
        end = time.monotonic()
        s.latencies_s.append(end - start)
        if due is not None:
            s.from_schedule_s.append(end - due)


async def closed_loop(
    call: Call, concurrency: int, *, duration_s: float | None = None, requests: int | None = None
) -> Samples:
    """``concurrency`` workers back to back, for a duration or a request count."""
    s = Samples()
    left = requests
    end = time.monotonic() + duration_s if duration_s is not None else float("inf")

    async def worker() -> None:
        nonlocal left
        while time.monotonic() < end:
            if left is not None:
                if left <= 0:
                    return
                left -= 1
            await _timed(call, s)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    s.elapsed_s = time.monotonic() - t0
    return s


async def open_loop(
    call: Call,
    offsets: np.ndarray,
    *,
    late_s: float,
    max_inflight: int,
) -> Samples:
    """Fire at the given offsets regardless of responses.

    Latency is kept both from the actual send and from the scheduled time; the
    difference is client lag (event-loop timer granularity is ~1 ms).
    """
    s = Samples()
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.monotonic()
    for off in offsets.tolist():
        due = t0 + off
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = time.monotonic() - due
        s.sched_lag_s.append(lag)
        if lag > late_s:
            s.late += 1
        if len(tasks) >= max_inflight:
            s.errors["CLIENT_MAX_INFLIGHT"] += 1
            continue
        task = asyncio.create_task(_timed(call, s, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    s.elapsed_s = max(time.monotonic() - t0, float(offsets[-1]) if len(offsets) else 0.0)
    return s


@dataclasses.dataclass
class Plan:
    """What to run: one of concurrency / rps, for a duration or a request count."""

    concurrency: int = 1
    rps: float | None = None
    duration_s: float | None = 10.0
    requests: int | None = None
    warmup_s: float = 2.0
    blocks: int = 4
    repeats: int = 1
    poisson: bool = True
    late_ms: float = 2.0
    max_inflight: int = 2000
    timeout_s: float = 5.0
    seed: int = 0

    def describe(self) -> str:
        if self.rps is not None:
            kind = "Poisson" if self.poisson else "uniform"
            mode = f"open loop {self.rps:g} rps ({kind})"
        else:
            mode = f"closed loop concurrency {self.concurrency}"
        amount = (
            f"{self.requests} requests" if self.requests is not None else f"{self.duration_s:g} s"
        )
        return (
            f"{mode}; {amount} per target per repeat in {self.blocks} alternating blocks; "
            f"{self.repeats} repeat(s); warmup {self.warmup_s:g} s per target"
        )


def block_order(names: Sequence[str], n_blocks: int) -> Iterator[list[str]]:
    """A B, B A, A B, ...: each target goes first equally often."""
    for i in range(n_blocks):
        yield list(names) if i % 2 == 0 else list(reversed(names))


async def run_benchmark(targets: Sequence[Target], plan: Plan) -> dict[str, Any]:
    """Validate, warm up, then measure all targets in alternating blocks."""
    rng = np.random.default_rng(plan.seed)
    async with contextlib.AsyncExitStack() as stack:
        calls: dict[str, Call] = {}
        for t in targets:
            ch = await stack.enter_async_context(grpc.aio.insecure_channel(t.address))
            try:
                await asyncio.wait_for(ch.channel_ready(), timeout=10)
            except TimeoutError:
                raise TimeoutError(f"no connection to {t.name} at {t.address} in 10 s") from None
            mc = ch.unary_unary(t.method)  # no serializers: bytes in, bytes out

            def bind(mc: Any = mc, t: Target = t) -> Call:
                md, req, to = t.metadata, t.request, plan.timeout_s
                return lambda: mc(req, metadata=md, timeout=to)  # type: ignore[no-any-return]

            calls[t.name] = bind()
            print(f"check {t.name:7} {t.address}: {check_response(t, await calls[t.name]())}")
        for t in targets:
            await closed_loop(calls[t.name], max(plan.concurrency, 1), duration_s=plan.warmup_s)

        per_block_s = plan.duration_s / plan.blocks if plan.duration_s is not None else None
        per_block_n = -(-plan.requests // plan.blocks) if plan.requests is not None else None
        repeats: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        by_name = {t.name: t for t in targets}
        for _ in range(plan.repeats):
            acc = {t.name: Samples() for t in targets}
            for order in block_order([t.name for t in targets], plan.blocks):
                for name in order:
                    meter = _CpuMeter(by_name[name].cpu_pgids)
                    if plan.rps is not None:
                        assert per_block_s is not None
                        offs = arrival_offsets(plan.rps, per_block_s, poisson=plan.poisson, rng=rng)
                        s = await open_loop(
                            calls[name],
                            offs,
                            late_s=plan.late_ms / 1e3,
                            max_inflight=plan.max_inflight,
                        )
                    else:
                        s = await closed_loop(
                            calls[name],
                            plan.concurrency,
                            duration_s=per_block_s,
                            requests=per_block_n,
                        )
                    meter.stop(s)
                    acc[name].merge(s)
            for name, s in acc.items():
                repeats[name].append(summarize(s))

    result: dict[str, Any] = {"plan": dataclasses.asdict(plan), "targets": {}}
    for name, runs in repeats.items():
        result["targets"][name] = {"median": median_summary(runs), "repeats": runs}
    if "router" in repeats and "direct" in repeats:
        med = result["targets"]
        result["overhead"] = overhead(med["router"]["median"], med["direct"]["median"])
    return result


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"{'target':8}{'ok':>9}{'err':>6}{'rps':>9}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"
        f"{'cli cpu':>9}  (latency ms; cpu ms/req)"
    ]
    for name, t in result["targets"].items():
        m = t["median"]
        lat = m["latency_ms"]
        lines.append(
            f"{name:8}{m['ok']:>9.0f}{m['error_count']:>6.0f}{m['throughput_rps']:>9.1f}"
            f"{lat['p50']:>8.3f}{lat['p95']:>8.3f}{lat['p99']:>8.3f}{lat['max']:>8.2f}"
            f"{m['client_cpu_ms_per_req']:>9.3f}"
        )
        extras = [
            f"{k.removesuffix('_cpu_ms_per_req')} cpu {v:.3f}"
            for k, v in m.items()
            if k.endswith("_cpu_ms_per_req") and not k.startswith("client_")
        ]
        if m["errors"]:
            extras.append(f"errors {m['errors']}")
        if "late" in m:
            fs = m["latency_from_schedule_ms"]
            extras.append(
                f"late {m['late']:.0f}; schedule lag p99 {m['schedule_lag_ms']['p99']:.3f}; "
                f"from schedule p50 {fs['p50']:.3f} p99 {fs['p99']:.3f}"
            )
        if extras:
            lines.append(f"{'':8}  " + "; ".join(extras))
    if "overhead" in result:
        o = result["overhead"]
        lines.append(
            f"router overhead: p50 {o['p50_ms']:+.3f} ms, p99 {o['p99_ms']:+.3f} ms; "
            f"throughput router/direct {o['throughput_ratio']:.2f}"
        )
    return "\n".join(lines)


def add_target_args(p: argparse.ArgumentParser) -> None:
    """Where to send what: shared by this CLI and ``bench.h2load``."""
    from scripts.stack import add_stack_args

    p.add_argument("--router", help="router host:port")
    p.add_argument("--triton", help="Triton gRPC host:port (direct target)")
    p.add_argument("--start-stack", action="store_true", help="start Triton+router itself")
    add_stack_args(p)
    p.add_argument("--router-env", action="append", default=[], metavar="K=V")
    p.add_argument("--model", default="fraud")
    p.add_argument("--model-version", default="1", help="direct target; fraud:prod is 1")
    p.add_argument("--alias", default=None, help="router target; default <model>:prod")
    p.add_argument("--tenant", default="demo")
    p.add_argument("--account-id", type=int, default=42)
    p.add_argument("--input-name", default="input__0")
    p.add_argument("--output-name", default="output__0")
    p.add_argument("--n-features", type=int, default=33)
    p.add_argument("--direct-input-npy", type=Path, help="FP32 row for the direct target")
    p.add_argument("--json", type=Path, help="write the full result here")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--concurrency", type=int, default=1, help="closed loop (default)")
    g.add_argument("--rps", type=float, help="open loop at this arrival rate")
    p.add_argument("--uniform", action="store_true", help="open loop: even spacing")
    p.add_argument("--duration", type=float, default=10.0, help="s per target per repeat")
    p.add_argument("--requests", type=int, help="closed loop: count instead of --duration")
    p.add_argument("--warmup", type=float, default=2.0, help="s per target")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--late-ms", type=float, default=2.0)
    p.add_argument("--max-inflight", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    return p


def make_targets(
    args: argparse.Namespace, router: str | None, triton: str | None, pgids: dict[str, int]
) -> tuple[list[Target], str]:
    """Targets from the CLI; also says where the direct input row came from."""
    if args.direct_input_npy is not None:
        row = np.load(args.direct_input_npy).astype(np.float32).reshape(1, -1)
        source = f"{args.direct_input_npy} FP32 {list(row.shape)}"
    else:
        row = np.random.default_rng(args.seed).random((1, args.n_features), dtype=np.float32)
        source = f"random uniform FP32 [1, {args.n_features}] (seed {args.seed})"
    targets = []
    if router:
        req = router_request(args.alias or f"{args.model}:prod", args.account_id)
        md = ((TENANT_HEADER, args.tenant),)
        cpu = dict(pgids)  # the whole path: router and Triton
        targets.append(Target("router", router, ROUTER_METHOD, req, md, cpu))
    if triton:
        req = triton_request(
            args.model,
            row,
            version=args.model_version,
            input_name=args.input_name,
            output_name=args.output_name,
        )
        cpu = {k: v for k, v in pgids.items() if k == "triton"}
        targets.append(Target("direct", triton, TRITON_METHOD, req, (), cpu))
    return targets, source


def plan_from_args(args: argparse.Namespace) -> Plan:
    return Plan(
        concurrency=args.concurrency,
        rps=args.rps,
        duration_s=None if args.requests is not None else args.duration,
        requests=args.requests,
        warmup_s=args.warmup,
        blocks=args.blocks,
        repeats=args.repeats,
        poisson=not args.uniform,
        late_ms=args.late_ms,
        max_inflight=args.max_inflight,
        timeout_s=args.timeout,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.requests is not None and args.rps is not None:
        sys.exit("--requests is closed-loop only; use --duration with --rps")
    from scripts.stack import Stack, stack_from_args
    from scripts.supervisor import StackError

    with contextlib.ExitStack() as es:
        router, triton, pgids = args.router, args.triton, {}
        if args.start_stack:
            env = dict(kv.split("=", 1) for kv in args.router_env)
            stack: Stack = stack_from_args(args)
            stack.router_env = env
            try:
                es.enter_context(stack)
            except StackError as e:
                sys.exit(f"error: {e}")
            assert stack.triton is not None
            triton = stack.triton.grpc_url
            pgids["triton"] = stack.triton.pid
            if stack.router is not None:
                router = stack.router.address
                pgids["router"] = stack.router.pid
            print(f"stack up, logs in {stack.log_dir}")
        if not (router or triton):
            sys.exit("give --router and/or --triton, or --start-stack")
        targets, source = make_targets(args, router, triton, pgids)
        plan = plan_from_args(args)
        print(plan.describe())
        if triton:
            print(f"direct input: {source}")
        runner: Any = asyncio.run
        if args.loop == "uvloop":
            import uvloop

            runner = uvloop.run
        try:
            result = runner(run_benchmark(targets, plan))
        except grpc.aio.AioRpcError as e:
            sys.exit(f"error: {e.code().name}: {e.details()}")
        except (ValueError, TimeoutError) as e:
            sys.exit(f"error: {e}")
    result["direct_input"] = source
    result["targets_addr"] = {t.name: t.address for t in targets}
    print(format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
