"""Names, type URLs and helpers shared by the xDS resource builders.

Importing this module also registers, in envoy-data-plane's message pool, every
``@type`` the builders use: ``from_dict`` can only resolve registered types.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Imported for their side effect: registering the @type URLs used by the builders.
from envoy_data_plane.envoy.extensions.access_loggers.stream import v3 as _stream  # noqa: F401
from envoy_data_plane.envoy.extensions.filters.http.header_mutation import v3 as _hm  # noqa: F401
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn import v3 as _jwt  # noqa: F401
from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit import v3 as _lrl  # noqa: F401
from envoy_data_plane.envoy.extensions.filters.http.lua import v3 as _lua  # noqa: F401
from envoy_data_plane.envoy.extensions.filters.http.ratelimit import v3 as _rl  # noqa: F401
from envoy_data_plane.envoy.extensions.filters.http.rbac import v3 as _rbac  # noqa: F401
from envoy_data_plane.envoy.extensions.filters.http.router import v3 as _router  # noqa: F401
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager import (
    v3 as _hcm_types,  # noqa: F401
)
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts import v3 as _prev  # noqa: F401
from envoy_data_plane.envoy.extensions.transport_sockets.tls import v3 as _tls  # noqa: F401
from envoy_data_plane.envoy.extensions.upstreams.http import v3 as _uhttp  # noqa: F401

from inferline_edge.certs import DevPKI
from inferline_edge.secrets import EdgeSecretFiles

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# Push order for one snapshot: secrets and clusters before the listeners and
# routes that name them (make-before-break).
TYPE_ORDER = (SECRET, CLUSTER, LISTENER, ROUTE)
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})

ROUTE_NAME = "inferline"
ROUTER_CLUSTER = "router"
ROUTER_FAST_CLUSTER = "router_fast"
"""The routers' HTTP/1.1 fast lane (router/transport/fastlane.py): Predict only."""
PREDICT_PATH = "/inferline.v1.InferenceService/Predict"
RATELIMIT_CLUSTER = "ratelimit"
RATELIMIT_DOMAIN = "inferline"
TENANT_HEADER = "x-inferline-tenant"
JWT_PAYLOAD_HEADER = "x-inferline-jwt-payload"
PRIORITY_HEADER = "x-inferline-priority"
JWT_METADATA_KEY = "jwt_payload"
JWT_FILTER = "envoy.filters.http.jwt_authn"
SECRET_SERVER, SECRET_CLIENT, SECRET_CA = "edge_server_cert", "edge_client_cert", "trusted_ca"
GRPC_PREFIXES = (
    "/inferline.v1.InferenceService/",
    "/inferline.v1.AdminService/",
    "/inference.GRPCInferenceService/",
)

ADS = {"ads": {}, "resource_api_version": "V3"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where things are: the inputs that are not tenant configuration."""

    pki: DevPKI
    mtls_port: int
    upstream: tuple[str, int]
    jwt_port: int | None = None
    replicas: tuple[tuple[str, int], ...] = ()
    """More router endpoints beside ``upstream`` in the router cluster."""
    bridges: tuple[tuple[str, int], ...] = ()
    """The routers' HTTP/1.1 fast-lane endpoints. When set, Predict goes there
    (gRPC's framing over HTTP/1.1, status in trailers); everything else stays on
    the routers' gRPC ports."""
    ratelimit: tuple[str, int] | None = None
    listen_address: str = "127.0.0.1"
    access_log: bool = False
    """One line per request on Envoy's stdout (costs CPU; off for load tests)."""
    secrets: EdgeSecretFiles | None = None
    """Where the served TLS material lives (Kubernetes-secret dirs); None = the dev PKI."""

    @property
    def secret_files(self) -> EdgeSecretFiles:
        return self.secrets if self.secrets is not None else EdgeSecretFiles.from_pki(self.pki)


def typed(type_url_suffix: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_url_suffix}", **body}


def http_filter(name: str, type_suffix: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "typed_config": typed(type_suffix, body)}


def sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": ADS}
