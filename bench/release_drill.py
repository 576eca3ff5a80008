"""Release drills on a real stack: rollback under load, canaries, shadow cost.

    python -m bench.release_drill --build build [--write docs/release.md]

Starts Triton in explicit model-control mode and a router with the registry
on, registers fraud@1 and fraud@2 from the build plus two versions made here
(fraud@3: v2's artifact behind a Python backend that sleeps ``--slow-ms`` per
batch, a real slow model; fraud@4: v2's artifact unchanged), then:

1. rollback: prod=2 (lkg=1, warm) under a closed load loop of concurrent
   Predicts; Rollback flips prod to 1. Records failed requests, the admin
   call's duration and when the last request sent after the flip was still
   answered by the old version.
2. canary (slow): fraud@3 at ``--canary-weight``; the controller must roll back.
3. canary (healthy): fraud@4; the controller must promote after ``hold_s``.
4. shadow: caller latency with shadow off and on (mirroring fraud@4 at
   ``--shadow-fraction``), alternating blocks in the same run.

The integration tests (tests/integration/test_release.py) import these drills.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from inferline.v1 import admin_pb2, admin_pb2_grpc, inference_pb2, inference_pb2_grpc
from scripts.stack import ROOT, Stack

ADMIN = (("x-inferline-tenant", "ops"),)
CALLER = (("x-inferline-tenant", "demo"),)
MODEL = "fraud"
BEGIN, END = "<!-- release_drill:begin -->", "<!-- release_drill:end -->"

# The slow variant: the version's own model.py, with every batch delayed.
_SLOW_PATCH = """

# --- release drill: a deliberately slow version (injected latency) ---
import time as _time  # noqa: E402

_DELAY_S = {delay_s}
_score = TritonPythonModel.score


def _slow_score(self, x):  # type: ignore[no-untyped-def]
    _time.sleep(_DELAY_S)
    return _score(self, x)


TritonPythonModel.score = _slow_score
"""


def copy_version(
    repo: Path,
    model: str,
    src: int,
    dst: int,
    *,
    slow_ms: float = 0.0,
    schema_hash: str | None = None,
) -> Path:
    """A new version directory from ``src``: same artifact, metadata renumbered;
    ``slow_ms`` patches its model.py to sleep per batch, ``schema_hash``
    overwrites the recorded feature-schema hash (a version built against other
    feature views)."""
    s, d = repo / model / str(src), repo / model / str(dst)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(s, d)
    meta = json.loads((d / "metadata.json").read_text())
    meta["version"] = dst
    if schema_hash is not None:
        meta["schema_hash"] = schema_hash
    (d / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if slow_ms:
        model_py = d / "model.py"
        model_py.write_text(model_py.read_text() + _SLOW_PATCH.format(delay_s=slow_ms / 1000))
    return d


def release_stack(
    build: Path,
    work: Path,
    log_dir: Path,
    *,
    policy: dict[str, float],
    env: dict[str, str] | None = None,
) -> Stack:
    """A Stack over a private copy of the build's model repository (versions are
    added to it), Triton in explicit mode, the router with the registry on."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "model_repository", ignore_errors=True)
    shutil.copytree(build / "model_repository", work / "model_repository")
    for db in work.glob("registry.db*"):  # a fresh registry per run
        db.unlink()
    feast = work / "feast"
    if not feast.exists():
        feast.symlink_to((build / "feast").resolve())
    router_env = {
        "INFERLINE_FEATURES__TIMEOUT_MS": "1000",
        "INFERLINE_LOG__LEVEL": "warning",
        "INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0",
        "INFERLINE_REGISTRY__ENABLED": "true",
        "INFERLINE_REGISTRY__DB_PATH": str(work / "registry.db"),
        "INFERLINE_REGISTRY__CANARY_POLICY": json.dumps(policy),
        **(env or {}),
    }
    return Stack(
        work,
        log_dir,
        routing_table=ROOT / "scripts" / "demo_routing.yaml",
        router_env=router_env,
        triton_control_mode="explicit",
        triton_load_models=("fraud", "ranker"),
    )


def predict_request(account_id: int, request_id: str) -> inference_pb2.PredictRequest:
    v = inference_pb2.Value
    return inference_pb2.PredictRequest(
        request_id=request_id,
        alias=f"{MODEL}:prod",
        candidates=[
            inference_pb2.Candidate(
                entities={"account_id": v(int64_value=account_id)},
                features={
                    "amount": v(double_value=20.0 + account_id % 300),
                    "hour_of_day": v(double_value=float(account_id % 24)),
                    "is_international": v(double_value=float(account_id % 7 == 0)),
                },
            )
        ],
    )


