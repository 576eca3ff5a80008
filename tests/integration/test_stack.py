"""The launcher against real processes: tritonserver, redis-server, a gRPC server.

What matters here is what the other integration tests and the benchmarks rely
on: free loopback ports, readiness, one log per process, and that nothing
outlives a stop -- also when the with-block raises or the parent is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import tritonclient.grpc as triton_grpc

from router.observability.runtime import malloc_library
from scripts.allocator import find_jemalloc
from scripts.stack import ROOT, RedisServer, RouterProcess, Stack, TritonServer
from scripts.supervisor import StackError, free_ports, group_pids, processes

DOUBLE_CONFIG = """
name: "double"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

DOUBLE_MODEL = """
import os
import sys

# The stub embeds Python in isolated mode: numpy lives in the venv.
for p in os.environ.get("INFERLINE_EXTRA_SITE_PACKAGES", "").split(os.pathsep):
    if p and p not in sys.path:
        sys.path.append(p)

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            y = pb_utils.Tensor("OUTPUT0", (x * 2).astype(np.float32))
            out.append(pb_utils.InferenceResponse(output_tensors=[y]))
        return out
"""

# A stand-in for the router: any gRPC server that reads INFERLINE_SERVER__PORT
# and serves grpc.health.v1 for the router's service name.
HEALTH_SERVER = """
import os, time
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

server = grpc.server(futures.ThreadPoolExecutor(2))
h = health.HealthServicer()
h.set("inferline.v1.InferenceService", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, server)
host, port = os.environ["INFERLINE_SERVER__HOST"], os.environ["INFERLINE_SERVER__PORT"]
server.add_insecure_port(f"{host}:{port}")
server.start()
print("leaked:", sorted(k for k in os.environ if k.startswith("INFERLINE_")), flush=True)
server.wait_for_termination()
"""


def alive(pid: int) -> bool:
    return any(p.pid == pid for p in processes())


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    (repo / "double" / "1").mkdir(parents=True)
    (repo / "double" / "config.pbtxt").write_text(DOUBLE_CONFIG)
    (repo / "double" / "1" / "model.py").write_text(textwrap.dedent(DOUBLE_MODEL))
    return repo


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(1024 <= p <= 65535 for p in ports)


