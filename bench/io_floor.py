"""The router's I/O and nothing else: the floor under its CPU per request.

The issue's router budget (0.5 ms of CPU per Predict at concurrency 1) covers
"inbound gRPC, feature read, Triton call, response". This benchmark measures
what exactly that costs in this Python process model, with none of the rest of
the pipeline, beside the real router on one Triton:

- **floor**: a uvloop process with the fast lane's transport (an asyncio
  protocol parsing HTTP/1.1 with httptools) that, per request, decodes the
  ``PredictRequest``, reads the account's 30 features through the router's own
  feature backend (``FeastFeatureStore``: the direct SQLite read), sends the
  33-float row to Triton through the router's own ``TritonHttpClient``, and
  answers a serialized ``PredictResponse`` with the score. No tenant, quota,
  routing table, data-quality check, fallback ladder, breaker, score cache,
  metrics, log line, trace or drift window.
- **router**: the real router (``python -m router``) on its fast lane, same
  request, same Triton, same allocator.

h2load replays one serialized ``fraud:prod`` request at each server in
alternating runs (``--repeats`` each, concurrency 1 and ``--concurrency``);
CPU per request is read from ``/proc``. The router's figure minus the floor's is
what the pipeline (everything the product adds to the I/O) costs. Then
(``--throughput SECONDS``, 0 to skip) router, floor and direct Triton each serve
h2load at concurrency 32, alternating: with no Envoy in front, each ratio to
direct Triton bounds what a full stack built on that server could reach.

    python -m bench.io_floor --build build
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import numpy as np

from bench.h2load import run_for_cpu
from bench.loadgen import ROUTER_METHOD, router_request
from inferline.v1 import inference_pb2 as pb
from router.backends.feast_store import FeastFeatureStore
from router.backends.triton_http import TritonHttpClient
from router.pipeline.features import ViewRead
from scripts.allocator import MODES, allocator_env


class _Floor(asyncio.Protocol):
    """One connection of the floor server: the fast lane's transport and the
    router's backends, nothing in between."""

    def __init__(
        self, store: FeastFeatureStore, triton: TritonHttpClient, features: tuple[str, ...]
    ) -> None:
        self._store, self._triton, self._features = store, triton, features
        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        self._loop.create_task(self._answer(body))

    async def _answer(self, body: bytes) -> None:
        req = pb.PredictRequest.FromString(body)
        cand = req.candidates[0]
        key = (cand.entities["account_id"].int64_value,)
        [[(_, values)]] = await self._store.read(
            [ViewRead("account_features", [key], self._features)]
        )
        assert values is not None  # the benchmark's account has a row
        extra = (
            cand.features[k].double_value for k in ("amount", "hour_of_day", "is_international")
        )
        batch = np.array([[*values, *extra]], dtype=np.float32)
        score = await self._triton.infer("fraud", 1, "input__0", "output__0", batch, 0.5)
        resp = pb.PredictResponse(request_id="r", model=pb.ServedModel(name="fraud", version=1))
        resp.scores.add(score=float(score[0]))
        out = resp.SerializeToString()
        assert self._transport is not None
        self._transport.write(_HEAD % len(out) + out)


_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: %d\r\n\r\n"


async def _serve(repo: Path, triton_url: str, features: tuple[str, ...]) -> None:
    store = FeastFeatureStore(repo)
    store.start()
    host, port = triton_url.removeprefix("http://").rsplit(":", 1)
    triton = TritonHttpClient(host, int(port))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Floor(store, triton, features), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def fraud_features(build: Path) -> list[str]:
    """The fraud model's Feast features, in its input order (its metadata)."""
    meta = json.loads((build / "model_repository" / "fraud" / "1" / "metadata.json").read_text())
    return [f["name"] for f in meta["features"] if f.get("source") == "feast"]


