"""Tenant file validation and the xDS resources built from it (no Envoy needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import inferline_edge.listeners as listeners
import inferline_edge.resources as resources
import inferline_edge.tenants as tenants
from inferline_edge.certs import DevPKI
from inferline_edge.common import PREDICT_PATH
from scripts.stack import ROOT


def _cfg(**tenant_overrides: Any) -> dict[str, Any]:
    t = {
        "identities": ["spiffe://inferline/tenant/acme/svc/*"],
        "rate_limit": {"requests_per_second": 10, "burst": 20},
    } | tenant_overrides
    return {"tenants": {"acme": t}}


def test_repo_tenants_file_is_valid_and_matches_routing_table() -> None:
    cfg = tenants.load(ROOT / "envoy" / "tenants.yaml")
    routing = yaml.safe_load((ROOT / "scripts" / "demo_routing.yaml").read_text())
    assert set(cfg.tenants) == set(routing["tenants"])


@pytest.mark.parametrize(
    "bad",
    [
        _cfg(identities=["spiffe://inferline/tenant/other/svc/x"]),  # another tenant's namespace
        _cfg(identities=["spiffe://inferline/tenant/acme/svc/a/b"]),  # more than one segment
        _cfg(identities=["spiffe://inferline/tenant/acme/svc/a b"]),  # bad character
        _cfg(rate_limit={"requests_per_second": 0, "burst": 1}),
        _cfg(rate_limit={"requests_per_second": 1, "burst": 0}),
        _cfg(quota_per_minute=-1),
        _cfg(quota_per_minute=2**32),  # not a uint32: Envoy's rate-limit API cannot say it
        _cfg(unknown_key=1),
        {"tenants": {"Bad Id": _cfg()["tenants"]["acme"]}},
        {"tenants": {}, "extra": 1},
    ],
)
def test_invalid_tenant_config_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises((ValidationError, ValueError)):
        tenants.EdgeConfig.model_validate(bad)


@pytest.mark.parametrize(
    ("glob", "uri", "matches"),
    [
        ("spiffe://inferline/tenant/a/svc/*", "spiffe://inferline/tenant/a/svc/x", True),
        ("spiffe://inferline/tenant/a/svc/*", "spiffe://inferline/tenant/a/svc/x/y", False),
        ("spiffe://inferline/tenant/a/svc/web", "spiffe://inferline/tenant/a/svc/webx", False),
        ("spiffe://inferline/tenant/a/svc/w.b", "spiffe://inferline/tenant/a/svc/wxb", False),
        ("feed-*", "feed-web", True),
    ],
)
def test_glob_to_regex(glob: str, uri: str, matches: bool) -> None:
    assert (re.fullmatch(tenants.glob_to_regex(glob), uri) is not None) == matches


@pytest.mark.parametrize(
    ("rps", "burst", "rate"),
    [(20, 5, 20.0), (200, 400, 200.0), (3, 3, 3.0), (0.5, 1, 0.5), (1, 1, 1.0), (7, 7, 7.0)],
)
def test_token_bucket_rate_is_exact(rps: float, burst: int, rate: float) -> None:
    b = resources.token_bucket(rps, burst)
    interval = float(b["fill_interval"].rstrip("s"))
    assert interval >= 0.05  # Envoy's minimum
    assert b["max_tokens"] == burst
    assert b["tokens_per_fill"] / interval == pytest.approx(rate)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    pki = DevPKI.create(tmp_path_factory.mktemp("pki"), days=1)
    cfg = tenants.load(ROOT / "envoy" / "tenants.yaml")
    topo = resources.Topology(
        pki=pki,
        mtls_port=10443,
        jwt_port=10444,
        upstream=("127.0.0.1", 5000),
        ratelimit=("127.0.0.1", 5001),
    )
    out = resources.build(cfg, topo)
    return {t: {n: m.to_dict() for n, m in items.items()} for t, items in out.items()}


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = listener["filterChains"][0]["filters"][0]["typedConfig"]
    return hcm


def test_resources_by_type(built: dict[str, dict[str, Any]]) -> None:
    assert set(built[resources.LISTENER]) == {"public_mtls", "public_jwt"}
    assert set(built[resources.CLUSTER]) == {"router", "ratelimit"}
    assert set(built[resources.ROUTE]) == {"inferline"}
    assert set(built[resources.SECRET]) == {"edge_server_cert", "edge_client_cert", "trusted_ca"}


def test_public_listeners_follow_edge_practice(built: dict[str, dict[str, Any]]) -> None:
    for name, listener in built[resources.LISTENER].items():
        hcm = _hcm(listener)
        assert listener["perConnectionBufferLimitBytes"] == 32768
        assert hcm["useRemoteAddress"] is True
        assert hcm["commonHttpProtocolOptions"]["headersWithUnderscoresAction"] == "REJECT_REQUEST"
        assert hcm["http2ProtocolOptions"]["maxConcurrentStreams"] == 100
        assert "streamIdleTimeout" in hcm and "requestHeadersTimeout" in hcm
        names = [f["name"] for f in hcm["httpFilters"]]
        assert not any("fault" in n for n in names)  # never honour caller fault headers
        # Client-sent identity headers are removed before anything reads them.
        assert names[0] == "envoy.filters.http.header_mutation"
        assert names[-1] == "envoy.filters.http.router"
        assert names.index("envoy.filters.http.lua") < names.index("envoy.filters.http.rbac")
        assert names.index("envoy.filters.http.rbac") < names.index(
            "envoy.filters.http.local_ratelimit"
        )
        tls = listener["filterChains"][0]["transportSocket"]["typedConfig"]
        if name == "public_mtls":
            assert tls["requireClientCertificate"] is True
            assert hcm["forwardClientCertDetails"] == "SANITIZE_SET"
            assert hcm["setCurrentClientCertDetails"] == {"uri": True}
        else:
            # SANITIZE is the enum's zero value: proto3 JSON leaves it out
            assert hcm.get("forwardClientCertDetails", "SANITIZE") == "SANITIZE"
            assert "envoy.filters.http.jwt_authn" in names
            jwt = next(f for f in hcm["httpFilters"] if f["name"] == "envoy.filters.http.jwt_authn")
            provider = jwt["typedConfig"]["providers"]["inferline"]
            # Verified tokens are cached (signature check skipped on a hit; the
            # time, issuer and audience checks still run with this skew).
            assert provider["jwtCacheConfig"] == {"jwtCacheSize": listeners.JWT_CACHE_SIZE}
            assert provider["clockSkewSeconds"] == 30


def test_upstream_is_mtls_and_pins_router_identity(built: dict[str, dict[str, Any]]) -> None:
    tls = built[resources.CLUSTER]["router"]["transportSocket"]["typedConfig"]["commonTlsContext"]
    assert tls["tlsCertificateSdsSecretConfigs"][0]["name"] == "edge_client_cert"
    sans = tls["combinedValidationContext"]["defaultValidationContext"]["matchTypedSubjectAltNames"]
    assert sans == [{"sanType": "URI", "matcher": {"exact": "spiffe://inferline/router"}}]


def test_route_carries_per_tenant_buckets_and_policies(built: dict[str, dict[str, Any]]) -> None:
    cfg = tenants.load(ROOT / "envoy" / "tenants.yaml")
    vhost = built[resources.ROUTE]["inferline"]["virtualHosts"][0]
    per = vhost["typedPerFilterConfig"]
    descriptors = per["envoy.filters.http.local_ratelimit"]["descriptors"]
    assert {d["entries"][0]["value"] for d in descriptors} == set(cfg.tenants)
    policies = per["envoy.filters.http.rbac"]["rbac"]["rules"]["policies"]
    assert set(policies) == {f"tenant-{t}" for t in cfg.tenants}
    # Quota descriptors (-> a rate-limit-service call) only for tenants with a quota.
    metered = {t for t, c in cfg.tenants.items() if c.quota_per_minute > 0}
    match = vhost["rateLimits"][0]["actions"][0]["headerValueMatch"]["headers"][0]
    regex = match["stringMatch"]["safeRegex"]["regex"]
    assert {t for t in cfg.tenants if re.fullmatch(regex, t)} == metered != set(cfg.tenants)
    prefixes = {r["match"]["prefix"] for r in vhost["routes"]}
    assert set(resources.GRPC_PREFIXES) <= prefixes


def test_build_rejects_unknown_field(tmp_path: Path) -> None:
    # from_dict validates: a typo in a resource fails at build time, not as a NACK.
    from envoy_data_plane.envoy.config.listener.v3 import Listener

    with pytest.raises(KeyError):
        Listener.from_dict({"name": "x", "per_conection_buffer_limit_bytes": 1})


def test_predict_reaches_the_fast_lane_as_grpc_over_http1(tmp_path: Path) -> None:
    """With fast-lane endpoints, Predict (and only Predict) goes to the HTTP/1.1
    cluster unchanged: gRPC-matched, with the gRPC routes' deadline, retries and
    priorities; the cluster keeps HTTP/1.1 trailers (the status travels in
    them); no filter re-frames anything."""
    pki = DevPKI.create(tmp_path / "pki", days=1)
    topo = resources.Topology(
        pki=pki, mtls_port=10443, upstream=("127.0.0.1", 5000), bridges=(("127.0.0.1", 5002),)
    )
    out = resources.build(tenants.load(ROOT / "envoy" / "tenants.yaml"), topo)
    built = {t: {n: m.to_dict() for n, m in items.items()} for t, items in out.items()}
    fast = built[resources.CLUSTER]["router_fast"]
    opts = fast["typedExtensionProtocolOptions"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert opts["explicitHttpConfig"]["httpProtocolOptions"] == {"enableTrailers": True}
    assert fast["healthChecks"][0]["httpHealthCheck"]["path"] == "/healthz"
    routes = built[resources.ROUTE]["inferline"]["virtualHosts"][0]["routes"]
    predict = [r for r in routes if r.get("route", {}).get("cluster") == "router_fast"]
    assert [r["match"]["path"] for r in predict] == [PREDICT_PATH] * 2
    grpc_route = next(r for r in routes if r.get("route", {}).get("cluster") == "router")
    for r in predict:
        assert r["match"]["grpc"] == {}
        assert "typedPerFilterConfig" not in r
        same = ("timeout", "maxStreamDuration", "retryPolicy")
        assert {k: r["route"][k] for k in same} == {k: grpc_route["route"][k] for k in same}
    assert [r["route"].get("priority") for r in predict] == ["HIGH", None]
    for listener in built[resources.LISTENER].values():
        names = [f["name"] for f in _hcm(listener)["httpFilters"]]
        assert not any("bridge" in n for n in names)
        assert names.count("envoy.filters.http.lua") == 1
        lua = next(
            f for f in _hcm(listener)["httpFilters"] if f["name"] == "envoy.filters.http.lua"
        )
        assert "envoy_on_response" not in lua["typedConfig"]["defaultSourceCode"]["inlineString"]
