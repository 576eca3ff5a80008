"""What carrying Predict to the fast lane costs Envoy: the reverse bridge vs gRPC over HTTP/1.1.

Until 11-29 the edge sent Predict to the routers' HTTP/1.1 fast lane through
``grpc_http1_reverse_bridge`` (the gRPC frame stripped, the bare message
posted as ``application/x-protobuf``), and two Lua response handlers put the
router's status (sent in ``x-inferline-grpc-*`` headers) back into gRPC
trailers. Since then the edge forwards the caller's gRPC request unchanged and
the fast lane answers in gRPC's own framing with ``grpc-status`` as an HTTP/1.1
trailer, which Envoy passes through once the cluster sets ``enable_trailers``:
no filter touches the exchange. Two standalone front Envoys (one worker, TLS
HTTP/2 listener, the edge's tenant Lua filter in both) forward a gRPC Predict
over TLS HTTP/1.1 to one upstream that answers after ``--upstream-delay-ms``,
with the bytes the router's fast lane sends for each framing:

- ``bridge``: the reverse bridge and the two Lua response handlers, as shipped
  until 11-29 (kept here as the baseline);
- ``grpc_h1``: as shipped now (``listeners.py``, ``resources._h1_options``).

The upstream is an asyncio thread in this process: only the front Envoys'
CPU is read (``/proc``), per request, h2load driving them in rotating order.
Before measuring, each front is checked with a real gRPC call (status OK, the
upstream's message intact).

    python -m bench.edge_framing --json build/bench/edge-framing.json --md docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import tempfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httptools

from bench.chain import machine_info
from bench.envoy_floor import (
    LOADS,
    FloorEnvoy,
    _listener,
    _tls,
    cli,
    measure_rotating,
    report_head,
    report_row,
    result_of,
)
from bench.h2load import grpc_frame
from inferline_edge.certs import EDGE_DNS, DevPKI
from inferline_edge.common import PREDICT_PATH, http_filter
from inferline_edge.listeners import LUA_TENANT_FILTER
from router.transport.h1_framing import grpc_response

VARIANTS = ("bridge", "grpc_h1")
MARKER = "edge-framing"
_ANSWER = b"m" * 48  # about a one-candidate PredictResponse
_BRIDGE_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_ANSWER), _ANSWER)
)

# The edge's Lua as it was with the bridge (the baseline only): the tenant
# filter's response half, which copied the router's status headers into the
# trailers, and the local-reply restatement that ran between bridge and router.
_RETIRED_STATUS_HALF = r"""
function envoy_on_response(handle)
  local headers = handle:headers()
  local code = headers:get("x-inferline-grpc-status")
  if code == nil then return end
  local message = headers:get("x-inferline-grpc-message")
  local details = headers:get("x-inferline-grpc-status-details-bin")
  headers:remove("x-inferline-grpc-status")
  headers:remove("x-inferline-grpc-message")
  headers:remove("x-inferline-grpc-status-details-bin")
  local trailers = handle:trailers()
  if trailers == nil then
    headers:replace("content-type", "application/grpc")
    headers:replace("grpc-status", code)
    if message ~= nil then headers:replace("grpc-message", message) end
    if details ~= nil then headers:replace("grpc-status-details-bin", details) end
    return
  end
  trailers:replace("grpc-status", code)
  if message ~= nil then trailers:replace("grpc-message", message) end
  if details ~= nil then trailers:replace("grpc-status-details-bin", details) end
end
"""
_RETIRED_LOCAL_REPLY = r"""
function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get("content-type") ~= "application/grpc" then return end
  headers:replace("content-type", "application/x-protobuf")
  headers:replace("x-inferline-grpc-status", headers:get("grpc-status") or "14")
  local message = headers:get("grpc-message")
  if message ~= nil then headers:replace("x-inferline-grpc-message", message) end
  headers:remove("grpc-status")
  headers:remove("grpc-message")
end
"""


def _lua(name: str, code: str) -> dict[str, Any]:
    return http_filter(
        name,
        "envoy.extensions.filters.http.lua.v3.Lua",
        {"default_source_code": {"inline_string": code}},
    )


def front_config(variant: str, port: int, *, upstream: int, pki: DevPKI) -> dict[str, Any]:
    """A front Envoy with the edge's filters for ``variant`` and one upstream."""
    if variant == "bridge":
        filters = [
            _lua("envoy.filters.http.lua", LUA_TENANT_FILTER + _RETIRED_STATUS_HALF),
            http_filter(
                "envoy.filters.http.grpc_http1_reverse_bridge",
                "envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfig",
                {"content_type": "application/x-protobuf", "withhold_grpc_frames": True},
            ),
            _lua("inferline.bridge_local_reply", _RETIRED_LOCAL_REPLY),
        ]
        h1: dict[str, Any] = {}
    elif variant == "grpc_h1":
        filters = [_lua("envoy.filters.http.lua", LUA_TENANT_FILTER)]
        h1 = {"enable_trailers": True}
    else:
        raise ValueError(f"unknown variant {variant!r}")
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}
    options = {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http_protocol_options": h1},
    }
    cluster = {
        "name": "up",
        "type": "STATIC",
        "connect_timeout": "1s",
        "transport_socket": _tls("UpstreamTlsContext", "http/1.1"),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options
        },
        "load_assignment": {
            "cluster_name": "up",
            "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
        },
    }
    listener = _listener(
        port,
        filters,
        {"route": {"cluster": "up"}},
        tls=_tls("DownstreamTlsContext", "h2", pki),
        codec="HTTP2",
    )
    return {"static_resources": {"clusters": [cluster], "listeners": [listener]}}


