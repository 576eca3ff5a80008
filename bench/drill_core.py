"""The drill harness shared by bench/fault_drill.py and bench/edge_drills.py:
open-loop Predict load with fault actions on a schedule, the per-request
outcomes, and the summary (unanswered at deadline, degraded by rung, time to
degrade and to recover) written as a markdown table between markers.
"""

from __future__ import annotations

import asyncio
import platform
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from inferline.v1 import inference_pb2 as pb
from inferline.v1 import inference_pb2_grpc

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


async def one_request(stub: Any, i: int, deadline_s: float, t0: float, out: list[Outcome]) -> None:
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
            tasks.append(asyncio.create_task(one_request(stub, i, deadline_s, t0, out)))
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
    late = [o for o in out if o.code == "DEADLINE_EXCEEDED" or o.latency_s > deadline_s + grace]
    unanswered = len(late)
    degraded = [o for o in out if o.code == "OK" and (o.level != PRIMARY or o.reasons)]
    to_degrade = None
    sent_after = None
    if fault_at is not None:
        sent_after = sum(1 for o in out if o.sent_at >= fault_at)
        after = [o.sent_at + o.latency_s for o in degraded if o.sent_at >= fault_at]
        to_degrade = round(min(after) - fault_at, 3) if after else None
    to_recover = None
    after_clear: Counter[str] = Counter()
    if clear_at is not None:
        healthy = [
            o.sent_at
            for o in out
            if o.sent_at >= clear_at and o.code == "OK" and o.level == PRIMARY and not o.reasons
        ]
        to_recover = round(min(healthy) - clear_at, 3) if healthy else None
        if not healthy:
            # No healthy answer after the clear: what answered instead, so a
            # failed recovery says which stage stayed degraded.
            after_clear = Counter(
                f"{o.code}:{pb.FallbackLevel.Name(o.level).removeprefix('FALLBACK_LEVEL_')}"
                f":{'+'.join(o.reasons) or '-'}"
                for o in out
                if o.sent_at >= clear_at
            )
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
        ({} if sent_after is None else {"sent_after_fault": sent_after})
        # When (from the start of the load) each unanswered request was sent: next
        # to the fault's marks it says which phase lost it.
        | ({"unanswered_sent_at_s": [round(o.sent_at, 3) for o in late]} if late else {})
        | ({"fault_at_s": round(fault_at, 3)} if late and fault_at is not None else {})
        | ({"after_clear": dict(after_clear)} if after_clear else {}),
    )


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
