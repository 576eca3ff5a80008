"""What a Python server spends per unary call before any handler code runs.

Two bare servers, each in its own process on uvloop, answer a fixed 60-byte body:
a grpc.aio server (generic unary handler) and an asyncio HTTP/1.1 server
parsing with httptools (the router's fast lane, ``router/transport/fastlane.py``,
is built the same way). h2load drives each (h2c gRPC vs ``--h1``) at
concurrency 1 and 16; server CPU per request is read from ``/proc``. This is
the floor under the router's own figure, and why Predict reaches the router
over HTTP/1.1 from Envoy.

    python -m bench.transport_floor
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.supervisor import cpu_seconds

_GRPC = """
import asyncio, grpc, uvloop
async def handler(req, ctx):
    return b"x" * 60
async def main():
    s = grpc.aio.server()
    h = grpc.method_handlers_generic_handler(
        "t.S", {"M": grpc.unary_unary_rpc_method_handler(handler)})
    s.add_generic_rpc_handlers((h,))
    print(s.add_insecure_port("127.0.0.1:0"), flush=True)
    await s.start()
    await s.wait_for_termination()
uvloop.run(main())
"""

_H1 = """
import asyncio, httptools, uvloop
BODY = b"x" * 60
RESP = (b"HTTP/1.1 200 OK\\r\\ncontent-type: application/x-protobuf\\r\\n"
        b"content-length: %d\\r\\n\\r\\n" % len(BODY)) + BODY
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.p, self.body = t, httptools.HttpRequestParser(self), []
    def data_received(self, d):
        self.p.feed_data(d)
    def on_body(self, b):
        self.body.append(b)
    def on_message_complete(self):
        asyncio.get_running_loop().create_task(self.answer(b"".join(self.body)))
        self.body = []
    async def answer(self, body):
        self.t.write(RESP)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
uvloop.run(main())
"""


def measure(kind: str, requests: int, concurrency: int, body: Path) -> dict[str, float]:
    code = _GRPC if kind == "grpc.aio" else _H1
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}/t.S/M"
        cmd = [shutil.which("h2load") or "h2load", "-n", str(requests), "-c", str(concurrency)]
        cmd += ["-m", "1", "-d", str(body)]
        if kind == "grpc.aio":
            cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        else:
            cmd += ["--h1"]
        subprocess.run([*cmd[:2], "500", *cmd[3:], url], capture_output=True, check=True)
        c0 = cpu_seconds(proc.pid)
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
        cpu = cpu_seconds(proc.pid) - c0
    finally:
        proc.terminate()
        proc.wait(5)
    ok = int(re.search(r"(\d+) succeeded", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    return {"ok": ok, "rps": rps, "server_cpu_us_per_req": 1e6 * cpu / max(ok, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transport_floor", description=__doc__)
    p.add_argument("--requests", type=int, default=5000)
    args = p.parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs")
    print("| server | concurrency | rps | server CPU / request |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as d:
        body = Path(d) / "body"
        body.write_bytes(b"\x00\x00\x00\x00\x0aABCDEFGHIJ")  # a gRPC frame; opaque to HTTP/1.1
        for c in (1, 16):
            for kind in ("grpc.aio", "HTTP/1.1 + httptools"):
                r = measure(kind, args.requests * (4 if c > 1 else 1), c, body)
                print(f"| {kind} | {c} | {r['rps']:,.0f} | {r['server_cpu_us_per_req']:.0f} us |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
