"""The edge's shutdown drain (inferline_edge.drain, the chart's drainer preStop)
on a real Envoy: connections in use are told to go (GOAWAY) while their calls
still succeed, and once the drain time is over the listeners are closed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from inferline_edge.certs import DevPKI
from inferline_edge.devtools import EchoUpstream, EdgeClient
from scripts.edge_stack import EdgeStack
from scripts.stack import ROOT

ENVOY_DRAIN_S = 5  # scripts.edge_procs.EnvoyProcess runs Envoy with --drain-time-s 5


@pytest_asyncio.fixture(loop_scope="session")
async def edge(tmp_path: Path) -> AsyncIterator[tuple[DevPKI, EdgeStack]]:
    pki = DevPKI.create(tmp_path / "pki", tenants=[("demo", "api")], days=1)
    upstream = EchoUpstream(pki)
    address = await upstream.start()
    stack = EdgeStack(tmp_path / "logs", pki, address, with_ratelimit=False, with_jwt=False)
    try:
        await asyncio.to_thread(stack.start)
        yield pki, stack
    finally:
        await asyncio.to_thread(stack.stop)
        assert upstream.server is not None
        await upstream.server.stop(0)


def _check(*args: str) -> int:
    argv = [sys.executable, "-m", "inferline_edge.drain", "check", *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=30).returncode


def _drain_now(admin_port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferline_edge.drain", "now", f"--admin=127.0.0.1:{admin_port}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_drain_tells_callers_to_go_then_closes_the_listeners(
    edge: tuple[DevPKI, EdgeStack],
) -> None:
    pki, stack = edge
    envoy = stack.envoy
    assert envoy is not None
    client = EdgeClient(pki, stack.mtls_address, ("demo", "api"))
    assert (await client.call()).code == grpc.StatusCode.OK
    assert _check(f"--admin=127.0.0.1:{envoy.admin_port}") == 0  # the drainer's readiness
    assert _drain_now(envoy.admin_port).returncode == 0
    started = time.monotonic()
    # Draining: calls keep succeeding, and Envoy closes the connections they
    # use behind them (GOAWAY; the test Envoy ramps that up over the drain
    # time, the chart's --drain-strategy=immediate does it at once).
    while time.monotonic() - started < ENVOY_DRAIN_S - 0.5:
        assert (await client.call()).code == grpc.StatusCode.OK
        await asyncio.sleep(0.25)
    await asyncio.sleep(max(0.0, ENVOY_DRAIN_S + 1 - (time.monotonic() - started)))
    stats = envoy.stats("")
    assert stats["http.public_mtls.downstream_cx_drain_close"] >= 1
    assert stats["listener_manager.listener_stopped"] >= 1
    late = EdgeClient(pki, stack.mtls_address, ("demo", "api"))
    assert (await late.call(deadline_s=2)).code == grpc.StatusCode.UNAVAILABLE


def test_drain_of_an_envoy_that_is_gone_says_so_and_does_not_block() -> None:
    from scripts.supervisor import free_ports

    (port,) = free_ports(1)
    t0 = time.monotonic()
    done = _drain_now(port)
    assert done.returncode == 1 and "drain:" in done.stderr
    assert time.monotonic() - t0 < 10
    assert _check(f"--admin=127.0.0.1:{port}") == 1  # not ready: nothing to drain
    assert _check() == 0  # alive


def test_idle_waits_for_sigterm_and_exits_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferline_edge.drain", "idle"], cwd=ROOT, stderr=subprocess.PIPE
    )
    try:
        time.sleep(1.0)
        assert proc.poll() is None  # waiting
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
