"""xDS control plane: an ADS server (state of the world) that feeds Envoy versioned snapshots.

Why our own and not a static file: tenant limits and identities change at run
time and must reach every Envoy within seconds without a restart or a dropped
request. The server builds one consistent snapshot (secrets, clusters, listeners,
routes) from ``envoy/tenants.yaml`` plus the PKI, polls those files, and pushes
only the resource types whose content changed.

Protocol (per stream, per type URL), as the xDS spec asks:
- a request whose ``response_nonce`` is not the last one sent is stale: ignored;
- ``error_detail`` set = NACK: logged, recorded, and that version is not resent
  (Envoy keeps its last good config); the next change is pushed normally;
- otherwise an ACK (or the first request): a response goes out only if the
  stream has not yet seen the current version, or the subscribed names changed.

gRPC: envoy-data-plane generates grpclib servers only; this module serves the
ADS method with grpcio's asyncio server (the stack the router uses) and the
betterproto2 messages as codec (``Message.parse`` / ``bytes(msg)``).

CLI: ``python -m inferline_edge.xds --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import betterproto2
import grpc
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.protobuf import Any as AnyMsg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import inferline_edge.resources as resources
import inferline_edge.tenants as tenants
from inferline_edge.certs import DevPKI
from inferline_edge.secrets import EdgeSecretFiles

log = logging.getLogger("inferline_edge.xds")
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


@dataclasses.dataclass(frozen=True)
class TypeSnapshot:
    version: str
    resources: dict[str, AnyMsg]  # by name


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One consistent set of resources; each type carries its own version, so a
    tenant edit (routes only) does not resend listeners or clusters."""

    seq: int
    label: str
    types: dict[str, TypeSnapshot]


def _type_hash(items: dict[str, AnyMsg]) -> str:
    h = hashlib.sha256()
    for name in sorted(items):
        h.update(name.encode() + b"\0" + bytes(items[name]) + b"\0")
    return h.hexdigest()[:10]


class SnapshotCache:
    """Holds the current snapshot and wakes streams when it changes."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self._generations: dict[str, tuple[str, int]] = {}  # type -> (hash, generation)
        self._changed = asyncio.Condition()
        self.nodes: dict[str, dict[str, Any]] = {}  # node id -> type -> ack/nack state

    async def set(self, built: dict[str, dict[str, betterproto2.Message]], label: str) -> Snapshot:
        types: dict[str, TypeSnapshot] = {}
        for type_url, items in built.items():
            packed = {name: AnyMsg.pack(msg) for name, msg in items.items()}
            digest = _type_hash(packed)
            old_digest, gen = self._generations.get(type_url, ("", 0))
            if digest != old_digest:
                gen += 1
                self._generations[type_url] = (digest, gen)
            types[type_url] = TypeSnapshot(f"{gen}-{digest}", packed)
        seq = (self.snapshot.seq + 1) if self.snapshot else 1
        self.snapshot = Snapshot(seq, label, types)
        async with self._changed:
            self._changed.notify_all()
        return self.snapshot

    async def wait_change(self, seen_seq: int) -> Snapshot:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.snapshot is not None and self.snapshot.seq != seen_seq
            )
        assert self.snapshot is not None
        return self.snapshot

    def status(self) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "seq": snap.seq if snap else 0,
            "label": snap.label if snap else None,
            "versions": {t: ts.version for t, ts in snap.types.items()} if snap else {},
            "nodes": self.nodes,
        }


@dataclasses.dataclass
class _Sub:
    names: frozenset[str] | None = None  # None = wildcard
    sent_version: str | None = None
    sent_nonce: str | None = None
    nacked_version: str | None = None


class _Stream:
    """State of one ADS stream (one Envoy)."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.subs: dict[str, _Sub] = {}
        self.node_id = "?"
        self._nonce = 0

    def _node_state(self, type_url: str) -> dict[str, Any]:
        node = self.cache.nodes.setdefault(self.node_id, {})
        state: dict[str, Any] = node.setdefault(type_url, {})
        return state

    def on_request(self, req: DiscoveryRequest) -> list[str]:
        """Update subscription state; return the type URLs that need a response now."""
        if req.node is not None and req.node.id:
            self.node_id = req.node.id
        t = req.type_url
        sub = self.subs.setdefault(t, _Sub())
        if req.response_nonce and req.response_nonce != sub.sent_nonce:
            return []  # stale: answers a response we have since superseded
        state = self._node_state(t)
        if req.error_detail is not None and req.error_detail.code != 0:
            sub.nacked_version = sub.sent_version
            msg = req.error_detail.message
            state.update(nacked=sub.sent_version, nack_message=msg[:2000], nack_at=time.time())
            log.error("NACK from %s for %s version %s: %s", self.node_id, t, sub.sent_version, msg)
        elif req.response_nonce:
            state.update(acked=req.version_info, acked_at=time.time())
            log.info("ACK from %s for %s version %s", self.node_id, t, req.version_info)
        names = None if t in resources.WILDCARD_TYPES else frozenset(req.resource_names)
        names_changed = names != sub.names
        sub.names = names
        if names_changed or not req.response_nonce:
            return [t]  # first request, reconnect, or a new set of names
        return [t] if self._needs_push(t, sub) else []

    def _needs_push(self, type_url: str, sub: _Sub) -> bool:
        snap = self.cache.snapshot
        if snap is None or type_url not in snap.types:
            return False
        version = snap.types[type_url].version
        return version != sub.sent_version and version != sub.nacked_version

    def pending_after_change(self) -> list[str]:
        return [
            t for t in resources.TYPE_ORDER if t in self.subs and self._needs_push(t, self.subs[t])
        ]

    def response(self, type_url: str) -> DiscoveryResponse | None:
        snap = self.cache.snapshot
        sub = self.subs[type_url]
        if snap is None or type_url not in snap.types:
            return None
        ts = snap.types[type_url]
        if sub.names is None:
            items = list(ts.resources.values())
        else:
            items = [ts.resources[n] for n in sorted(sub.names) if n in ts.resources]
        self._nonce += 1
        sub.sent_version, sub.sent_nonce = ts.version, str(self._nonce)
        self._node_state(type_url).update(sent=ts.version, sent_at=time.time())
        log.info(
            "push %s version %s (%d resources) to %s",
            type_url.rsplit(".", 1)[-1],
            ts.version,
            len(items),
            self.node_id,
        )
        return DiscoveryResponse(
            version_info=ts.version, resources=items, type_url=type_url, nonce=sub.sent_nonce
        )