@dataclass(frozen=True, slots=True)
class Rec:
    sent: float
    done: float
    code: str
    version: int
    arm: str
    degraded: bool
    fallback: bool
    """Answered by a fallback rung, not the routed version."""
    request_id: str
    score: float


@dataclass
class Load:
    """A closed load loop of ``concurrency`` workers until ``stop`` is set."""

    stub: Any
    concurrency: int
    accounts: int = 5000
    records: list[Rec] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _n: int = 0

    async def _worker(self, w: int) -> None:
        while not self.stop.is_set():
            self._n += 1
            rid = f"w{w}-{self._n}"
            req = predict_request(1 + (self._n * 7919) % self.accounts, rid)
            t0 = time.monotonic()
            try:
                resp = await self.stub.Predict(req, metadata=CALLER, timeout=5.0)
            except grpc.aio.AioRpcError as e:
                self.records.append(
                    Rec(t0, time.monotonic(), e.code().name, 0, "", True, True, rid, 0)
                )
                continue
            self.records.append(
                Rec(
                    t0,
                    time.monotonic(),
                    "OK",
                    resp.model.version,
                    resp.model.arm,
                    resp.degraded,
                    resp.fallback_level != inference_pb2.FALLBACK_LEVEL_PRIMARY,
                    rid,
                    resp.scores[0].score,
                )
            )

    async def run(self) -> None:
        await asyncio.gather(*(self._worker(i) for i in range(self.concurrency)))


def admin_stub(channel: grpc.aio.Channel) -> Any:
    return admin_pb2_grpc.AdminServiceStub(channel)


async def register(admin: Any, *versions: int) -> None:
    for v in versions:
        req = admin_pb2.RegisterVersionRequest(model=MODEL, version=v)
        await admin.RegisterVersion(req, metadata=ADMIN, timeout=180)


async def set_prod(admin: Any, *versions: int) -> None:
    for v in versions:
        req = admin_pb2.SetAliasRequest(model=MODEL, alias="prod", version=v)
        await admin.SetAlias(req, metadata=ADMIN, timeout=30)


async def status(admin: Any) -> dict[str, Any]:
    resp = await admin.GetStatus(admin_pb2.ModelRequest(model=MODEL), metadata=ADMIN, timeout=30)
    doc: dict[str, Any] = json.loads(resp.status_json)["models"][MODEL]
    return doc


def p_ms(values: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q) * 1e3) if len(values) else 0.0


async def rollback_drill(
    router: str, *, concurrency: int = 16, before_s: float = 3.0, after_s: float = 3.0
) -> dict[str, Any]:
    """prod=2 (lkg=1) under load, then Rollback. Figures of the flip."""
    async with grpc.aio.insecure_channel(router) as ch:
        admin = admin_stub(ch)
        await set_prod(admin, 1, 2)  # prod=2, lkg=1 (both warm)
        load = Load(inference_pb2_grpc.InferenceServiceStub(ch), concurrency)
        task = asyncio.create_task(load.run())
        await asyncio.sleep(before_s)
        t_flip = time.monotonic()
        await admin.Rollback(
            admin_pb2.ModelRequest(model=MODEL, reason="drill"), metadata=ADMIN, timeout=30
        )
        t_ack = time.monotonic()
        await asyncio.sleep(after_s)
        load.stop.set()
        await task
    recs = load.records
    after = [r for r in recs if r.sent >= t_ack]
    old_after_flip = [r.sent for r in recs if r.version == 2 and r.sent >= t_flip]
    new = [r.done for r in recs if r.version == 1 and r.sent >= t_flip]
    return {
        "requests": len(recs),
        "failed": sum(r.code != "OK" for r in recs),
        "fallback": sum(r.fallback for r in recs),
        "concurrency": concurrency,
        "rollback_call_ms": round((t_ack - t_flip) * 1e3, 2),
        "last_old_version_sent_ms": round(max(old_after_flip, default=t_flip) - t_flip, 4) * 1e3,
        "first_new_version_ms": round((min(new, default=t_flip) - t_flip) * 1e3, 2),
        "served_after_ack": sorted({r.version for r in after}),
        "p99_ms": round(p_ms([r.done - r.sent for r in recs], 0.99), 2),
    }