def test_triton_serves_on_free_ports_and_stops_clean(model_repo: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    with TritonServer(model_repo, logs) as triton:
        assert len(set(triton.ports)) == 3
        assert not {8000, 8001, 8002} & set(triton.ports)  # never Triton's fixed defaults
        assert triton.grpc_url.startswith("127.0.0.1:")
        client = triton_grpc.InferenceServerClient(triton.grpc_url)
        x = np.array([1, 2, 3, 4], dtype=np.float32)
        inp = triton_grpc.InferInput("INPUT0", [4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("double", [inp])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)
        client.close()
        assert b"nv_inference_request_success" in triton.http_get("/metrics", metrics=True)
        stubs = triton.stub_pids()
        assert len(stubs) == 1  # one instance of one Python-backend model
        group = triton.group_pids()
        assert triton.pid in group and stubs[0] in group
    assert wait_gone(group, timeout_s=0) == []  # stop() returns only once all are gone
    log = (logs / "tritonserver.log").read_text()
    assert "successfully loaded 'double'" in log


def test_redis_ready_and_stopped(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as r:
        host, port = r.url.split(":")
        client = redis.Redis(host=host, port=int(port))
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
        pid = r.pid
    assert not alive(pid)
    assert "Ready to accept connections" in (tmp_path / "redis.log").read_text()
    assert not list(tmp_path.glob("*.rdb"))  # persistence is off


def test_exception_inside_with_block_stops_everything(model_repo: Path, tmp_path: Path) -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="test failure"), contextlib.ExitStack() as stack:
        r = stack.enter_context(RedisServer(tmp_path))
        t = stack.enter_context(TritonServer(model_repo, tmp_path))
        pids = [r.pid, *t.group_pids()]
        raise RuntimeError("test failure")
    assert len(pids) >= 3  # redis, tritonserver, stub
    assert wait_gone(pids, timeout_s=0) == []


def test_router_process_health_env_and_log(tmp_path: Path) -> None:
    env = {"INFERLINE_TRITON__URL": "127.0.0.1:1", "INFERLINE_SERVER__PORT": "1"}
    os.environ["INFERLINE_STRAY"] = "from-the-parent"
    try:
        proc = RouterProcess(env, tmp_path, command=[sys.executable, "-c", HEALTH_SERVER])
        with proc:
            assert proc.address != "127.0.0.1:1"  # our port wins over the caller's
            pid = proc.pid
    finally:
        del os.environ["INFERLINE_STRAY"]
    assert not alive(pid)
    log = (tmp_path / "router.log").read_text()
    assert (
        "leaked: ['INFERLINE_METRICS__PORT', 'INFERLINE_SERVER__BRIDGE_PORT', "
        "'INFERLINE_SERVER__HOST', 'INFERLINE_SERVER__PORT', "
        "'INFERLINE_TRITON__URL']" in log
    )
    assert "INFERLINE_STRAY" not in log  # the parent's INFERLINE_* never reach the child


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


@pytest.mark.parametrize("mode", ["auto", "system"])
def test_launcher_starts_triton_its_stubs_and_the_router_on_the_allocator(
    mode: str, model_repo: Path, tmp_path: Path
) -> None:
    jemalloc = mode == "auto" and find_jemalloc() is not None  # make venv installs it as root
    # Triton defaults to "system" (the chart's triton.allocator), the router to "auto".
    assert TritonServer(model_repo, tmp_path).allocator == "system"
    assert RouterProcess({}, tmp_path).allocator == "auto"
    health = [sys.executable, "-c", HEALTH_SERVER]
    with (
        TritonServer(model_repo, tmp_path / "t", allocator=mode) as triton,  # type: ignore[arg-type]
        RouterProcess({}, tmp_path / "r", command=health, allocator=mode) as router,  # type: ignore[arg-type]
    ):
        pids = [triton.pid, *triton.stub_pids(), router.pid]
        assert len(pids) == 3
        for pid in pids:
            assert malloc_library(Path(f"/proc/{pid}/maps")) == (
                "jemalloc" if jemalloc else "glibc"
            )
        env = _environ(router.pid)
    assert env["PYTHONMALLOC"] == ("malloc" if jemalloc else "")
    assert env["GLIBC_TUNABLES"] == ("glibc.malloc.hugetlb=1" if mode == "auto" else "")


def test_early_exit_reports_log_tail(tmp_path: Path) -> None:
    code = "import sys; print('config is broken: boom', flush=True); sys.exit(3)"
    proc = RouterProcess({}, tmp_path, command=[sys.executable, "-c", code])
    with pytest.raises(StackError, match=r"(?s)exited with code 3.*config is broken: boom"):
        proc.start()


def test_readiness_timeout_kills_the_process(tmp_path: Path) -> None:
    code = "import time; print('never serving', flush=True); time.sleep(600)"
    proc = RouterProcess({}, tmp_path, command=[sys.executable, "-c", code])
    proc.start_timeout_s = 1.0
    t0 = time.monotonic()
    with pytest.raises(StackError, match=r"(?s)not ready after 1 s.*never serving"):
        proc.start()
    assert time.monotonic() - t0 < 15
    assert proc.proc is not None and proc.proc.returncode == -signal.SIGTERM


def test_failed_model_load_is_reported(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "no_such_backend"\n')
    with pytest.raises(StackError, match=r"(?s)tritonserver exited.*broken"):
        TritonServer(repo, tmp_path).start()
    assert not [p for p in processes() if p.exe == "tritonserver" and str(repo) in _cmd(p.pid)]


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def test_sigkilled_parent_leaves_no_orphans(tmp_path: Path) -> None:
    """PDEATHSIG: a launcher killed with SIGKILL (no atexit) still takes its children."""
    code = (
        "import sys, time; from pathlib import Path; from scripts.stack import RedisServer; "
        f"r = RedisServer(Path({str(tmp_path)!r})).start(); print(r.pid, flush=True); "
        "time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child) and group_pids(child) == [child]
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone([child]) == []


def test_stack_orders_redis_builder_triton_and_stops_all(model_repo: Path, tmp_path: Path) -> None:
    """Composition without the router: Redis first, the Feast hook sees its URL, then Triton."""
    build = tmp_path / "build"
    build.mkdir()
    (build / "model_repository").symlink_to(model_repo)
    seen: list[tuple[Path, str, bool]] = []

    def feast_builder(out: Path, redis_url: str) -> Path:
        host, port = redis_url.split(":")
        seen.append((out, redis_url, redis.Redis(host=host, port=int(port)).ping()))
        (out / "feast").mkdir(parents=True)
        return out / "feast"

    stack = Stack(
        build,
        tmp_path / "logs",
        online_store="redis",
        routing_table=tmp_path / "unused.yaml",
        feast_builder=feast_builder,
        with_router=False,
    )
    with stack:
        assert stack.redis is not None and stack.triton is not None and stack.router is None
        assert seen == [(tmp_path / "logs" / "build-redis", stack.redis.url, True)]
        assert stack.feast_repo == tmp_path / "logs" / "build-redis" / "feast"
        addrs = stack.addresses()
        assert set(addrs) == {"triton_grpc", "triton_http", "triton_metrics", "redis", "logs"}
        ports = [int(a.rsplit(":", 1)[1]) for k, a in addrs.items() if k != "logs"]
        assert len(set(ports)) == 4
        pids = [p for s in stack.supervisors() for p in s.group_pids()]
        stack.check_alive()
    assert wait_gone(pids, timeout_s=0) == []
    assert {p.name for p in (tmp_path / "logs").glob("*.log")} == {"redis.log", "tritonserver.log"}


def test_stack_refuses_incomplete_build(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="make build"):
        Stack(tmp_path, tmp_path / "logs", routing_table=tmp_path / "t.yaml").start()


@pytest.mark.slow
def test_stack_with_redis_and_router_end_to_end(demo_build: Path, tmp_path: Path) -> None:
    """The real thing: the demo build rebuilt against a fresh Redis, scored via the router."""
    from inferline.v1 import inference_pb2 as pb
    from inferline.v1 import inference_pb2_grpc

    with Stack(
        demo_build,
        tmp_path / "logs",
        online_store="redis",
        routing_table=ROOT / "scripts" / "demo_routing.yaml",
        router_env={"INFERLINE_FEATURES__TIMEOUT_MS": "1000"},
    ) as stack:
        assert stack.router is not None
        req = pb.PredictRequest(
            alias="fraud:prod",
            candidates=[
                pb.Candidate(
                    entities={"account_id": pb.Value(int64_value=42)},
                    features={
                        "amount": pb.Value(double_value=12.5),
                        "hour_of_day": pb.Value(double_value=13),
                        "is_international": pb.Value(double_value=0),
                    },
                )
            ],
        )
        with grpc.insecure_channel(stack.router.address) as ch:
            resp = inference_pb2_grpc.InferenceServiceStub(ch).Predict(
                req, metadata=(("x-inferline-tenant", "demo"),), timeout=10
            )
        assert len(resp.scores) == 1 and math.isfinite(resp.scores[0].score)
        pids = [p for s in stack.supervisors() for p in s.group_pids()]
    assert wait_gone(pids, timeout_s=0) == []
