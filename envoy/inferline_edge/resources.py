"""Build Envoy's xDS resources (listeners, clusters, routes, secrets) from the tenant config.

The resources are written as proto3-JSON dicts (the shape of Envoy's docs) and
turned into typed ``envoy-data-plane`` messages with ``from_dict``, which rejects
unknown fields and unregistered ``@type`` URLs: a typo fails here, at build time,
not as a NACK from Envoy.

Placement decides what an edit costs. Everything that depends on tenants lives in
the route configuration (RDS): token buckets (local rate limit per-vhost config)
and who may call (RBAC per-vhost config). RDS updates apply to the next request on
existing connections, with no listener drain. Listeners and clusters depend only
on ports, certificates by name, and the rate-limit-service settings.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from pathlib import Path
from typing import Any

import betterproto2
from envoy_data_plane.envoy.config.cluster.v3 import Cluster
from envoy_data_plane.envoy.config.listener.v3 import Listener
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from inferline_edge.certs import ROUTER_DNS, ROUTER_SPIFFE_ID
from inferline_edge.common import (
    CLUSTER,
    GRPC_PREFIXES,
    JWT_FILTER,
    JWT_METADATA_KEY,
    LISTENER,
    PREDICT_PATH,
    PRIORITY_HEADER,
    RATELIMIT_CLUSTER,
    ROUTE,
    ROUTE_NAME,
    ROUTER_CLUSTER,
    ROUTER_FAST_CLUSTER,
    SECRET,
    SECRET_CA,
    SECRET_CLIENT,
    SECRET_SERVER,
    TENANT_HEADER,
    TYPE_ORDER,
    WILDCARD_TYPES,
    Topology,
    sds,
    typed,
)
from inferline_edge.listeners import listener
from inferline_edge.secrets import EdgeSecretFiles, load_bundle, load_pair
from inferline_edge.tenants import EdgeConfig, Tenant, glob_to_regex

_TYPES: dict[str, type[betterproto2.Message]] = {
    LISTENER: Listener,
    CLUSTER: Cluster,
    ROUTE: RouteConfiguration,
    SECRET: Secret,
}


def _local_rl_details() -> str:
    """Static ``google.rpc.Status`` for bucket refusals (QuotaFailure + RetryInfo).

    Its message must equal the grpc-message Envoy writes for the local reply
    ("local_rate_limited"), or gRPC clients' rich-status parsers reject it."""
    violation = error_details_pb2.QuotaFailure.Violation(
        subject="tenant", description="per-tenant request rate exceeded (edge token bucket)"
    )
    packed = [any_pb2.Any(), any_pb2.Any()]
    packed[0].Pack(error_details_pb2.QuotaFailure(violations=[violation]))
    packed[1].Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
    st = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message="local_rate_limited", details=packed
    )
    return base64.b64encode(st.SerializeToString()).decode()


_LOCAL_RL_DETAILS = _local_rl_details()


def token_bucket(rps: float, burst: int) -> dict[str, Any]:
    """Envoy token bucket for ``rps`` refill: the shortest fill interval (>= 50 ms,
    Envoy's minimum) that carries a whole number of tokens, so the rate is exact."""
    one_token_ms = 1000 / rps
    if one_token_ms >= 50 and abs(one_token_ms - round(one_token_ms)) < 1e-9:
        return _bucket(burst, 1, round(one_token_ms))
    for interval_ms in (50, 100, 200, 250, 500, 1000):
        tokens = rps * interval_ms / 1000
        if tokens >= 1 and abs(tokens - round(tokens)) < 1e-9:
            return _bucket(burst, round(tokens), interval_ms)
    if rps < 20:  # slower than one token per 50 ms: one token per 1/rps
        return _bucket(burst, 1, max(50, round(1000 / rps)))
    return _bucket(burst, max(1, round(rps)), 1000)


def _bucket(burst: int, tokens: int, interval_ms: int) -> dict[str, Any]:
    return {
        "max_tokens": burst,
        "tokens_per_fill": tokens,
        "fill_interval": f"{interval_ms / 1000}s",
    }