async def canary_drill(
    router: str, version: int, *, weight: float, concurrency: int = 12, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Start a canary of ``version`` and drive load until the controller acts."""
    async with grpc.aio.insecure_channel(router) as ch:
        admin = admin_stub(ch)
        await admin.StartCanary(
            admin_pb2.StartCanaryRequest(model=MODEL, version=version, weight=weight),
            metadata=ADMIN,
            timeout=30,
        )
        t0 = time.monotonic()
        load = Load(inference_pb2_grpc.InferenceServiceStub(ch), concurrency)
        task = asyncio.create_task(load.run())
        doc: dict[str, Any] = {}
        verdict: dict[str, Any] = {}
        try:
            while time.monotonic() - t0 < timeout_s:
                await asyncio.sleep(0.5)
                doc = await status(admin)
                verdict = doc.get("canary_verdict") or verdict
                if doc["experiment"] is None:
                    break
        finally:
            load.stop.set()
            await task
    decided = time.monotonic() - t0
    event = next((e for e in doc.get("events", []) if e["actor"] == "canary-controller"), None)
    arms: dict[str, list[Rec]] = {}
    for r in load.records:
        arms.setdefault(r.arm or "-", []).append(r)
    return {
        "version": version,
        "weight": weight,
        "action": event["action"] if event else "none",
        "reason": (event or {}).get("detail", {}).get("reason", ""),
        "decided_s": round(decided, 1),
        "prod_after": doc.get("aliases", {}).get(f"{MODEL}:prod"),
        "failed": sum(r.code != "OK" for r in load.records),
        "verdict_figures": {k: round(v, 4) for k, v in verdict.get("figures", {}).items()},
        "arms": {
            a: {"requests": len(rs), "p99_ms": round(p_ms([r.done - r.sent for r in rs], 0.99), 2)}
            for a, rs in sorted(arms.items())
        },
    }


async def shadow_bench(
    router: str,
    candidate: int,
    *,
    fraction: float,
    blocks: int = 6,
    block_s: float = 5.0,
    concurrency: int = 8,
) -> dict[str, Any]:
    """Caller latency with shadow off vs on, alternating blocks in one run."""
    lat: dict[str, list[float]] = {"off": [], "on": []}
    async with grpc.aio.insecure_channel(router) as ch:
        admin = admin_stub(ch)
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        for b in range(blocks):
            mode = "on" if b % 2 else "off"
            req = admin_pb2.SetShadowRequest(
                model=MODEL, version=candidate, fraction=fraction if mode == "on" else 0.0
            )
            await admin.SetShadow(req, metadata=ADMIN, timeout=30)
            load = Load(stub, concurrency)
            task = asyncio.create_task(load.run())
            await asyncio.sleep(block_s)
            load.stop.set()
            await task
            lat[mode] += [r.done - r.sent for r in load.records if r.code == "OK"]
        await admin.SetShadow(
            admin_pb2.SetShadowRequest(model=MODEL, version=candidate, fraction=0.0),
            metadata=ADMIN,
            timeout=30,
        )
    out: dict[str, Any] = {"fraction": fraction, "concurrency": concurrency, "blocks": blocks}
    for mode, values in lat.items():
        out[mode] = {
            "requests": len(values),
            "p50_ms": round(p_ms(values, 0.5), 2),
            "p99_ms": round(p_ms(values, 0.99), 2),
        }
    return out


def shadow_counts(metrics_text: str) -> dict[str, float]:
    """inferline_shadow_requests_total by result, from a /metrics page."""
    out: dict[str, float] = {}
    for m in re.finditer(
        r'^inferline_shadow_requests_total\{[^}]*result="(\w+)"[^}]*\} (\S+)$', metrics_text, re.M
    ):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def report(results: dict[str, Any], command: str) -> str:
    rb = results["rollback"]
    lines = [
        BEGIN,
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on the 2-core development box "
        f"(CPU Triton, Python-backend fraud GBDT), command: `{command}`.",
        "",
        "| rollback under load (median of runs) | value |",
        "|---|---|",
        f"| runs | {rb['runs']} |",
        f"| requests per run / concurrency | {rb['requests']} / {rb['concurrency']} |",
        f"| failed requests (all runs) | {rb['failed_total']} |",
        f"| answers from a fallback rung (all runs) | {rb['fallback_total']} |",
        f"| Rollback RPC (commit + snapshot swap), ms | {rb['rollback_call_ms']} |",
        f"| last request sent after the flip still answered by the old version, ms after flip "
        f"| {rb['last_old_version_sent_ms']} |",
        f"| versions serving requests sent after the ack | {rb['served_after_ack']} |",
        f"| caller p99 during the drill, ms | {rb['p99_ms']} |",
        "",
        "| canary | action | reason | decided after s | prod after | failed | per-arm p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("canary_slow", "canary_healthy"):
        c = results[name]
        arms = ", ".join(f"{a}: {v['p99_ms']}" for a, v in c["arms"].items())
        lines.append(
            f"| fraud@{c['version']} ({name.removeprefix('canary_')}, weight {c['weight']}) "
            f"| {c['action']} | {c['reason']} | {c['decided_s']} | {c['prod_after']} "
            f"| {c['failed']} | {arms} |"
        )
    sh = results["shadow"]
    lines += [
        "",
        f"| shadow (fraction {sh['fraction']}, concurrency {sh['concurrency']}, "
        f"{sh['blocks']} alternating blocks) | requests | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| off | {sh['off']['requests']} | {sh['off']['p50_ms']} | {sh['off']['p99_ms']} |",
        f"| on | {sh['on']['requests']} | {sh['on']['p50_ms']} | {sh['on']['p99_ms']} |",
        "",
        f"Mirrors by result: {json.dumps(sh.get('mirrors', {}), sort_keys=True)}.",
        END,
    ]
    return "\n".join(lines)


def write_report(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else f"# Release safety\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + block + tail)


# Decisions on a shared 2-core box: enough samples for a stable p99, slack for
# its noise, a short hold so the drill finishes.
DRILL_POLICY = {"min_samples": 300, "hold_s": 5.0, "p99_slack_ms": 15.0, "p99_ratio": 1.5}
# The injected latency must show as latency, not as timeouts (errors): the
# drill raises the per-call inference limit above the slow version's delay.
DRILL_ENV = {"INFERLINE_RELIABILITY__INFERENCE_TIMEOUT_MS": "250"}


async def drills(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    assert stack.router is not None
    router = stack.router.address
    async with grpc.aio.insecure_channel(router) as ch:
        admin = admin_stub(ch)
        await register(admin, 1, 2, 3, 4)
    runs = [await rollback_drill(router, concurrency=args.concurrency) for _ in range(args.runs)]
    rb = {
        k: statistics.median(r[k] for r in runs)
        for k in ("requests", "rollback_call_ms", "last_old_version_sent_ms", "p99_ms")
    }
    rb |= {
        "runs": len(runs),
        "concurrency": args.concurrency,
        "failed_total": sum(r["failed"] for r in runs),
        "fallback_total": sum(r["fallback"] for r in runs),
        "served_after_ack": sorted({v for r in runs for v in r["served_after_ack"]}),
    }
    results: dict[str, Any] = {"rollback": rb, "rollback_runs": runs}
    async with grpc.aio.insecure_channel(router) as ch:
        await set_prod(admin_stub(ch), 1, 2)
    c = args.canary_concurrency
    results["canary_slow"] = await canary_drill(router, 3, weight=args.canary_weight, concurrency=c)
    results["canary_healthy"] = await canary_drill(
        router, 4, weight=args.canary_weight, concurrency=c
    )
    async with grpc.aio.insecure_channel(router) as ch:
        await set_prod(admin_stub(ch), 2)
    results["shadow"] = await shadow_bench(
        router, 1, fraction=args.shadow_fraction, concurrency=args.shadow_concurrency, blocks=8
    )
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.release_drill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--work", type=Path, default=None, help="default: <build>/release-drill")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--canary-concurrency", type=int, default=4)
    p.add_argument("--shadow-concurrency", type=int, default=4)
    p.add_argument("--slow-ms", type=float, default=30.0)
    p.add_argument("--canary-weight", type=float, default=0.3)
    p.add_argument("--shadow-fraction", type=float, default=0.2)
    p.add_argument("--write", type=Path, default=None, help="update this markdown file")
    args = p.parse_args(argv)
    work = args.work or args.build / "release-drill"
    stack = release_stack(args.build, work, work / "logs", policy=DRILL_POLICY, env=DRILL_ENV)
    repo = work / "model_repository"
    with _with_versions(stack, repo, args.slow_ms):
        results = asyncio.run(drills(stack, args))
        assert stack.router is not None
        with urllib.request.urlopen(stack.router.metrics_url, timeout=5) as resp:
            results["shadow"]["mirrors"] = shadow_counts(resp.read().decode())
    print(json.dumps(results, indent=2))
    if args.write:
        command = "python -m bench.release_drill " + " ".join(argv or sys.argv[1:])
        write_report(args.write, report(results, command.strip()))
    return 0


@contextlib.contextmanager
def _with_versions(stack: Stack, repo: Path, slow_ms: float) -> Any:
    """Start ``stack`` after adding fraud@3 (slow) and fraud@4 (healthy copy)."""
    stack.start()
    try:
        copy_version(repo, MODEL, 2, 3, slow_ms=slow_ms)
        copy_version(repo, MODEL, 2, 4)
        yield stack
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
