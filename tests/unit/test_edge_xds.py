"""The ADS server's protocol rules: versions, ACK/NACK, stale nonces, pushes on change.

Exercised over a real in-process gRPC server with the same betterproto2 codec
Envoy's side uses on the wire (Envoy itself is in tests/integration/test_edge.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest_asyncio
from envoy_data_plane.envoy.config.cluster.v3 import Cluster
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.rpc import Status

import inferline_edge.resources as resources
import inferline_edge.xds as xds

CDS, RDS = resources.CLUSTER, resources.ROUTE
METHOD = f"/{xds.ADS_SERVICE}/StreamAggregatedResources"


def _snapshot(routes: tuple[str, ...] = ("a", "b")) -> dict[str, Any]:
    return {
        CDS: {"c1": Cluster(name="c1"), "c2": Cluster(name="c2")},
        RDS: {r: RouteConfiguration(name=r) for r in routes},
    }


class Ads:
    """One ADS stream against a live server."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = channel.stream_stream(
            METHOD, request_serializer=bytes, response_deserializer=DiscoveryResponse.parse
        )()
        # A read cancelled by a timeout would cancel the whole RPC: read in the background.
        self.inbox: asyncio.Queue[DiscoveryResponse] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for resp in self.call:
            await self.inbox.put(resp)

    async def send(
        self,
        type_url: str,
        *,
        names: tuple[str, ...] = (),
        nonce: str = "",
        version: str = "",
        nack: str | None = None,
    ) -> None:
        req = DiscoveryRequest(
            node=Node(id="test-node"),
            type_url=type_url,
            resource_names=list(names),
            response_nonce=nonce,
            version_info=version,
            error_detail=Status(code=3, message=nack) if nack else None,
        )
        await self.call.write(req)

    async def recv(self, within_s: float = 2.0) -> DiscoveryResponse:
        return await asyncio.wait_for(self.inbox.get(), within_s)

    async def nothing(self, within: float = 0.3) -> None:
        await asyncio.sleep(within)
        assert self.inbox.empty(), self.inbox.get_nowait()

    def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()


@pytest_asyncio.fixture(loop_scope="session")
async def plane() -> AsyncIterator[tuple[xds.SnapshotCache, grpc.aio.Channel]]:
    cache = xds.SnapshotCache()
    await cache.set(_snapshot(), "v1")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((xds.AdsServer(cache).handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield cache, channel
    finally:
        await channel.close()
        await server.stop(0)


async def test_wildcard_and_named_subscriptions(plane: tuple[xds.SnapshotCache, Any]) -> None:
    cache, channel = plane
    ads = Ads(channel)
    await ads.send(CDS)
    cds = await ads.recv()
    assert cds.type_url == CDS and len(cds.resources) == 2  # wildcard: everything
    await ads.send(RDS, names=("b",))
    rds = await ads.recv()
    assert [RouteConfiguration.parse(r.value).name for r in rds.resources] == ["b"]
    # ACKs produce no new response
    await ads.send(CDS, nonce=cds.nonce, version=cds.version_info)
    await ads.send(RDS, names=("b",), nonce=rds.nonce, version=rds.version_info)
    await ads.nothing()
    assert cache.nodes["test-node"][CDS]["acked"] == cds.version_info
    ads.close()


async def test_change_pushes_only_changed_types(plane: tuple[xds.SnapshotCache, Any]) -> None:
    cache, channel = plane
    ads = Ads(channel)
    await ads.send(CDS)
    cds = await ads.recv()
    await ads.send(RDS, names=("a",))
    rds = await ads.recv()
    await ads.send(CDS, nonce=cds.nonce, version=cds.version_info)
    await ads.send(RDS, names=("a",), nonce=rds.nonce, version=rds.version_info)
    await ads.nothing()
    await cache.set(_snapshot(routes=("a", "b", "c")), "v2")  # routes change, clusters don't
    pushed = await ads.recv()
    assert pushed.type_url == RDS and pushed.version_info != rds.version_info
    await ads.send(RDS, names=("a",), nonce=pushed.nonce, version=pushed.version_info)
    await ads.nothing()  # no CDS push: same content, same version
    ads.close()


async def test_nack_is_recorded_and_not_resent(plane: tuple[xds.SnapshotCache, Any]) -> None:
    cache, channel = plane
    ads = Ads(channel)
    await ads.send(RDS, names=("a",))
    first = await ads.recv()
    await ads.send(RDS, names=("a",), nonce=first.nonce, version=first.version_info)
    await cache.set(_snapshot(routes=("a", "z")), "bad")
    bad = await ads.recv()
    # Envoy rejects it: keeps the previous version and says why.
    await ads.send(RDS, names=("a",), nonce=bad.nonce, version=first.version_info, nack="boom")
    await ads.nothing()  # the rejected version is not pushed again
    state = cache.nodes["test-node"][RDS]
    assert state["nacked"] == bad.version_info and state["nack_message"] == "boom"
    await cache.set(_snapshot(routes=("a", "y")), "fixed")  # the next change goes out
    fixed = await ads.recv()
    assert fixed.version_info not in (bad.version_info, first.version_info)
    ads.close()


async def test_stale_nonce_is_ignored(plane: tuple[xds.SnapshotCache, Any]) -> None:
    cache, channel = plane
    ads = Ads(channel)
    await ads.send(RDS, names=("a",))
    first = await ads.recv()
    await cache.set(_snapshot(routes=("a", "q")), "v3")
    second = await ads.recv()  # pushed before Envoy answered the first
    # The (late) answer to the first response carries its nonce and new names: stale.
    await ads.send(RDS, names=("a", "q"), nonce=first.nonce, version=first.version_info)
    await ads.nothing()
    await ads.send(RDS, names=("a", "q"), nonce=second.nonce, version=second.version_info)
    names_changed = await ads.recv()  # a current request with new names is answered
    assert len(names_changed.resources) == 2
    ads.close()
