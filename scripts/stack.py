"""Start and stop the local stack: Redis, Triton and the router, as real processes.

One launcher serves ``make demo``, the integration tests and the benchmarks, so all
run the same binaries the same way: loopback only, free ports picked at start, one
log per process, readiness deadlines, and a stop that leaves no orphans (how each
child is supervised: scripts/supervisor.py).

CLI: ``python -m scripts.stack up --build build`` (Ctrl-C or SIGTERM stops).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts import tritonpaths
from scripts.allocator import Allocator, allocator_env
from scripts.supervisor import ROOT as ROOT  # re-exported: the root every launcher uses
from scripts.supervisor import StackError, Supervisor, log_tail, processes

STUB_NAME = "triton_python_backend_stub"
ROUTER_HEALTH_SERVICE = "inferline.v1.InferenceService"


class TritonServer(Supervisor):
    """tritonserver from the nvidia-pytriton wheel. Ready = HTTP /v2/health/ready."""

    name = "tritonserver"
    n_ports = 3  # grpc, http, metrics
    start_timeout_s = 60.0
    stop_timeout_s = 15.0  # --exit-timeout-secs=5 plus model unload

    def __init__(
        self,
        model_repository: Path,
        log_dir: Path,
        *,
        model_control_mode: Literal["none", "poll", "explicit"] = "none",
        load_models: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        allocator: Allocator = "system",
    ) -> None:
        """``model_control_mode="explicit"``: Triton loads only ``load_models`` at
        start and then whatever its repository API is asked to (the registry's
        mode: versions load before they are routed to and stay warm).
        ``allocator``: scripts/allocator.py (its Python-backend stubs inherit it);
        ``system`` by default, as the chart's ``triton.allocator`` (a vendor image)."""
        super().__init__(log_dir, env=env)
        self.allocator = allocator
        self.model_repository = Path(model_repository).resolve()
        self.model_control_mode = model_control_mode
        self.load_models = list(load_models)
        self.extra_args = list(extra_args)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"127.0.0.1:{self.ports[2]}"

    def command(self) -> list[str]:
        tritonpaths.ensure_python_stub()
        grpc_port, http_port, metrics_port = self.ports
        return [
            str(tritonpaths.tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={tritonpaths.backends_dir()}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
            "--http-address=127.0.0.1", f"--http-port={http_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={metrics_port}",
            "--exit-timeout-secs=5", f"--model-control-mode={self.model_control_mode}",
            f"--cache-directory={tritonpaths.caches_dir()}",
            "--cache-config=local,size=67108864",  # for models with response_cache on
            *(f"--load-model={m}" for m in self.load_models),
            *self.extra_args,
        ]  # fmt: skip

    def base_env(self) -> dict[str, str]:
        env = dict(os.environ) | allocator_env(self.allocator)
        env["OMP_NUM_THREADS"] = "1"
        env["INFERLINE_EXTRA_SITE_PACKAGES"] = os.pathsep.join(tritonpaths.venv_site_packages())
        return env

    def http_get(self, path: str, *, metrics: bool = False, timeout: float = 1.0) -> bytes:
        """GET on Triton's HTTP (or metrics) endpoint; raises OSError unless 200."""
        port = self.ports[2 if metrics else 1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise OSError(f"GET {path} on port {port}: HTTP {resp.status} {body[:200]!r}")
        return body

    def load_model(self, model: str, timeout: float = 120.0) -> tuple[int, str]:
        """Ask Triton's repository API to load ``model`` (explicit model control):
        (HTTP status, body), a refusal included."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[1], timeout=timeout)
        try:
            conn.request("POST", f"/v2/repository/models/{model}/load", body=b"{}")
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def probe(self) -> bool:
        try:
            self.http_get("/v2/health/ready")
        except OSError:
            return False
        return True

    def stub_pids(self) -> list[int]:
        """Python-backend stub processes (one per model instance), for fault tests."""
        if self.proc is None:
            return []
        return [p.pid for p in processes() if p.ppid == self.pid and p.exe == STUB_NAME]


class RedisServer(Supervisor):
    """redis-server without persistence. Ready = PING answered with PONG."""

    name = "redis"
    start_timeout_s = 15.0
    stop_timeout_s = 5.0

    def __init__(self, log_dir: Path, *, password: str | None = None) -> None:
        """``password``: clients must AUTH (``requirepass``), as a production Redis."""
        super().__init__(log_dir)
        self.password = password

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def command(self) -> list[str]:
        port, log_dir = str(self.ports[0]), str(self.log_dir.resolve())
        auth = ["--requirepass", self.password] if self.password else []
        return ["redis-server", "--port", port, "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", log_dir, *auth]  # fmt: skip

    def probe(self) -> bool:
        auth = b"AUTH %s\r\n" % self.password.encode() if self.password else b""
        try:
            with socket.create_connection(("127.0.0.1", self.ports[0]), timeout=0.5) as s:
                s.sendall(auth + b"PING\r\n")
                return s.recv(64).endswith(b"+PONG\r\n")
        except OSError:
            return False


_ROUTER_BIND_VARS = frozenset(
    {
        "INFERLINE_SERVER__HOST",
        "INFERLINE_SERVER__PORT",
        "INFERLINE_SERVER__BRIDGE_PORT",
        "INFERLINE_METRICS__PORT",
    }
)


class RouterProcess(Supervisor):
    """``python -m router`` (or any gRPC server given as ``command``).

    Ready = grpc.health.v1 Check(``health_service``) returns SERVING. The child
    sees the parent's environment minus every INFERLINE_* variable, plus the
    ``allocator``'s variables (scripts/allocator.py), ``env`` and
    INFERLINE_SERVER__HOST/PORT (the port picked here).
    """

    name = "router"
    n_ports = 3  # gRPC, metrics, HTTP/1.1 fast lane
    start_timeout_s = 60.0  # loads Feast, waits for Triton

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        command: Sequence[str] | None = None,
        health_service: str = ROUTER_HEALTH_SERVICE,
        allocator: Allocator = "auto",
    ) -> None:
        # The bind address and port are ours to choose: drop any the caller passed.
        super().__init__(log_dir, env={k: v for k, v in env.items() if k not in _ROUTER_BIND_VARS})
        self._command = list(command or [sys.executable, "-m", "router"])
        self.health_service = health_service
        self.allocator = allocator

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[1]}/metrics"

    @property
    def bridge_address(self) -> str:
        """The HTTP/1.1 fast lane (Predict from the edge, gRPC over HTTP/1.1)."""
        return f"127.0.0.1:{self.ports[2]}"

    def command(self) -> list[str]:
        return self._command

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERLINE_")}
        env |= allocator_env(self.allocator)
        env["PYTHONUNBUFFERED"] = "1"
        env["INFERLINE_SERVER__HOST"] = "127.0.0.1"
        env["INFERLINE_SERVER__PORT"] = str(self.ports[0])
        env["INFERLINE_METRICS__PORT"] = str(self.ports[1])
        env["INFERLINE_SERVER__BRIDGE_PORT"] = str(self.ports[2])
        return env

    def probe(self) -> bool:
        request = health_pb2.HealthCheckRequest(service=self.health_service)
        with grpc.insecure_channel(self.address) as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(request, timeout=1.0)
            except grpc.RpcError:
                return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


OnlineStore = Literal["sqlite", "redis"]
FeastBuilder = Callable[[Path, str], Path]
"""(scratch_dir, redis_url) -> Feast repo path wired to that Redis, features loaded."""


def build_demo_for_redis(out: Path, redis_url: str) -> Path:
    """Default FeastBuilder: rerun the demo build against the given Redis."""
    cmd = [sys.executable, "-m", "scripts.build_demo", "--out", str(out),
           "--online-store", "redis", "--redis-url", redis_url]  # fmt: skip
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise StackError(f"{' '.join(cmd)} failed with code {rc} (log {log}):\n{log_tail(log)}")
    return out / "feast"


@dataclasses.dataclass
class Stack:
    """Redis (if asked) -> Triton -> router, started in order and stopped in reverse.

    ``build_dir`` is the output of ``python -m scripts.build_demo --out DIR``
    (``model_repository/`` and ``feast/``). With ``online_store="redis"`` the
    Feast repo is rebuilt against the fresh Redis by ``feast_builder``.
    """

    build_dir: Path
    log_dir: Path
    _: dataclasses.KW_ONLY
    routing_table: Path
    online_store: OnlineStore = "sqlite"
    feast_builder: FeastBuilder = build_demo_for_redis
    router_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    triton_http_proxy: Callable[[str], str] | None = None
    """Given Triton's HTTP address, the address the router should use instead (a
    fault-injecting proxy in the drills)."""
    triton_args: Sequence[str] = ()
    triton_control_mode: Literal["none", "poll", "explicit"] = "none"
    """"explicit": Triton starts with ``triton_load_models`` and the registry
    loads and unloads versions through its repository API."""
    triton_load_models: Sequence[str] = ()
    with_router: bool = True
    router_allocator: Allocator = "auto"
    """The router's memory allocator (scripts/allocator.py); Triton keeps ``system``."""
    redis: RedisServer | None = dataclasses.field(default=None, init=False)
    triton: TritonServer | None = dataclasses.field(default=None, init=False)
    router: RouterProcess | None = dataclasses.field(default=None, init=False)
    feast_repo: Path | None = dataclasses.field(default=None, init=False)
    _stack: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        self.build_dir, self.log_dir = Path(self.build_dir).resolve(), Path(self.log_dir).resolve()
        self.routing_table = Path(self.routing_table).resolve()

    def _check_build(self) -> Path:
        repo = self.build_dir / "model_repository"
        needed = [repo] + ([self.build_dir / "feast"] if self.online_store == "sqlite" else [])
        missing = [str(p) for p in needed if not p.is_dir()]
        if self.with_router and not self.routing_table.is_file():
            missing.append(str(self.routing_table))
        if missing:
            raise StackError(f"missing {', '.join(missing)}: run `make build` first")
        return repo

    def start(self) -> Self:
        repo = self._check_build()
        with contextlib.ExitStack() as stack:
            if self.online_store == "redis":
                self.redis = stack.enter_context(RedisServer(self.log_dir))
                self.feast_repo = self.feast_builder(self.log_dir / "build-redis", self.redis.url)
            else:
                self.feast_repo = self.build_dir / "feast"
            self.triton = stack.enter_context(
                TritonServer(
                    repo,
                    self.log_dir,
                    model_control_mode=self.triton_control_mode,
                    load_models=self.triton_load_models,
                    extra_args=self.triton_args,
                )
            )
            if self.with_router:
                env = {
                    "INFERLINE_TRITON__URL": self.triton.grpc_url,
                    "INFERLINE_TRITON__HTTP_URL": (
                        self.triton_http_proxy(self.triton.http_url)
                        if self.triton_http_proxy
                        else self.triton.http_url
                    ),
                    "INFERLINE_FEATURES__REPO_PATH": str(self.feast_repo),
                    "INFERLINE_MODELS__REPOSITORY": str(repo),
                    "INFERLINE_ROUTING__TABLE_PATH": str(self.routing_table),
                    **self.router_env,
                }
                self.router = stack.enter_context(
                    RouterProcess(env, self.log_dir, allocator=self.router_allocator)
                )
            self._stack = stack.pop_all()
        return self

    def stop(self) -> None:
        self._stack.close()

    def supervisors(self) -> list[Supervisor]:
        return [s for s in (self.redis, self.triton, self.router) if s is not None]

    def check_alive(self) -> None:
        for s in self.supervisors():
            s.check_alive()

    def addresses(self) -> dict[str, str]:
        out = {"router": self.router.address} if self.router else {}
        if self.triton is not None:
            t = self.triton
            out |= {"triton_grpc": t.grpc_url, "triton_http": t.http_url}
            out["triton_metrics"] = t.metrics_url
        if self.redis is not None:
            out["redis"] = self.redis.url
        return out | {"logs": str(self.log_dir)}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_stack_args(p: argparse.ArgumentParser) -> None:
    """Stack options shared by this CLI and the benchmarks."""
    p.add_argument("--build", type=Path, default=ROOT / "build", help="build_demo output dir")
    p.add_argument("--log-dir", type=Path, default=None, help="default: <build>/logs/<time>")
    p.add_argument("--online-store", choices=["sqlite", "redis"], default="sqlite")
    p.add_argument("--routing-table", type=Path, default=ROOT / "scripts" / "demo_routing.yaml")
    p.add_argument("--no-router", action="store_true", help="Redis and Triton only")
    p.add_argument(
        "--triton-control-mode",
        choices=["none", "explicit"],
        default="none",
        help="explicit: Triton loads the routed models at start, then what the registry asks",
    )


def stack_from_args(args: argparse.Namespace) -> Stack:
    log_dir = args.log_dir or args.build / "logs" / time.strftime("stack-%Y%m%d-%H%M%S")
    store, table, router = args.online_store, args.routing_table, not args.no_router
    mode: Literal["none", "explicit"] = getattr(args, "triton_control_mode", "none")
    load: tuple[str, ...] = ()
    if mode == "explicit":
        import yaml

        load = tuple(yaml.safe_load(Path(table).read_text())["models"])
    return Stack(
        args.build, log_dir, online_store=store, routing_table=table, with_router=router,
        triton_control_mode=mode, triton_load_models=load,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.stack", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the stack and wait for Ctrl-C / SIGTERM")
    add_stack_args(up)
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with stack_from_args(args) as stack:
            for k, v in stack.addresses().items():
                print(f"{k:15} {v}", flush=True)
            print("stack is up; Ctrl-C stops it", flush=True)
            while not stop.wait(0.5):
                stack.check_alive()
            print("stopping...", flush=True)
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