class AdsServer:
    """gRPC handler for StreamAggregatedResources (SotW)."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache

    async def stream(
        self, requests: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DiscoveryResponse]:
        st = _Stream(self.cache)
        queue: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for req in requests:
                    await queue.put(req)
            finally:
                await queue.put(None)

        async def watch() -> None:
            seq = self.cache.snapshot.seq if self.cache.snapshot else 0
            while True:
                seq = (await self.cache.wait_change(seq)).seq
                await queue.put(_CHANGED)

        tasks = [asyncio.create_task(read()), asyncio.create_task(watch())]
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                due = st.pending_after_change() if item is _CHANGED else st.on_request(item)
                for type_url in due:
                    resp = st.response(type_url)
                    if resp is not None:
                        yield resp
        finally:
            for t in tasks:
                t.cancel()
            log.info("ADS stream from %s closed", st.node_id)

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self.stream,
            request_deserializer=DiscoveryRequest.parse,
            response_serializer=bytes,
        )
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE, {"StreamAggregatedResources": method}
        )


_CHANGED = DiscoveryRequest(type_url="inferline/snapshot-changed")


class ControlPlane:
    """Builds snapshots from the tenant file + PKI and keeps them current."""

    def __init__(
        self,
        tenants_path: Path,
        topo: resources.Topology,
        audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.tenants_path = Path(tenants_path)
        self.topo = topo
        self.cache = SnapshotCache()
        self.last_error: str | None = None
        # Every applied change of a tenant's rate limit or quota is an admin action:
        # one record on the audit trail (router.audit) per applied snapshot.
        self._audit = audit
        self._limits: dict[str, dict[str, float]] | None = None

    def _audit_limits(self, edge: tenants.EdgeConfig) -> None:
        limits = {
            tid: {
                "requests_per_second": t.rate_limit.requests_per_second,
                "burst": t.rate_limit.burst,
                "quota_per_minute": t.quota_per_minute,
            }
            for tid, t in sorted(edge.tenants.items())
        }
        old, self._limits = self._limits, limits
        if self._audit is None or old == limits:
            return
        changes = {
            tid: {"from": old.get(tid) if old else None, "to": limits.get(tid)}
            for tid in sorted(set(limits) | set(old or {}))
            if old is None or old.get(tid) != limits.get(tid)
        }
        self._audit(
            {
                "actor": "edge-control-plane",
                "tenant": None,
                "action": "quota.change" if old is not None else "quota.load",
                "subject": f"tenants:{edge.version}",
                "details": {"changes": changes},
            }
        )

    def watched(self) -> list[Path]:
        return [self.tenants_path, *self.topo.secret_files.paths(), self.topo.pki.jwks]

    async def rebuild(self) -> Snapshot | None:
        t0 = time.perf_counter()
        try:
            edge = tenants.load(self.tenants_path)
            built = resources.build(edge, self.topo)
        except Exception as e:  # any invalid input: keep serving the last good snapshot
            self.last_error = f"{type(e).__name__}: {e}"
            log.error("snapshot build failed, keeping the previous one: %s", self.last_error)
            if self.cache.snapshot is None:
                raise
            return None
        self.last_error = None
        snap = await self.cache.set(built, edge.version)
        self._audit_limits(edge)
        log.info(
            "snapshot %d (%s) built in %.0f ms: %s",
            snap.seq,
            edge.version,
            (time.perf_counter() - t0) * 1000,
            {t.rsplit(".", 1)[-1]: ts.version for t, ts in snap.types.items()},
        )
        return snap

    def status(self) -> dict[str, Any]:
        return {**self.cache.status(), "last_error": self.last_error}


async def _status_server(cp: ControlPlane, port: int) -> asyncio.Server:
    """GET anything -> JSON status (snapshot versions, per-node ACK/NACK). Loopback only."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            body = json.dumps(cp.status()).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)  # debug endpoint: loopback only