ROUTER_HEALTH_SERVICE = "inferline.v1.InferenceService"
ROUTER_HEALTH_INTERVAL_S = 0.5
"""Envoy's active health checks of the routers: a draining router (NOT_SERVING)
leaves the rotation within about one interval, so routers drain for three
(``server.drain_s``: the Helm chart's default, the restart drills)."""
# Retry only what cannot have reached the router's pipeline (connection refused,
# stream refused by a router that is going away, reset before any response
# header): never an answered request, so no request is scored twice. Another
# router is tried (previous_hosts), and the budget caps retries at 10% of
# active requests (at least 3 at a time) so retries cannot amplify an outage.
RETRY_POLICY: dict[str, Any] = {
    "retry_on": "connect-failure,refused-stream,reset-before-request",
    "num_retries": 2,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 3,
    "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.05s"},
}
RETRY_BUDGET: dict[str, Any] = {"budget_percent": {"value": 10.0}, "min_retry_concurrency": 3}


def _h2_options() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            {
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "initial_stream_window_size": 65536,
                        "initial_connection_window_size": 1048576,
                    }
                },
                "common_http_protocol_options": {"idle_timeout": "300s"},
            },
        )
    }


def _h1_options() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            {
                # The fast lane answers gRPC over HTTP/1.1: its grpc-status is a
                # trailer, which the HTTP/1 codec drops unless told otherwise.
                "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}},
                "common_http_protocol_options": {"idle_timeout": "300s"},
            },
        )
    }


def _static_cluster(
    name: str, addr: tuple[str, int], connect_timeout: str, *more: tuple[str, int]
) -> dict[str, Any]:
    # IP literals (loopback, tests) are STATIC; Service names (Kubernetes) are
    # resolved and re-resolved by Envoy (STRICT_DNS: every pod IP is an endpoint).
    try:
        ipaddress.ip_address(addr[0])
        kind = "STATIC"
    except ValueError:
        kind = "STRICT_DNS"
    return {
        "name": name,
        "type": kind,
        "connect_timeout": connect_timeout,
        "per_connection_buffer_limit_bytes": 32768,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                        for host, port in (addr, *more)
                    ]
                }
            ],
        },
        "typed_extension_protocol_options": _h2_options(),
    }


def _router_cluster(
    name: str, endpoints: tuple[tuple[str, int], ...], *, fast_lane: bool
) -> dict[str, Any]:
    """A cluster of routers over mTLS: their gRPC ports, or (``fast_lane``) their
    HTTP/1.1 fast-lane ports for Predict."""
    cluster = _static_cluster(name, endpoints[0], "1s", *endpoints[1:])
    if fast_lane:
        cluster["typed_extension_protocol_options"] = _h1_options()
    # Active health checks: a router that is draining (SIGTERM: health goes
    # NOT_SERVING before it stops accepting) or not ready leaves the rotation
    # within one interval, so a rolling restart loses no request.
    check: dict[str, Any] = (
        {"http_health_check": {"path": "/healthz", "host": ROUTER_DNS}}
        if fast_lane
        else {"grpc_health_check": {"service_name": ROUTER_HEALTH_SERVICE}}
    )
    cluster["health_checks"] = [
        {
            "timeout": f"{ROUTER_HEALTH_INTERVAL_S}s",
            "interval": f"{ROUTER_HEALTH_INTERVAL_S}s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "no_traffic_interval": f"{ROUTER_HEALTH_INTERVAL_S}s",
            **check,
        }
    ]
    # Separate budgets per routing priority: critical traffic (HIGH) keeps its own
    # connection-pool and request budget when standard/batch traffic floods DEFAULT.
    cluster["circuit_breakers"] = {
        "thresholds": [
            {
                "priority": prio,
                "max_connections": 1024,
                "max_pending_requests": 512,
                "max_requests": 512,
                "retry_budget": RETRY_BUDGET,
            }
            for prio in ("DEFAULT", "HIGH")
        ]
    }
    cluster["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            {
                "sni": ROUTER_DNS,
                "common_tls_context": {
                    "alpn_protocols": ["http/1.1" if fast_lane else "h2"],
                    "tls_certificate_sds_secret_configs": [sds(SECRET_CLIENT)],
                    "combined_validation_context": {
                        "default_validation_context": {
                            "match_typed_subject_alt_names": [
                                {"san_type": "URI", "matcher": {"exact": ROUTER_SPIFFE_ID}}
                            ]
                        },
                        "validation_context_sds_secret_config": sds(SECRET_CA),
                    },
                },
            },
        ),
    }
    return cluster