class _Upstream(asyncio.Protocol):
    """Answers each request after ``delay_s`` in the framing its content-type asks for."""

    def __init__(self, delay_s: float) -> None:
        self._delay_s = delay_s
        self._parser = httptools.HttpRequestParser(self)
        self._grpc = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self._grpc = value.startswith(b"application/grpc")

    def on_message_complete(self) -> None:
        answer = grpc_response(_ANSWER) if self._grpc else _BRIDGE_ANSWER
        assert self._transport is not None
        asyncio.get_running_loop().call_later(self._delay_s, self._transport.write, answer)


@contextlib.contextmanager
def upstream(pki: DevPKI, delay_s: float) -> Iterator[int]:
    """The upstream on a free loopback port (TLS, HTTP/1.1), in a thread."""
    loop = asyncio.new_event_loop()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.edge_server.cert, pki.edge_server.key)
    server = loop.run_until_complete(
        loop.create_server(lambda: _Upstream(delay_s), "127.0.0.1", 0, ssl=ctx)
    )
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def grpc_check(port: int, pki: DevPKI) -> None:
    """One real gRPC Predict through a front: status OK and the answer intact."""
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert.read_bytes())
    options = [("grpc.ssl_target_name_override", EDGE_DNS)]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options) as channel:
        call = channel.unary_unary(PREDICT_PATH)
        answer, rpc = call.with_call(b"request", timeout=10)
        if answer != _ANSWER or rpc.code() != grpc.StatusCode.OK:
            raise RuntimeError(f"front on {port}: {rpc.code()} {answer[:20]!r}")


def _h2load_args(port: int, body: Path, clients: int, streams: int, n: int) -> list[str]:
    return [
        f"--requests={n}", f"--clients={clients}", f"--max-concurrent-streams={streams}",
        f"--data={body}", "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"https://127.0.0.1:{port}{PREDICT_PATH}",
    ]  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info(args.machine)
    with tempfile.TemporaryDirectory(prefix="edge-framing-") as d:
        work = Path(d)
        pki = DevPKI.create(work / "pki", days=1)
        body = work / "request.bin"
        body.write_bytes(grpc_frame(b"r" * 200))  # about a one-candidate PredictRequest
        with contextlib.ExitStack() as stack:
            up = stack.enter_context(upstream(pki, args.upstream_delay_ms / 1000))
            fronts = {
                v: stack.enter_context(
                    FloorEnvoy(work, v, partial(front_config, v, upstream=up, pki=pki))
                )
                for v in VARIANTS
            }
            for front in fronts.values():
                grpc_check(front.port, pki)
            runs, median = measure_rotating(
                fronts,
                lambda e, c, m, n: _h2load_args(e.port, body, c, m, n),
                args.requests,
                args.repeats,
            )
    return result_of("bench.edge_framing", machine, args, runs, median)


_WHAT = {
    "bridge": "reverse bridge + the two Lua response handlers (until 11-29)",
    "grpc_h1": "gRPC over HTTP/1.1, status in trailers (now)",
}


def markdown(r: dict[str, Any]) -> str:
    med = r["median"]
    lines = report_head(
        r,
        "The fast lane's framing: what Envoy spends on it",
        "medians of the repeats; front Envoy CPU per request from `/proc`, one worker "
        "each; both fronts run the edge's tenant Lua filter",
    )
    for v in VARIANTS:
        lines.append(report_row(v, _WHAT[v], med["c1"][v], med["c32"][v]))
    ratio = {k: med[k]["grpc_h1"]["envoy_us"] / med[k]["bridge"]["envoy_us"] for k in LOADS}
    lines += [
        "",
        f"Envoy CPU per request, gRPC over HTTP/1.1 / bridge: {ratio['c1']:.2f} at c1, "
        f"{ratio['c32']:.2f} at c32.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli(
        argv,
        module="bench.edge_framing",
        doc=__doc__,
        repeats=5,
        run=run,
        markdown=markdown,
        marker=MARKER,
    )


if __name__ == "__main__":
    raise SystemExit(main())
