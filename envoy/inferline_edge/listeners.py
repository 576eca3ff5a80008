"""Envoy's public listeners: TLS, the HTTP connection manager and its filter chain.

Tenant-independent on purpose (ports, certificate names, JWKS, rate-limit-service
settings): a listener change drains connections, so tenant data lives in RDS.

Filter order on each request: header_mutation (drop client-sent identity headers)
-> jwt_authn (JWT listener only) -> Lua (derive ``x-inferline-tenant`` from the
verified identity, normalise the priority) -> RBAC (deny unless a tenant policy
from RDS allows) -> local rate limit (per-tenant bucket from RDS) -> global rate
limit (quota service) -> router (Predict to the routers' HTTP/1.1 fast lane when
configured: the gRPC request as is, its status back in HTTP/1.1 trailers, so no
filter re-frames anything).
"""

from __future__ import annotations

from typing import Any

from inferline_edge.common import (
    ADS,
    JWT_FILTER,
    JWT_METADATA_KEY,
    JWT_PAYLOAD_HEADER,
    RATELIMIT_CLUSTER,
    RATELIMIT_DOMAIN,
    ROUTE_NAME,
    SECRET_CA,
    SECRET_SERVER,
    TENANT_HEADER,
    Topology,
    http_filter,
    sds,
    typed,
)
from inferline_edge.tenants import EdgeConfig

# Runs after the client-sent copies are removed (header_mutation): derive the
# tenant from the verified peer certificate (or the verified JWT payload) and
# normalise the priority class. Tenant-independent, so it lives in the listener.
LUA_TENANT_FILTER = r"""
local PRIORITIES = {critical = true, standard = true, batch = true}

local function tenant_from_cert(handle)
  local ssl = handle:streamInfo():downstreamSslConnection()
  if ssl == nil or not ssl:peerCertificatePresented() then return nil end
  for _, san in ipairs(ssl:uriSanPeerCertificate()) do
    local t = string.match(san, "^spiffe://inferline/tenant/([%w_-]+)/svc/[%w._-]+$")
    if t ~= nil then return t end
  end
  return nil
end

local function tenant_from_jwt(handle)
  local md = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  if md == nil or md["jwt_payload"] == nil then return nil end
  local t = md["jwt_payload"]["tenant"]
  if type(t) == "string" and string.match(t, "^[%w_-]+$") then return t end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove("x-inferline-tenant")
  local tenant = tenant_from_cert(handle) or tenant_from_jwt(handle)
  if tenant ~= nil then headers:replace("x-inferline-tenant", tenant) end
  local p = headers:get("x-inferline-priority")
  if p == nil or not PRIORITIES[p] then headers:replace("x-inferline-priority", "standard") end
end
"""


# Verified tokens kept per Envoy worker (Envoy's LRU, keyed by the whole token;
# tokens over 4 KiB are never kept). A hit skips only the ES256 signature check,
# ~90-150 us of Envoy CPU per request on the 2-vCPU dev VM (docs/benchmarks.md,
# "Envoy's share"): iss, aud, exp and nbf are still checked on every request,
# with the provider's clock skew. The JWKS is inline in this listener, so a key
# rotation replaces the filter and its cache with it. Sized for the live tokens
# of every JWT caller (one per service account per token lifetime), not for
# requests; an evicted token is verified again, never refused.
JWT_CACHE_SIZE = 1024

_ACCESS_LOG = {
    "name": "envoy.access_loggers.stdout",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "log_format": {
            "text_format_source": {
                "inline_string": (
                    "[%START_TIME%] %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% "
                    "%REQ(:PATH)% %RESPONSE_CODE% grpc=%GRPC_STATUS_NUMBER% flags=%RESPONSE_FLAGS% "
                    "details=%RESPONSE_CODE_DETAILS% tenant=%REQ(X-INFERLINE-TENANT)% "
                    "peer=%DOWNSTREAM_PEER_URI_SAN% %DURATION%ms\n"
                )
            }
        },
    },
}


def jwt_filter(jwks: str) -> dict[str, Any]:
    """The JWT listener's ``jwt_authn`` filter: ES256 tokens of the inferline
    issuer, verified against the inline ``jwks``, on every path."""
    provider = {
        "issuer": "https://auth.inferline.local",
        "audiences": ["inferline"],
        "local_jwks": {"inline_string": jwks},
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward": False,
        "forward_payload_header": JWT_PAYLOAD_HEADER,
        "payload_in_metadata": JWT_METADATA_KEY,
        "clock_skew_seconds": 30,
        "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE},
    }
    return http_filter(
        JWT_FILTER,
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        {
            "providers": {"inferline": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "inferline"}}],
        },
    )