def _clusters(topo: Topology) -> list[dict[str, Any]]:
    router = _router_cluster(ROUTER_CLUSTER, (topo.upstream, *topo.replicas), fast_lane=False)
    out = [router]
    if topo.bridges:
        out.append(_router_cluster(ROUTER_FAST_CLUSTER, topo.bridges, fast_lane=True))
    if topo.ratelimit is not None:
        # Plaintext on loopback; a remote rate-limit service would get mTLS too.
        rl = _static_cluster(RATELIMIT_CLUSTER, topo.ratelimit, "0.25s")
        rl["circuit_breakers"] = {
            "thresholds": [
                {"max_connections": 64, "max_pending_requests": 1024, "max_requests": 4096}
            ]
        }
        out.append(rl)
    return out


def _tenant_principals(tid: str, t: Tenant) -> list[dict[str, Any]]:
    same_tenant = {"header": {"name": TENANT_HEADER, "string_match": {"exact": tid}}}
    out: list[dict[str, Any]] = []
    for ident in t.identities:
        cert = {
            "authenticated": {"principal_name": {"safe_regex": {"regex": glob_to_regex(ident)}}}
        }
        out.append({"and_ids": {"ids": [cert, same_tenant]}})
    for sub in t.jwt_subjects:

        def claim(key: str, match: dict[str, Any]) -> dict[str, Any]:
            path = [{"key": JWT_METADATA_KEY}, {"key": key}]
            matcher = {"filter": JWT_FILTER, "path": path, "value": {"string_match": match}}
            return {"sourced_metadata": {"metadata_matcher": matcher, "metadata_source": "DYNAMIC"}}

        ids = [
            claim("tenant", {"exact": tid}),
            claim("sub", {"safe_regex": {"regex": glob_to_regex(sub)}}),
            same_tenant,
        ]
        out.append({"and_ids": {"ids": ids}})
    return out