@contextlib.contextmanager
def floor_server(
    feast_repo: Path, triton_http_url: str, features: list[str], env: dict[str, str]
) -> Iterator[tuple[int, int]]:
    """The floor process, in a session of its own (``/proc`` CPU is read by
    process group): yields (pid, port), stops it after."""
    serve = ["--serve", str(feast_repo), triton_http_url, ",".join(features)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.io_floor", *serve],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the floor server exited with {proc.wait(5)}")
        yield proc.pid, int(line)
    finally:
        proc.terminate()
        proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.io_floor", description=__doc__)
    p.add_argument("--build", type=Path, default=Path("build"))
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=16, help="the second, warm level")
    p.add_argument(
        "--throughput",
        type=float,
        default=8.0,
        metavar="SECONDS",
        help="also h2load router, floor and direct Triton at concurrency 32 for this long "
        "(0: skip)",
    )
    p.add_argument(
        "--allocator", choices=MODES, default="auto", help="both processes' (scripts/allocator.py)"
    )
    p.add_argument(
        "--serve", nargs=3, metavar=("REPO", "TRITON_HTTP_URL", "FEATURES"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.serve:  # the floor process itself (floor_server starts it)
        import uvloop

        repo, url, names = args.serve
        uvloop.run(_serve(Path(repo), url, tuple(names.split(","))))
        return 0

    from bench.router_cpu import _fast_lane, _stack

    stack, _ = _stack(args.build, "io-floor", allocator=args.allocator)
    levels = (1, args.concurrency)
    cpu: dict[tuple[str, int], list[float]] = {}
    rps: dict[str, list[float]] = {}
    with stack, tempfile.TemporaryDirectory() as d:
        assert stack.router is not None and stack.triton is not None
        router = stack.router
        env = os.environ | allocator_env(args.allocator)
        features = fraud_features(args.build)
        with floor_server(stack.feast_repo, stack.triton.http_url, features, env) as (fpid, fport):
            raw = Path(d) / "req.bin"
            raw.write_bytes(router_request("fraud:prod", 42))

            def h2(name: str, c: int, n: int) -> list[str]:
                if name == "router":
                    return ["-n", str(n), *_fast_lane(router, raw, c)]
                url = f"http://127.0.0.1:{fport}{ROUTER_METHOD}"
                return ["-n", str(n), "-c", str(c), "-m", "1", "--h1", "-d", str(raw), url]

            pids = {"router": router.pid, "floor": fpid}
            for name, pid in pids.items():  # warm-up; both must answer
                r = run_for_cpu(pid, h2(name, 1, 1000))
                if r.result.succeeded < 1000:
                    raise SystemExit(f"{name} answered {r.result.succeeded} of 1000")
            if args.throughput:
                rps = _throughput(stack, router, fport, raw, Path(d), args)
            for c in levels:
                n = args.requests * (4 if c > 1 else 1)
                for i in range(args.repeats):
                    for name in list(pids) if i % 2 == 0 else list(pids)[::-1]:
                        r = run_for_cpu(pids[name], h2(name, c, n))
                        cpu.setdefault((name, c), []).append(r.cpu_us_per_request)
                        print(
                            f"c{c} {name}: {r.result.succeeded} ok, {r.result.req_per_s:,.0f} rps,"
                            f" {r.cpu_us_per_request:.0f} us CPU / request"
                        )
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')}; sqlite; {args.allocator} allocator; "
        f"medians of {args.repeats} alternating runs"
    )
    print("| concurrency | floor (I/O only) | router | pipeline (router - floor) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for c in levels:
        low, full = statistics.median(cpu[("floor", c)]), statistics.median(cpu[("router", c)])
        print(f"| {c} | {low:.0f} us | {full:.0f} us | {full - low:.0f} us | {low / full:.2f} |")
    if args.throughput:
        direct = statistics.median(rps["triton"])
        print(f"\nconcurrency 32, {args.throughput:g} s runs, no Envoy (medians of {args.repeats})")
        print(
            "| target | runs (rps) | median | ratio to direct Triton |\n| --- | --- | --- | --- |"
        )
        for name, runs in rps.items():
            med = statistics.median(runs)
            listed = ", ".join(f"{r:,.0f}" for r in runs)
            print(f"| {name} | {listed} | {med:,.0f} rps | {med / direct:.2f} |")
    return 0


def _throughput(
    stack: Any, router: Any, floor_port: int, raw: Path, tmp: Path, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Requests per second at concurrency 32 for the router, the floor and direct
    Triton (gRPC ``ModelInfer`` of the same row, as ``bench.overhead``), all on
    the same two cores, in alternating runs: with no Envoy in front, an upper
    bound on what a full stack built on either could reach."""
    import numpy as np

    from bench.h2load import grpc_frame, parse_h2load
    from bench.loadgen import TRITON_METHOD, triton_request

    row = np.full((1, 33), 0.5, dtype=np.float32)
    body = tmp / "triton.grpc"
    body.write_bytes(
        grpc_frame(triton_request("fraud", row, input_name="input__0", output_name="output__0"))
    )
    timed = [f"--duration={args.throughput:g}", "--warm-up-time=1"]
    h1 = [*timed, "-c", "32", "-m", "1", "--h1", "-d", str(raw)]
    cmds = {
        "router (fast lane)": [
            *h1, "-H", "x-inferline-tenant: demo", "-H", "content-type: application/x-protobuf",
            f"http://{router.bridge_address}{ROUTER_METHOD}",
        ],
        "floor": [*h1, f"http://127.0.0.1:{floor_port}{ROUTER_METHOD}"],
        "triton": [
            *timed, "-c", "4", "-m", "8", "-d", str(body), "-H", "content-type: application/grpc",
            "-H", "te: trailers", f"http://{stack.triton.grpc_url}{TRITON_METHOD}",
        ],
    }  # fmt: skip
    out: dict[str, list[float]] = {k: [] for k in cmds}
    for i in range(args.repeats):
        for name in list(cmds) if i % 2 == 0 else list(cmds)[::-1]:
            proc = subprocess.run(["h2load", *cmds[name]], capture_output=True, text=True)
            r = parse_h2load(proc.stdout)
            if proc.returncode != 0 or r.failed or r.errored or not r.succeeded:
                raise SystemExit(f"{name}: {r.succeeded} of {r.total} succeeded\n{proc.stderr}")
            out[name].append(r.req_per_s)
            print(f"c32 {name}: {r.req_per_s:,.0f} rps")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