def _hcm(name: str, *, jwt: bool, jwks: str, edge: EdgeConfig, topo: Topology) -> dict[str, Any]:
    filters = [
        http_filter(
            "envoy.filters.http.header_mutation",
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            {
                "mutations": {
                    "request_mutations": [
                        {"remove": h} for h in (TENANT_HEADER, JWT_PAYLOAD_HEADER)
                    ]
                }
            },
        ),
    ]
    if jwt:
        filters.append(jwt_filter(jwks))
    filters += [
        http_filter(
            "envoy.filters.http.lua",
            "envoy.extensions.filters.http.lua.v3.Lua",
            {"default_source_code": {"inline_string": LUA_TENANT_FILTER}},
        ),
        # Deny-all unless the route configuration's per-vhost policy allows.
        http_filter(
            "envoy.filters.http.rbac",
            "envoy.extensions.filters.http.rbac.v3.RBAC",
            {"rules": {"action": "ALLOW"}},
        ),
        # Buckets come per-vhost from RDS; the listener-level filter is a shell.
        http_filter(
            "envoy.filters.http.local_ratelimit",
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            {"stat_prefix": "tenant_rl"},
        ),
    ]
    if topo.ratelimit is not None:
        rls = edge.ratelimit_service
        filters.append(
            http_filter(
                "envoy.filters.http.ratelimit",
                "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
                {
                    "domain": RATELIMIT_DOMAIN,
                    "timeout": f"{rls.timeout_ms / 1000}s",
                    "failure_mode_deny": rls.failure_mode_deny,
                    "rate_limited_as_resource_exhausted": True,
                    "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
                    "rate_limit_service": {
                        "grpc_service": {"envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER}},
                        "transport_api_version": "V3",
                    },
                },
            )
        )
    filters.append(
        http_filter(
            "envoy.filters.http.router",
            "envoy.extensions.filters.http.router.v3.Router",
            {"suppress_envoy_headers": True},
        )
    )
    return typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        {
            "stat_prefix": name,
            "codec_type": "HTTP2",  # gRPC only
            "use_remote_address": True,
            "internal_address_config": {"cidr_ranges": []},  # no caller is "internal"
            "xff_num_trusted_hops": 0,
            "skip_xff_append": False,
            # mTLS: replace whatever the client sent with the verified identity;
            # JWT (no client cert): drop any client-sent XFCC.
            "forward_client_cert_details": "SANITIZE" if jwt else "SANITIZE_SET",
            **({} if jwt else {"set_current_client_cert_details": {"uri": True}}),
            "server_name": "inferline-edge",
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            "stream_idle_timeout": "300s",
            "request_timeout": "60s",
            "request_headers_timeout": "10s",
            "drain_timeout": "5s",
            "common_http_protocol_options": {
                "idle_timeout": "3600s",
                "headers_with_underscores_action": "REJECT_REQUEST",
                "max_headers_count": 100,
            },
            "http2_protocol_options": {
                "max_concurrent_streams": 100,
                "initial_stream_window_size": 65536,
                "initial_connection_window_size": 1048576,
            },
            "rds": {"route_config_name": ROUTE_NAME, "config_source": ADS},
            "http_filters": filters,
            **({"access_log": [_ACCESS_LOG]} if topo.access_log else {}),
        },
    )


def listener(
    name: str, port: int, *, jwt: bool, edge: EdgeConfig, topo: Topology
) -> dict[str, Any]:
    jwks = topo.pki.jwks.read_text() if jwt else ""
    tls: dict[str, Any] = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "alpn_protocols": ["h2"],
        "tls_certificate_sds_secret_configs": [sds(SECRET_SERVER)],
    }
    if not jwt:
        tls["validation_context_sds_secret_config"] = sds(SECRET_CA)
    return {
        "name": name,
        "address": {"socket_address": {"address": topo.listen_address, "port_value": port}},
        "per_connection_buffer_limit_bytes": 32768,
        "filter_chains": [
            {
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": typed(
                        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        {"require_client_certificate": not jwt, "common_tls_context": tls},
                    ),
                },
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _hcm(name, jwt=jwt, jwks=jwks, edge=edge, topo=topo),
                    }
                ],
            }
        ],
    }