async def serve(args: argparse.Namespace) -> None:
    def hostport(s: str) -> tuple[str, int]:
        host, port = s.rsplit(":", 1)
        return host, int(port)

    routers = [hostport(u) for u in args.upstream.split(",") if u]
    topo = resources.Topology(
        pki=DevPKI(args.pki.resolve()),
        mtls_port=args.mtls_port,
        jwt_port=args.jwt_port,
        upstream=routers[0],
        replicas=tuple(routers[1:]),
        bridges=tuple(hostport(u) for u in (args.bridge or "").split(",") if u),
        ratelimit=hostport(args.ratelimit) if args.ratelimit else None,
        access_log=args.access_log,
        listen_address=args.listen_address,
        secrets=EdgeSecretFiles.from_dir(args.secrets_dir) if args.secrets_dir else None,
    )
    audit: Callable[[dict[str, Any]], None] | None = None
    if args.audit_path is not None:
        from router.audit.store import JsonlAuditStore

        store = JsonlAuditStore(args.audit_path.resolve())

        def audit(event: dict[str, Any]) -> None:
            store.append([event], time.time())

    cp = ControlPlane(args.tenants, topo, audit=audit)
    await cp.rebuild()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((AdsServer(cp.cache).handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set(ADS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    status = await _status_server(cp, args.status_port) if args.status_port else None
    watcher = asyncio.create_task(
        tenants.watch(cp.watched(), cp.rebuild, interval_s=args.poll_interval)
    )
    log.info("ADS on %s:%d, status on %s", args.host, args.port, args.status_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    watcher.cancel()
    if status is not None:
        status.close()
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inferline_edge.xds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tenants", type=Path, required=True, help="tenants.yaml")
    p.add_argument("--pki", type=Path, required=True, help="dev PKI directory (certs.py)")
    p.add_argument("--port", type=int, required=True, help="ADS gRPC port")
    p.add_argument("--host", default="127.0.0.1", help="ADS bind address (0.0.0.0 in a pod)")
    p.add_argument(
        "--listen-address", default="127.0.0.1", help="Envoy's public listeners bind here"
    )
    p.add_argument("--status-port", type=int, default=0, help="JSON status port (0 = off)")
    p.add_argument("--mtls-port", type=int, required=True, help="Envoy's public mTLS listener")
    p.add_argument("--jwt-port", type=int, default=None, help="Envoy's public JWT listener")
    p.add_argument(
        "--secrets-dir",
        type=Path,
        default=None,
        help="Kubernetes-secret dirs server/, client/, ca/ to serve over SDS (default: --pki)",
    )
    p.add_argument("--upstream", required=True, help="router host:port[,host:port...] (mTLS)")
    p.add_argument(
        "--bridge",
        default=None,
        help="the routers' HTTP/1.1 fast-lane host:port[,...]: Predict goes there "
        "as gRPC over HTTP/1.1, status in trailers (default: gRPC to --upstream)",
    )
    p.add_argument("--ratelimit", default=None, help="rate-limit service host:port")
    p.add_argument(
        "--audit-path",
        type=Path,
        default=None,
        help="audit trail (JSON lines, router.audit) to record quota changes in",
    )
    p.add_argument("--access-log", action="store_true", help="Envoy logs each request")
    p.add_argument("--poll-interval", type=float, default=0.2, help="file poll, seconds")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