def _route_config(edge: EdgeConfig, *, fast_lane: bool = False) -> dict[str, Any]:
    policies = {
        f"tenant-{tid}": {"permissions": [{"any": True}], "principals": principals}
        for tid, t in sorted(edge.tenants.items())
        if (principals := _tenant_principals(tid, t))
    }
    local_rl = typed(
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        {
            "stat_prefix": "tenant_rl",
            "filter_enabled": {
                "runtime_key": "tenant_rl.enabled",
                "default_value": {"numerator": 100, "denominator": "HUNDRED"},
            },
            "filter_enforced": {
                "runtime_key": "tenant_rl.enforced",
                "default_value": {"numerator": 100, "denominator": "HUNDRED"},
            },
            # Envoy requires a default bucket; it only meets requests with no tenant
            # descriptor, which RBAC (earlier in the chain) has already refused.
            "token_bucket": _bucket(10, 10, 1000),
            "descriptors": [
                {
                    "entries": [{"key": "tenant", "value": tid}],
                    "token_bucket": token_bucket(
                        t.rate_limit.requests_per_second, t.rate_limit.burst
                    ),
                }
                for tid, t in sorted(edge.tenants.items())
            ],
            "rate_limits": [
                {
                    "actions": [
                        {
                            "request_headers": {
                                "header_name": TENANT_HEADER,
                                "descriptor_key": "tenant",
                            }
                        }
                    ]
                }
            ],
            "always_consume_default_token_bucket": False,
            "local_rate_limit_per_downstream_connection": False,
            "rate_limited_as_resource_exhausted": True,
            # x-ratelimit-* headers come from the quota filter only (two sets would
            # contradict each other); a bucket refusal says retry-after and why.
            "response_headers_to_add": [
                {
                    "header": {"key": "retry-after", "value": "1"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
                {
                    "header": {"key": "grpc-status-details-bin", "value": _LOCAL_RL_DETAILS},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
            ],
        },
    )
    per_vhost = {
        "envoy.filters.http.rbac": typed(
            "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
            {"rbac": {"rules": {"action": "ALLOW", "policies": policies}}},
        ),
        "envoy.filters.http.local_ratelimit": local_rl,
    }
    action = {
        "cluster": ROUTER_CLUSTER,
        "timeout": "30s",
        "max_stream_duration": {"grpc_timeout_header_max": "30s"},
        "retry_policy": RETRY_POLICY,
    }
    routes: list[dict[str, Any]] = []
    crit = {"name": PRIORITY_HEADER, "string_match": {"exact": "critical"}}
    if fast_lane:
        # Predict to the routers' HTTP/1.1 fast lane, the gRPC request forwarded
        # as is: same deadline, retries and priorities as the gRPC routes.
        fast = {**action, "cluster": ROUTER_FAST_CLUSTER}
        match: dict[str, Any] = {"path": PREDICT_PATH, "grpc": {}}
        routes.append(
            {"match": {**match, "headers": [crit]}, "route": {**fast, "priority": "HIGH"}}
        )
        routes.append({"match": match, "route": fast})
    for prefix in GRPC_PREFIXES:
        routes.append(
            {
                "match": {"prefix": prefix, "grpc": {}, "headers": [crit]},
                "route": {**action, "priority": "HIGH"},
            }
        )
        routes.append({"match": {"prefix": prefix, "grpc": {}}, "route": action})
    routes.append({"match": {"prefix": "/"}, "direct_response": {"status": 404}})
    vhost: dict[str, Any] = {
        "name": "inferline",
        "domains": ["*"],
        "routes": routes,
        "typed_per_filter_config": per_vhost,
    }
    metered = sorted(tid for tid, t in edge.tenants.items() if t.quota_per_minute > 0)
    if metered:
        # Quota descriptors only for tenants that have a quota: for the others the
        # global rate-limit filter makes no call at all (no added latency).
        only_metered = {
            "name": TENANT_HEADER,
            "string_match": {"safe_regex": {"regex": f"^({'|'.join(metered)})$"}},
        }
        vhost["rate_limits"] = [
            {
                "actions": [
                    {
                        "header_value_match": {
                            "descriptor_key": "quota",
                            "descriptor_value": "per_minute",
                            "headers": [only_metered],
                        }
                    },
                    {"request_headers": {"header_name": TENANT_HEADER, "descriptor_key": "tenant"}},
                ]
            }
        ]
    return {"name": ROUTE_NAME, "validate_clusters": True, "virtual_hosts": [vhost]}


def _secrets(files: EdgeSecretFiles) -> list[dict[str, Any]]:
    """Inline PEM, checked first: a mismatched pair (a rotation seen half-way) or an
    empty bundle fails the build, so the last good snapshot stays in force."""

    def cert(name: str, chain_path: Path, key_path: Path) -> dict[str, Any]:
        chain, key = load_pair(chain_path, key_path)
        return {
            "name": name,
            "tls_certificate": {
                "certificate_chain": {"inline_string": chain},
                "private_key": {"inline_string": key},
            },
        }

    ca = {
        "name": SECRET_CA,
        "validation_context": {"trusted_ca": {"inline_string": load_bundle(files.ca)}},
    }
    return [
        cert(SECRET_SERVER, files.server_cert, files.server_key),
        cert(SECRET_CLIENT, files.client_cert, files.client_key),
        ca,
    ]


def build(edge: EdgeConfig, topo: Topology) -> dict[str, dict[str, betterproto2.Message]]:
    """All resources by type URL and name, validated as typed messages."""
    raw: dict[str, list[dict[str, Any]]] = {
        SECRET: _secrets(topo.secret_files),
        CLUSTER: _clusters(topo),
        LISTENER: [listener("public_mtls", topo.mtls_port, jwt=False, edge=edge, topo=topo)],
        ROUTE: [_route_config(edge, fast_lane=bool(topo.bridges))],
    }
    if topo.jwt_port is not None:
        raw[LISTENER].append(listener("public_jwt", topo.jwt_port, jwt=True, edge=edge, topo=topo))
    out: dict[str, dict[str, betterproto2.Message]] = {}
    for type_url, items in raw.items():
        cls = _TYPES[type_url]
        out[type_url] = {d["name"]: cls.from_dict(_jsonable(d)) for d in items}
    return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON: from_dict wants JSON scalars (and copies nested dicts)."""
    result: dict[str, Any] = json.loads(json.dumps(d))
    return result


__all__ = [
    "CLUSTER",
    "GRPC_PREFIXES",
    "LISTENER",
    "ROUTE",
    "SECRET",
    "TYPE_ORDER",
    "WILDCARD_TYPES",
    "Topology",
    "build",
    "token_bucket",
]
