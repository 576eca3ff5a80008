"""Disaster-recovery drill: two regional stacks, lose the primary, fail over, measure.

Region A (primary) and region B (standby) each run Triton + router
(``scripts.stack.Stack``) on loopback with their own region setting, routing table,
registry database and audit directory. Region B starts from a restore of A's first
backup. Then, all at once:

- a client with a failover list [A, B] sends steady Predict traffic (tenant
  ``demo``, unpinned) and moves to the next endpoint when one stops answering;
- a writer makes numbered changes in region A: a routing-table edit, an audit
  record, a registry row (the changes a region loss can lose);
- ``inferline dr`` backups of A are taken every ``--backup-every`` seconds;
- at ``--kill-at`` both A processes (router, Triton) get SIGKILL: the region is gone;
- a failover controller sees A's health check fail, restores the latest backup
  into B's paths; B's router hot-reloads the restored routing table.

Printed (and written to docs/reliability.md with ``--md``):
- RTO: the client's last success on A -> its first success on B;
- RPO: the changes made after the last backup, lost, counted per store, and the
  time between that backup and the loss;
- residency: a tenant pinned to region A is refused by B (FAILED_PRECONDITION).

    python -m bench.dr_drill --build build --md docs/reliability.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.cert_rotation import write_md_section
from inferline.v1 import inference_pb2_grpc
from router.ops import dr
from scripts.demo import fraud_request
from scripts.stack import ROOT, RouterProcess, Stack
from scripts.supervisor import Supervisor, free_ports

FAILOVER_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class RegionFiles:
    """The state a region holds and DR must carry: config, registry, audit trail."""

    name: str
    root: Path

    @property
    def table(self) -> Path:
        return self.root / "routing.yaml"

    @property
    def registry(self) -> Path:
        return self.root / "registry.db"

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    def seed(self) -> None:
        self.audit.mkdir(parents=True, exist_ok=True)
        table = yaml.safe_load((ROOT / "scripts" / "demo_routing.yaml").read_text())
        table["version"] = "edit-0"
        table["tenants"]["payments"]["regions"] = ["region-a"]  # pinned: never served in B
        table["tenants"]["feed"]["regions"] = ["region-a", "region-b"]
        self.table.write_text(yaml.safe_dump(table))
        db = sqlite3.connect(self.registry)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY, at REAL)")
        db.commit()
        db.close()

    def counts(self) -> dict[str, int]:
        """Highest change number each store holds."""
        version = str(yaml.safe_load(self.table.read_text())["version"])
        db = sqlite3.connect(self.registry)
        try:
            (rows,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
        finally:
            db.close()
        audit = 0
        for f in self.audit.glob("*.jsonl"):
            for line in f.read_text().splitlines():
                audit = max(audit, int(json.loads(line)["seq"]))
        return {"routing_edits": int(version.split("-")[1]), "registry_rows": rows, "audit": audit}


class Writer:
    """Numbered changes in the primary region: one of each kind per change."""

    def __init__(self, files: RegionFiles) -> None:
        self.files, self.seq = files, 0
        # Changes run in worker threads, one at a time.
        self.db = sqlite3.connect(files.registry, check_same_thread=False)

    def change(self) -> None:
        self.seq += 1
        table = yaml.safe_load(self.files.table.read_text())
        table["version"] = f"edit-{self.seq}"
        tmp = self.files.table.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(table))
        os.replace(tmp, self.files.table)
        with open(self.files.audit / "records.jsonl", "a") as f:
            f.write(json.dumps({"seq": self.seq, "action": "alias.move", "at": time.time()}) + "\n")
        self.db.execute("INSERT INTO changes VALUES (?, ?)", (self.seq, time.time()))
        self.db.commit()

    def close(self) -> None:
        self.db.close()


class FailoverClient:
    """Sends to the first endpoint that answers; moves on when the current one fails."""

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        # Short reconnect backoff: a standby that comes up is used within ~0.5 s.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ]
        self.channels = [grpc.aio.insecure_channel(e, options) for e in endpoints]
        self.stubs = [inference_pb2_grpc.InferenceServiceStub(c) for c in self.channels]
        self.current = 0

    async def predict(self, tenant: str, timeout_s: float) -> tuple[int, grpc.StatusCode]:
        idx = self.current
        try:
            await self.stubs[idx].Predict(
                fraud_request([1, 2]), metadata=(("x-inferline-tenant", tenant),), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as e:
            if e.code() in FAILOVER_CODES and idx == self.current:
                self.current = min(idx + 1, len(self.endpoints) - 1)
            return idx, e.code()
        return idx, grpc.StatusCode.OK

    async def close(self) -> None:
        for c in self.channels:
            await c.close()


@dataclass
class DrillReport:
    rps: float
    backup_every_s: float
    change_every_s: float
    requests: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    backups: int = 0
    kill_at_s: float = 0.0
    detected_after_s: float | None = None  # kill -> controller saw A down
    restored_after_s: float | None = None  # kill -> latest backup restored into B
    restored_served_after_s: float | None = None  # kill -> B's router serves that table
    standby: str = "warm"
    failed_requests: int = 0
    rto_s: float | None = None  # last OK on A -> first OK on B (client view)
    last_backup_age_s: float | None = None  # kill - last backup start: the loss window
    changes_made: dict[str, int] = field(default_factory=dict)
    changes_restored: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    b_serves_version: str | None = None
    pinned_tenant_on_b: str | None = None
    unpinned_tenant_on_b: str | None = None


class PinnedRouter(RouterProcess):
    """A router on ports picked up front: the client's failover list names it before
    it runs (cold standby)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        super().__init__(env, log_dir)
        self._pinned = free_ports(self.n_ports)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._pinned[0]}"

    def command(self) -> list[str]:
        self.ports = list(self._pinned)
        return super().command()


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="inferline.v1.InferenceService"), timeout=0.3
            )
        except grpc.RpcError:
            return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def _kill(sup: Supervisor) -> None:
    os.killpg(os.getpgid(sup.pid), signal.SIGKILL)


