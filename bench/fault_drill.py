"""Fault drills against the real stack: inject a fault under steady load, measure.

Each drill starts its own stack (scripts.stack), sends open-loop Predict
traffic with a client deadline, injects a fault a real process produces
(SIGKILL of Triton's Python-backend stub or of Triton itself, SIGSTOP of the
Redis online store) or a traffic spike, and reports: requests sent, answered
OK, degraded by fallback level, errors by status, requests left unanswered at
their deadline (must be 0), time from the fault to the first degraded answer
(the breaker/probe reaction) and, where the fault clears, time to recover.

    python -m bench.fault_drill --build build --md docs/reliability.md \
        --json build/bench/faults.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.delay_proxy import DelayProxy
from bench.fail_proxy import FailProxy
from inferline.v1 import inference_pb2 as pb
from inferline.v1 import inference_pb2_grpc
from scripts.stack import ROOT, Stack, build_demo_for_redis

TENANT = (("x-inferline-tenant", "demo"),)
ROUTER_ENV = {
    "INFERLINE_LOG__LEVEL": "warning",
    "INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0.5",
    "INFERLINE_FEATURES__TIMEOUT_MS": "20",
}
PRIMARY = pb.FALLBACK_LEVEL_PRIMARY


@dataclass
class Outcome:
    sent_at: float
    latency_s: float
    code: str
    level: int = 0
    reasons: tuple[str, ...] = ()


@dataclass
class DrillResult:
    name: str
    sent: int
    ok: int
    degraded_by_level: dict[str, int]
    errors: dict[str, int]
    unanswered_at_deadline: int
    time_to_degrade_s: float | None
    time_to_recover_s: float | None
    admitted_p99_ms: float | None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _request(i: int) -> pb.PredictRequest:
    account = 1 + (i * 37) % 4999
    if account % 50 == 7:
        account += 1
    return pb.PredictRequest(
        alias="fraud:prod",
        candidates=[
            pb.Candidate(
                entities={"account_id": pb.Value(int64_value=account)},
                features={
                    "amount": pb.Value(double_value=20.0 + i % 200),
                    "hour_of_day": pb.Value(double_value=float(i % 24)),
                    "is_international": pb.Value(double_value=0.0),
                },
            )
        ],
    )


async def _one(stub: Any, i: int, deadline_s: float, t0: float, out: list[Outcome]) -> None:
    sent = time.monotonic()
    try:
        resp = await stub.Predict(_request(i), metadata=TENANT, timeout=deadline_s)
        out.append(
            Outcome(
                sent - t0,
                time.monotonic() - sent,
                "OK",
                resp.fallback_level,
                tuple(resp.degraded_reasons),
            )
        )
    except grpc.aio.AioRpcError as e:
        out.append(Outcome(sent - t0, time.monotonic() - sent, e.code().name))


# Clients of a restarting dependency should reconnect quickly (gRPC's default
# first backoff is 1 s): what a production client of inferline is told to set.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class Background:
    """A fault action that blocks (a restart): runs on a thread so the load keeps
    its schedule; ``done_at`` (monotonic) says when it finished."""

    def __init__(self, name: str, fn: Callable[[], object]) -> None:
        self.__name__ = name
        self._fn = fn
        self.done_at: float | None = None
        self.result: object = None
        self.thread: threading.Thread | None = None

    def _run(self) -> None:
        self.result = self._fn()
        self.done_at = time.monotonic()

    def __call__(self) -> None:
        self.thread = threading.Thread(target=self._run, name=self.__name__, daemon=True)
        self.thread.start()

    def wait(self, timeout_s: float = 60.0) -> None:
        if self.thread is not None:
            self.thread.join(timeout_s)


def _extend(at: dict[float, Callable[[], None]], elapsed_s: float, seconds: float) -> bool:
    """Keep the load going past ``seconds`` while a restart is still running and
    for ``seconds / 4`` after it finished, so its recovery is measured (capped at 4x)."""
    if elapsed_s > 4 * seconds:
        return False
    for action in at.values():
        if isinstance(action, Background) and action.thread is not None:
            if action.done_at is None:
                return True
            return time.monotonic() < action.done_at + seconds / 4
    return False


async def load(
    address: str,
    *,
    rps: float,
    seconds: float,
    deadline_s: float,
    at: dict[float, Callable[[], None]],
    open_channel: Callable[[], grpc.aio.Channel] | None = None,
) -> tuple[list[Outcome], dict[str, float]]:
    """Open-loop load; ``at`` maps seconds-from-start to fault actions.

    ``marks`` holds each action's start (seconds from the start) and ``t0``, the
    monotonic start itself."""
    out: list[Outcome] = []
    marks: dict[str, float] = {}
    pending = sorted(at.items())
    channel = (
        open_channel() if open_channel else grpc.aio.insecure_channel(address, CHANNEL_OPTIONS)
    )
    async with channel as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        t0 = time.monotonic()
        marks["t0"] = t0
        tasks = []
        n = int(rps * seconds)
        i = 0
        while i < n or _extend(at, i / rps, seconds):
            due = t0 + i / rps
            while pending and pending[0][0] <= due - t0:
                _, action = pending.pop(0)
                action()
                marks[action.__name__] = time.monotonic() - t0
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(_one(stub, i, deadline_s, t0, out)))
            i += 1
        await asyncio.gather(*tasks)
    return sorted(out, key=lambda o: o.sent_at), marks


def summarize(
    name: str,
    out: list[Outcome],
    deadline_s: float,
    fault_at: float | None,
    clear_at: float | None,
    notes: str = "",
) -> DrillResult:
    grace = 0.05
    levels = Counter(pb.FallbackLevel.Name(o.level) for o in out if o.code == "OK")
    errors = Counter(o.code for o in out if o.code != "OK")
    unanswered = sum(
        1 for o in out if o.code == "DEADLINE_EXCEEDED" or o.latency_s > deadline_s + grace
    )
    degraded = [o for o in out if o.code == "OK" and (o.level != PRIMARY or o.reasons)]
    to_degrade = None
    sent_after = None
    if fault_at is not None:
        sent_after = sum(1 for o in out if o.sent_at >= fault_at)
        after = [o.sent_at + o.latency_s for o in degraded if o.sent_at >= fault_at]
        to_degrade = round(min(after) - fault_at, 3) if after else None
    to_recover = None
    if clear_at is not None:
        healthy = [
            o.sent_at
            for o in out
            if o.sent_at >= clear_at and o.code == "OK" and o.level == PRIMARY and not o.reasons
        ]
        to_recover = round(min(healthy) - clear_at, 3) if healthy else None
    ok_lat = [o.latency_s for o in out if o.code == "OK"]
    p99 = round(float(np.percentile(ok_lat, 99)) * 1000, 2) if ok_lat else None
    return DrillResult(
        name,
        len(out),
        sum(1 for o in out if o.code == "OK"),
        {k.removeprefix("FALLBACK_LEVEL_"): v for k, v in sorted(levels.items())},
        dict(errors),
        unanswered,
        to_degrade,
        to_recover,
        p99,
        notes,
        {} if sent_after is None else {"sent_after_fault": sent_after},
    )


def _stack(build: Path, logs: Path, **kw: Any) -> Stack:
    env = {**ROUTER_ENV, **kw.pop("router_env", {})}
    return Stack(
        build, logs, routing_table=ROOT / "scripts" / "demo_routing.yaml", router_env=env, **kw
    )


Faults = Callable[[Stack], tuple[Callable[[], None], Callable[[], None] | None]]
"""Given the running stack: (inject, clear or None)."""


async def _drill(
    name: str,
    notes: str,
    faults: Faults,
    build: Path,
    logs: Path,
    rps: float,
    seconds: float,
    deadline_s: float,
    **stack_kw: Any,
) -> DrillResult:
    """Steady load; inject at 1/4 of the run (and clear at 1/2 when the fault clears)."""
    with _stack(build, logs, **stack_kw) as s:
        assert s.router is not None
        inject, clear = faults(s)
        at = {seconds / 4: inject} | ({seconds / 2: clear} if clear else {})
        out, marks = await load(
            s.router.address, rps=rps, seconds=seconds, deadline_s=deadline_s, at=at
        )
        for action in (inject, clear):
            if isinstance(action, Background):
                action.wait()
    cleared = marks.get(clear.__name__) if clear else None
    if isinstance(clear, Background):  # cleared when the restart finished, not began
        cleared = None if clear.done_at is None else clear.done_at - marks["t0"]
    r = summarize(name, out, deadline_s, marks.get(inject.__name__), cleared, notes)
    if cleared is not None:
        r.extra["fault_cleared_at_s"] = round(cleared, 2)
    return r


def _kill_stubs(s: Stack) -> tuple[Callable[[], None], None]:
    assert s.triton is not None
    triton = s.triton

    def kill_stubs() -> None:
        for pid in triton.stub_pids():
            os.kill(pid, signal.SIGKILL)

    return kill_stubs, None


def _kill_triton(s: Stack) -> tuple[Callable[[], None], None]:
    assert s.triton is not None
    pid = s.triton.pid

    def kill_triton() -> None:
        os.killpg(pid, signal.SIGKILL)

    return kill_triton, None


def _hang_redis(s: Stack) -> tuple[Callable[[], None], Callable[[], None]]:
    assert s.redis is not None
    pid = s.redis.pid

    def stop_redis() -> None:
        os.kill(pid, signal.SIGSTOP)

    def cont_redis() -> None:
        os.kill(pid, signal.SIGCONT)

    return stop_redis, cont_redis


async def drill_stub_kill(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    return await _drill(
        "SIGKILL Triton's Python-backend stubs",
        "Triton keeps reporting the models READY; the canary probe trips the breakers",
        _kill_stubs,
        build,
        logs / "stub",
        rps,
        seconds,
        deadline_s,
    )


async def drill_triton_kill(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    return await _drill(
        "SIGKILL tritonserver",
        "no Triton left: cached scores / static defaults answer",
        _kill_triton,
        build,
        logs / "triton",
        rps,
        seconds,
        deadline_s,
    )


async def drill_redis_hang(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    return await _drill(
        "SIGSTOP the Redis online store (hang), then SIGCONT",
        "defaults + feature_store_unavailable; the store breaker skips reads",
        _hang_redis,
        build,
        logs / "redis",
        rps,
        seconds,
        deadline_s,
        online_store="redis",
    )


async def drill_slow_store(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    """Redis answers, but 50 ms late per chunk (behind a delay proxy), then recovers."""
    proxies: list[DelayProxy] = []

    def via_proxy(out: Path, redis_url: str) -> Path:
        proxies.append(DelayProxy(redis_url).start())
        return build_demo_for_redis(out, proxies[-1].address)

    def slow(s: Stack) -> tuple[Callable[[], None], Callable[[], None]]:
        def slow_store() -> None:
            proxies[0].delay_s = 0.05

        def fast_store() -> None:
            proxies[0].delay_s = 0.0

        return slow_store, fast_store

    try:
        return await _drill(
            "Slow online store (Redis +50 ms per chunk behind a TCP proxy), then normal",
            "reads cut at the 20 ms feature budget: defaults + feature_store_unavailable",
            slow,
            build,
            logs / "slow",
            rps,
            seconds,
            deadline_s,
            online_store="redis",
            feast_builder=via_proxy,
        )
    finally:
        for p in proxies:
            p.stop()


async def drill_triton_restart(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    """SIGKILL tritonserver, start it again on its ports (what Kubernetes does):
    the ladder answers meanwhile; how long after it is ready is primary back?"""

    def faults(s: Stack) -> tuple[Callable[[], None], Callable[[], None]]:
        assert s.triton is not None
        triton = s.triton
        inject, _ = _kill_triton(s)
        return inject, Background("restart_triton", triton.relaunch)

    return await _drill(
        "SIGKILL tritonserver, restarted on its ports",
        "ladder answers while Triton is down; recovery measured from Triton ready again",
        faults,
        build,
        logs / "triton-restart",
        rps,
        seconds,
        deadline_s,
    )


async def drill_blackhole_store(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    """Redis behind a proxy that swallows every byte (partition), then heals."""
    proxies: list[DelayProxy] = []

    def via_proxy(out: Path, redis_url: str) -> Path:
        proxies.append(DelayProxy(redis_url).start())
        return build_demo_for_redis(out, proxies[-1].address)

    def hole(s: Stack) -> tuple[Callable[[], None], Callable[[], None]]:
        def blackhole_store() -> None:
            proxies[0].blackhole = True

        def heal_store() -> None:
            proxies[0].blackhole = False

        return blackhole_store, heal_store

    try:
        return await _drill(
            "Black-holed online store (Redis behind a proxy that drops every byte), then healed",
            "reads cut at the feature budget; the store breaker then skips them",
            hole,
            build,
            logs / "blackhole",
            rps,
            seconds,
            deadline_s,
            online_store="redis",
            feast_builder=via_proxy,
        )
    finally:
        for p in proxies:
            p.stop()


async def drill_half_failing_backend(
    build: Path, logs: Path, rps: float, seconds: float, deadline_s: float
) -> DrillResult:
    """Half of all inference calls fail (a real HTTP proxy answering 503 in front
    of Triton): upstream attempts per client request stay <= 1.1."""
    proxies: list[FailProxy] = []

    def faults(s: Stack) -> tuple[Callable[[], None], None]:
        assert s.triton is not None and s.router is not None

        def start_failing() -> None:
            proxies[0].reset_counts()
            proxies[0].fail_ratio = 0.5

        return start_failing, None

    def via_proxy(triton_http: str) -> str:
        proxies.append(FailProxy(triton_http, fail_ratio=0.0).start())
        return proxies[-1].address

    try:
        r = await _drill(
            "50% of inference calls fail (HTTP proxy answering 503 in front of Triton)",
            "the last-known-good rung spends the retry budget (9% of first attempts)",
            faults,
            build,
            logs / "half-failing",
            rps,
            seconds,
            deadline_s,
            router_env={"INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0"},
            triton_http_proxy=via_proxy,
        )
        p = proxies[0]
        counted = r.extra["sent_after_fault"]
        r.extra["upstream_infer_calls"] = p.infer_calls
        r.extra["injected_failures"] = p.failed
        r.extra["attempts_per_request"] = round(p.infer_calls / max(1, counted), 3)
        return r
    finally:
        for p in proxies:
            p.stop()


async def drill_spike(build: Path, logs: Path, deadline_s: float, seconds: float) -> DrillResult:
    """3x more concurrency than the router admits: the excess is shed at once."""
    admit = 8
    with _stack(
        build,
        logs / "spike",
        router_env={
            "INFERLINE_LIMITS__MAX_IN_FLIGHT": str(admit),
            "INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0",
        },
    ) as s:
        assert s.router is not None
        out: list[Outcome] = []
        async with grpc.aio.insecure_channel(s.router.address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            t0 = time.monotonic()
            stop = t0 + seconds

            async def worker(w: int) -> None:
                i = w
                while time.monotonic() < stop:
                    await _one(stub, i, deadline_s, t0, out)
                    i += 3 * admit
                    if out[-1].code == "RESOURCE_EXHAUSTED":
                        await asyncio.sleep(0.002)

            await asyncio.gather(*(worker(w) for w in range(3 * admit)))
    shed = [o.latency_s for o in out if o.code == "RESOURCE_EXHAUSTED"]
    r = summarize(
        "3x spike over the admission limit",
        out,
        deadline_s,
        None,
        None,
        f"max_in_flight={admit} (standard class may use 80%), {3 * admit} callers",
    )
    r.extra["shed_median_ms"] = round(statistics.median(shed) * 1000, 3) if shed else None
    r.extra["goodput_rps"] = round(r.ok / seconds, 1)
    return r


DRILLS = (
    "stub_kill",
    "triton_kill",
    "triton_restart",
    "redis_hang",
    "slow_store",
    "blackhole_store",
    "half_failing",
    "spike",
)


async def run_all(
    build: Path,
    logs: Path,
    rps: float,
    seconds: float,
    deadline_s: float,
    only: tuple[str, ...] = DRILLS,
) -> list[DrillResult]:
    out = []
    for name in only:
        if name == "spike":
            out.append(await drill_spike(build, logs, deadline_s, seconds / 2))
        elif name == "triton_restart":  # Triton takes seconds to load its models again
            out.append(await drill_triton_restart(build, logs, rps, seconds * 2, deadline_s))
        else:
            drill = {
                "stub_kill": drill_stub_kill,
                "triton_kill": drill_triton_kill,
                "redis_hang": drill_redis_hang,
                "slow_store": drill_slow_store,
                "blackhole_store": drill_blackhole_store,
                "half_failing": drill_half_failing_backend,
            }[name]
            out.append(await drill(build, logs, rps, seconds, deadline_s))
    return out


def markdown(results: list[DrillResult], command: str) -> str:
    head = (
        f"Command: `{command}`  \nMachine: 2 vCPU shared dev VM, "
        f"Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n"
        "| fault | sent | OK | OK by fallback level | errors | unanswered at deadline | "
        "fault -> first degraded | fault cleared -> recovered | p99 of OK | notes |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    rows = []
    for r in results:

        def ms(x: float | None) -> str:
            return "n/a" if x is None else f"{x * 1000:.0f} ms"

        extra = ", ".join(f"{k}={v}" for k, v in r.extra.items())
        rows.append(
            f"| {r.name} | {r.sent} | {r.ok} | {r.degraded_by_level} | {r.errors or '-'} | "
            f"**{r.unanswered_at_deadline}** | {ms(r.time_to_degrade_s)} | "
            f"{ms(r.time_to_recover_s)} | {r.admitted_p99_ms} ms | {r.notes}"
            f"{'; ' + extra if extra else ''} |"
        )
    return head + "\n".join(rows) + "\n"


def write_md(path: Path, table: str, marker: str = "faults") -> None:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    pre, _, rest = text.partition(begin)
    _, _, post = rest.partition(end)
    path.write_text(f"{pre}{begin}\n{table}{end}{post}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--rps", type=float, default=100.0)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--deadline-ms", type=float, default=250.0)
    p.add_argument("--md", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--only", default=",".join(DRILLS), help=f"comma-separated of {DRILLS}")
    args = p.parse_args(argv)
    only = tuple(x for x in args.only.split(",") if x)
    if unknown := set(only) - set(DRILLS):
        p.error(f"unknown drills: {sorted(unknown)}")
    logs = args.build / "logs" / time.strftime("faults-%Y%m%d-%H%M%S")
    results = asyncio.run(
        run_all(
            args.build.resolve(),
            logs.resolve(),
            args.rps,
            args.seconds,
            args.deadline_ms / 1000,
            only,
        )
    )
    command = "python -m bench.fault_drill " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(results, command)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    if args.md:
        write_md(args.md, table)
    return 0 if all(r.unanswered_at_deadline == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
