"""Start and stop the edge: Envoy, its xDS control plane, the rate-limit service (+ Redis).

Same launcher rules as ``scripts.stack``: real processes on 127.0.0.1, free
ports, one log each, readiness deadlines, group stop (the processes themselves:
scripts/edge_procs.py).

Order: Redis -> rate-limit service -> control plane -> Envoy. Envoy's public ports
are picked here and handed to the control plane (listeners come over xDS).

CLI: ``python -m scripts.edge_stack up --build build`` starts Triton and the router
(mTLS, ``INFERLINE_AUTH__MODE=edge``) with the edge in front and prints how to call it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import grpc

from inferline_edge.certs import ROUTER_DNS, DevPKI
from scripts.allocator import Allocator
from scripts.edge_procs import (
    ControlPlaneProcess,
    EnvoyProcess,
    PublicPorts,
    RateLimitProcess,
    grpc_serving,
)
from scripts.stack import (
    ROOT,
    OnlineStore,
    RedisServer,
    RouterProcess,
    Stack,
    add_stack_args,
)
from scripts.supervisor import StackError, Supervisor, free_ports

DEFAULT_TENANTS = ROOT / "envoy" / "tenants.yaml"


@dataclasses.dataclass
class EdgeStack:
    """Redis -> rate-limit service -> control plane -> Envoy, in front of ``upstream``."""

    log_dir: Path
    pki: DevPKI
    upstream: str
    _: dataclasses.KW_ONLY
    tenants: Path = DEFAULT_TENANTS
    with_ratelimit: bool = True
    with_jwt: bool = True
    access_log: bool = False
    hot_restart: bool = False
    """Run Envoy so that ``envoy.hot_restart_now()`` works (restart drills)."""
    secrets_dir: Path | None = None
    """Kubernetes-secret dirs the control plane serves over SDS (None: the dev PKI)."""
    bridge: str | None = None
    """The routers' HTTP/1.1 fast-lane addresses (host:port,...): Predict goes there."""
    envoy_workers: int = 2
    """Envoy's worker threads (``--concurrency``; the chart: match the CPU limit)."""
    redis: RedisServer | None = dataclasses.field(default=None, init=False)
    ratelimit: RateLimitProcess | None = dataclasses.field(default=None, init=False)
    xds: ControlPlaneProcess | None = dataclasses.field(default=None, init=False)
    envoy: EnvoyProcess | None = dataclasses.field(default=None, init=False)
    public: PublicPorts | None = dataclasses.field(default=None, init=False)
    _stack: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    def start(self) -> Self:
        self.log_dir = Path(self.log_dir).resolve()
        with contextlib.ExitStack() as stack:
            if self.with_ratelimit:
                self.redis = stack.enter_context(RedisServer(self.log_dir))
                self.ratelimit = stack.enter_context(
                    RateLimitProcess(self.tenants, self.redis.url, self.log_dir)
                )
            ports = free_ports(2)  # a lost race shows up as Envoy never becoming ready
            self.public = PublicPorts(ports[0], ports[1] if self.with_jwt else None)
            self.xds = stack.enter_context(
                ControlPlaneProcess(
                    self.tenants,
                    self.pki,
                    self.log_dir,
                    public=self.public,
                    upstream=self.upstream,
                    ratelimit=self.ratelimit.address if self.ratelimit else None,
                    access_log=self.access_log,
                    secrets_dir=self.secrets_dir,
                    bridge=self.bridge,
                )
            )
            self.envoy = stack.enter_context(
                EnvoyProcess(
                    self.log_dir,
                    xds_port=self.xds.ads_port,
                    public=self.public,
                    concurrency=self.envoy_workers,
                    hot_restart=self.hot_restart,
                )
            )
            self._stack = stack.pop_all()
        return self

    def restart_ratelimit(self) -> RateLimitProcess:
        """Start a fresh rate-limit service on the old port (after a fault test)."""
        assert self.ratelimit is not None and self.redis is not None
        old = self.ratelimit
        old.stop()
        self.ratelimit = RateLimitProcess(
            self.tenants, self.redis.url, self.log_dir, pinned=old.ports
        ).start()
        self._stack.callback(self.ratelimit.stop)
        return self.ratelimit

    @property
    def mtls_address(self) -> str:
        assert self.public is not None
        return f"127.0.0.1:{self.public.mtls}"

    @property
    def jwt_address(self) -> str:
        assert self.public is not None and self.public.jwt is not None
        return f"127.0.0.1:{self.public.jwt}"

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def router_tls_env(pki: DevPKI) -> dict[str, str]:
    """Router settings for running behind the edge (mTLS, identity from Envoy)."""
    return {
        "INFERLINE_TLS__CERT_FILE": str(pki.router.cert),
        "INFERLINE_TLS__KEY_FILE": str(pki.router.key),
        "INFERLINE_TLS__CLIENT_CA_FILE": str(pki.ca.cert),
        "INFERLINE_AUTH__MODE": "edge",
    }