def _router_env(files: RegionFiles) -> dict[str, str]:
    return {
        "INFERLINE_REGION__NAME": files.name,
        "INFERLINE_FEATURES__TIMEOUT_MS": "1000",
        "INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0",
        "INFERLINE_ROUTING__RELOAD_INTERVAL_S": "0.2",
        "INFERLINE_LOG__LEVEL": "info",
    }


def _backup(a: RegionFiles, out: Path) -> Path:
    return dr.backup(
        out, configs=[a.table], databases=[a.registry], directories=[a.audit], region=a.name
    )


def _served_version(log: Path) -> str | None:
    """The routing-table version a router last loaded, from its JSON log."""
    version = None
    for line in log.read_text(errors="replace").splitlines():
        if '"routing.reloaded"' in line or '"router.started"' in line:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            version = rec.get("new") or rec.get("routing_version") or version
    return version


async def drill(
    build: Path,
    log_dir: Path,
    *,
    rps: float = 50.0,
    backup_every_s: float = 2.0,
    change_every_s: float = 0.1,
    kill_at_s: float = 7.3,
    after_s: float = 5.0,
    standby: str = "warm",
) -> DrillReport:
    """``standby``: "warm" = B's router runs all along (its table replaced on failover);
    "cold" = only B's Triton runs, its router starts after the restore (pilot light)."""
    a, b = (
        RegionFiles("region-a", log_dir / "region-a"),
        RegionFiles("region-b", log_dir / "region-b"),
    )
    backups = log_dir / "backups"
    a.seed()
    first = _backup(a, backups)
    dr.restore(first, mapping=[(str(a.root), str(b.root))])  # the standby starts from a backup
    stacks = {
        f.name: Stack(
            build,
            log_dir / f.name / "logs",
            routing_table=f.table,
            router_env=_router_env(f),
            with_router=f is a or standby == "warm",
        )
        for f in (a, b)
    }
    for f, s in zip((a, b), stacks.values(), strict=True):
        (log_dir / f.name / "logs").mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(s.start)  # from a thread: no fork after gRPC use
    sa, sb = stacks["region-a"], stacks["region-b"]
    assert sa.router is not None and sa.triton is not None and sb.triton is not None
    b_router = sb.router or PinnedRouter(
        {
            **_router_env(b),
            "INFERLINE_TRITON__URL": sb.triton.grpc_url,
            "INFERLINE_TRITON__HTTP_URL": sb.triton.http_url,
            "INFERLINE_FEATURES__REPO_PATH": str(build / "feast"),
            "INFERLINE_MODELS__REPOSITORY": str(build / "model_repository"),
            "INFERLINE_ROUTING__TABLE_PATH": str(b.table),
        },
        log_dir / b.name / "logs",
    )
    report = DrillReport(rps, backup_every_s, change_every_s, standby=standby)
    client = FailoverClient([sa.router.address, b_router.address])
    writer = Writer(a)
    results: list[tuple[float, int, grpc.StatusCode]] = []
    taken: list[tuple[float, Path]] = [(time.monotonic(), first)]
    stop, a_dead = asyncio.Event(), asyncio.Event()
    t_kill = 0.0

    async def one() -> None:
        idx, code = await client.predict("demo", 0.25)
        results.append((time.monotonic(), idx, code))

    async def load() -> None:
        pending: set[asyncio.Task[None]] = set()
        next_at = time.monotonic()
        while not stop.is_set():
            t = asyncio.create_task(one())
            pending.add(t)
            t.add_done_callback(pending.discard)
            next_at += 1 / rps
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*pending)

    async def write() -> None:
        while not a_dead.is_set():
            await asyncio.to_thread(writer.change)
            await asyncio.sleep(change_every_s)

    async def backup_loop() -> None:
        while not a_dead.is_set():
            await asyncio.sleep(backup_every_s)
            if a_dead.is_set():
                break
            started = time.monotonic()
            path = await asyncio.to_thread(_backup, a, backups)
            if not a_dead.is_set():  # a backup racing the loss is never shipped
                taken.append((started, path))

    async def controller() -> None:
        """Failover: on A's health failing, restore the latest backup into B."""
        assert sa.router is not None
        while True:
            if not await asyncio.to_thread(_serving, sa.router.address):
                break
            await asyncio.sleep(0.2)
        report.detected_after_s = round(time.monotonic() - t_kill, 3)
        latest = taken[-1][1]
        await asyncio.to_thread(dr.restore, latest, mapping=[(str(a.root), str(b.root))])
        report.restored_after_s = round(time.monotonic() - t_kill, 3)
        want = str(yaml.safe_load(b.table.read_text())["version"])
        if sb.router is None:  # cold standby: start B's router on the restored state
            await asyncio.to_thread(b_router.start)
        while _served_version(b_router.log_path) != want:  # noqa: ASYNC110 - polls a log file
            await asyncio.sleep(0.02)
        report.restored_served_after_s = round(time.monotonic() - t_kill, 3)

    t0 = time.monotonic()
    tasks = [asyncio.create_task(c()) for c in (load, write, backup_loop)]
    try:
        await asyncio.sleep(kill_at_s)
        a_dead.set()  # the region is gone: no more writes, no more backups from it
        await tasks[1]  # the change in progress lands (or not) before the count
        report.changes_made = await asyncio.to_thread(a.counts)
        t_kill = time.monotonic()
        _kill(sa.router)
        _kill(sa.triton)
        report.kill_at_s = round(t_kill - t0, 3)
        ctl = asyncio.create_task(controller())
        await asyncio.sleep(after_s)
        await ctl
        await asyncio.sleep(1.0)  # B's table reload (0.2 s poll)
        # Residency after failover: B refuses the tenant pinned to A, serves the others.
        for tenant, attr in (("payments", "pinned_tenant_on_b"), ("demo", "unpinned_tenant_on_b")):
            _, code = await client.predict(tenant, 2.0)
            setattr(report, attr, code.name)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        a_dead.set()
        for t in tasks:
            t.cancel()
        writer.close()
        await client.close()
        b_log = b_router.log_path
        if sb.router is None:
            await asyncio.to_thread(b_router.stop)
        for s in stacks.values():
            await asyncio.to_thread(s.stop)
    report.requests = len(results)
    report.failed_requests = sum(1 for _, _, c in results if c != grpc.StatusCode.OK)
    report.codes = dict(Counter(f"{'AB'[i]}:{c.name}" for _, i, c in results))
    report.backups = len(taken)
    last_ok_a = max((t for t, i, c in results if i == 0 and c == grpc.StatusCode.OK), default=None)
    first_ok_b = min(
        (t for t, i, c in results if i == 1 and c == grpc.StatusCode.OK and t > t_kill),
        default=None,
    )
    if last_ok_a is not None and first_ok_b is not None:
        report.rto_s = round(first_ok_b - last_ok_a, 3)
    report.last_backup_age_s = round(t_kill - taken[-1][0], 3)
    report.changes_restored = b.counts()
    report.lost = {
        k: report.changes_made[k] - report.changes_restored[k] for k in report.changes_made
    }
    report.b_serves_version = _served_version(b_log)
    return report


def markdown(r: DrillReport, command: str) -> str:
    return "\n".join(
        [
            f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, 2 shared cores, CPU only: "
            "two Triton + router stacks on loopback).",
            "",
            f"Load {r.rps:.0f} rps (tenant `demo`, unpinned), a change every "
            f"{r.change_every_s} s in region A (routing-table edit + audit record + registry "
            f"row), a backup every {r.backup_every_s} s ({r.backups} taken); region A "
            f"SIGKILLed at {r.kill_at_s} s. Standby: **{r.standby}** ("
            + (
                "B's router running, its state replaced by the restore"
                if r.standby == "warm"
                else "only B's Triton running; B's router started after the restore"
            )
            + ").",
            "",
            "| measure | value |",
            "|---|---|",
            f"| RTO: last success on A -> first success on B | **{r.rto_s} s** |",
            f"| A's loss detected by the failover controller | {r.detected_after_s} s after kill |",
            f"| latest backup restored into B | {r.restored_after_s} s after kill |",
            f"| B's router serves the restored routing table | "
            f"{r.restored_served_after_s} s after kill |",
            f"| RPO window: last backup -> loss | **{r.last_backup_age_s} s** |",
            f"| changes made in A before the loss | {r.changes_made} |",
            f"| changes restored in B | {r.changes_restored} |",
            f"| changes lost (RPO, counted) | **{r.lost}** |",
            f"| routing table B serves after failover | `{r.b_serves_version}` |",
            f"| tenant pinned to region A, asked on B | {r.pinned_tenant_on_b} |",
            f"| unpinned tenant on B | {r.unpinned_tenant_on_b} |",
            f"| requests failed (all during the switch) | {r.failed_requests} of {r.requests} |",
            f"| requests by region:status | {r.codes} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--build", type=Path, default=ROOT / "build")
    p.add_argument("--rps", type=float, default=50.0)
    p.add_argument("--backup-every", type=float, default=2.0)
    p.add_argument("--change-every", type=float, default=0.1)
    p.add_argument("--kill-at", type=float, default=7.3)
    p.add_argument("--after", type=float, default=5.0, help="seconds of load after the kill")
    p.add_argument("--standby", choices=["warm", "cold"], default="warm")
    p.add_argument("--md", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    log_dir = (args.build / "logs" / time.strftime("dr-%Y%m%d-%H%M%S")).resolve()
    report = asyncio.run(
        drill(
            args.build.resolve(),
            log_dir,
            rps=args.rps,
            backup_every_s=args.backup_every,
            change_every_s=args.change_every,
            kill_at_s=args.kill_at,
            after_s=args.after,
            standby=args.standby,
        )
    )
    args_text = " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(report, f"python -m bench.dr_drill {args_text}")
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=2))
    if args.md:
        write_md_section(args.md, f"dr-drill-{args.standby}", text)
    return 0 if report.rto_s is not None else 1


if __name__ == "__main__":
    sys.exit(main())