class TlsRouterProcess(RouterProcess):
    """The router serving mTLS: the readiness probe presents the edge's client cert.

    Start it after everything else: its probe uses gRPC in this process, and a
    fork with preexec_fn after that can hang in grpc's fork handler. ``port`` pins
    the port so the edge can be configured with the address before the router runs.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        pki: DevPKI,
        *,
        port: int | None = None,
        bridge_port: int | None = None,
        allocator: Allocator = "auto",
    ) -> None:
        super().__init__({**router_tls_env(pki), **env}, log_dir, allocator=allocator)
        self.pki, self._port, self._bridge_port = pki, port, bridge_port

    def command(self) -> list[str]:
        if self._port is not None:
            metrics, spare = free_ports(2)
            self.ports = [self._port, metrics, self._bridge_port or spare]
        return super().command()

    def probe(self) -> bool:
        key, cert = self.pki.edge_client.key.read_bytes(), self.pki.edge_client.cert.read_bytes()
        creds = grpc.ssl_channel_credentials(self.pki.ca.cert.read_bytes(), key, cert)
        options = [("grpc.ssl_target_name_override", ROUTER_DNS)]
        return grpc_serving(self.address, self.health_service, creds, options)


@dataclasses.dataclass
class FullStack:
    """Triton -> edge -> router (mTLS, edge mode), the whole chain ``up`` runs.

    The router comes last (see TlsRouterProcess) on a port picked up front, so
    Envoy is configured with its address before it runs."""

    build: Path
    log_dir: Path
    pki: DevPKI
    _: dataclasses.KW_ONLY
    routing_table: Path = ROOT / "scripts" / "demo_routing.yaml"
    tenants: Path = DEFAULT_TENANTS
    online_store: OnlineStore = "sqlite"
    router_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    access_log: bool = False
    replicas: int = 1
    """Router processes behind Envoy's router cluster (rolling-restart drills)."""
    hot_restart: bool = False
    """Run Envoy so that ``edge.envoy.hot_restart_now()`` works."""
    edge_secrets_dir: Path | None = None
    """Passed to EdgeStack.secrets_dir (rotation tests and drills)."""
    fast_lane: bool = True
    """Predict from Envoy to the routers over the HTTP/1.1 fast lane (the default
    deployment); False keeps every call on the routers' gRPC port."""
    router_allocator: Allocator = "auto"
    """The routers' memory allocator (scripts/allocator.py)."""
    envoy_workers: int = 2
    """Passed to EdgeStack.envoy_workers."""
    base: Stack | None = dataclasses.field(default=None, init=False)
    edge: EdgeStack | None = dataclasses.field(default=None, init=False)
    router: TlsRouterProcess | None = dataclasses.field(default=None, init=False)
    routers: list[TlsRouterProcess] = dataclasses.field(default_factory=list, init=False)
    _stack: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    def start(self) -> Self:
        build = Path(self.build).resolve()
        with contextlib.ExitStack() as es:
            self.base = es.enter_context(
                Stack(
                    build,
                    self.log_dir,
                    online_store=self.online_store,
                    routing_table=self.routing_table,
                    with_router=False,
                )
            )
            assert self.base.triton is not None and self.base.feast_repo is not None
            picked = free_ports(2 * self.replicas)
            ports, bridges = picked[: self.replicas], picked[self.replicas :]
            self.edge = es.enter_context(
                EdgeStack(
                    self.log_dir,
                    self.pki,
                    ",".join(f"127.0.0.1:{p}" for p in ports),
                    tenants=self.tenants,
                    access_log=self.access_log,
                    hot_restart=self.hot_restart,
                    secrets_dir=self.edge_secrets_dir,
                    bridge=",".join(f"127.0.0.1:{p}" for p in bridges) if self.fast_lane else None,
                    envoy_workers=self.envoy_workers,
                )
            )
            env = {
                "INFERLINE_TRITON__URL": self.base.triton.grpc_url,
                "INFERLINE_TRITON__HTTP_URL": self.base.triton.http_url,
                "INFERLINE_FEATURES__REPO_PATH": str(self.base.feast_repo),
                "INFERLINE_MODELS__REPOSITORY": str(build / "model_repository"),
                "INFERLINE_ROUTING__TABLE_PATH": str(Path(self.routing_table).resolve()),
                **self.router_env,
            }
            self.routers = [
                es.enter_context(
                    TlsRouterProcess(
                        env,
                        self.log_dir,
                        self.pki,
                        port=port,
                        bridge_port=bridge,
                        allocator=self.router_allocator,
                    )
                )
                for port, bridge in zip(ports, bridges, strict=True)
            ]
            self.router = self.routers[0]
            self._stack = es.pop_all()
        return self

    def supervisors(self) -> list[Supervisor]:
        out: list[Supervisor | None] = [
            *(self.base.supervisors() if self.base else []),
            *self.routers,
        ]
        if self.edge is not None:
            out += [self.edge.redis, self.edge.ratelimit, self.edge.xds, self.edge.envoy]
        return [s for s in out if s is not None]

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.edge_stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="Triton + router (mTLS) + edge; Ctrl-C stops")
    add_stack_args(up)
    up.add_argument("--tenants", type=Path, default=DEFAULT_TENANTS)
    up.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    log_dir = (args.log_dir or args.build / "logs" / time.strftime("edge-%Y%m%d-%H%M%S")).resolve()
    pki = DevPKI.create(
        log_dir / "pki", tenants=[("demo", "cli"), ("payments", "checkout"), ("feed", "web")]
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    full = FullStack(
        args.build,
        log_dir,
        pki,
        routing_table=args.routing_table,
        tenants=args.tenants,
        online_store=args.online_store,
        access_log=args.access_log,
    )
    try:
        with full:
            assert full.edge is not None and full.edge.envoy is not None and full.router
            client = pki.client("demo", "cli")
            print(
                f"edge (mTLS)     {full.edge.mtls_address}\n"
                f"edge (JWT)      {full.edge.jwt_address}\n"
                f"envoy admin     127.0.0.1:{full.edge.envoy.admin_port}\n"
                f"router (mTLS)   {full.router.address}\nclient cert     {client.cert}\n"
                f"client key      {client.key}\nCA              {pki.ca.cert}\n"
                f"logs            {log_dir}\nedge is up; Ctrl-C stops it",
                flush=True,
            )
            while not stop.wait(0.5):
                for s in full.supervisors():
                    s.check_alive()
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
