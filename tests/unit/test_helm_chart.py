"""The Helm chart renders, validates against Kubernetes 1.31, and keeps its policies.

Rendered offline with Helm's own engine (helm-python-sdk) for the three values
files of issue 9 plus two branch variants (tests/unit/test_helm_render.py); the
router's own settings and routing-table models parse what the chart writes for
them; the autoscaling targets equal scripts/capacity.py's output.
"""

from __future__ import annotations

import os
import re
from typing import Any

import helm_python
import pytest
import yaml

import inferline_edge.tenants as edge_tenants
from inferline_edge.resources import ROUTER_HEALTH_INTERVAL_S
from router.pipeline.routing import RoutingTable
from router.settings import Settings
from scripts import capacity
from tests.unit.test_helm_render import (
    CHART,
    VARIANTS,
    Doc,
    configmap_data,
    merge,
    named,
    network_policy_for,
    notes,
    of_kind,
    pod_templates,
    render,
    rendered,
    template_labels,
    validate,
)

ALL = list(VARIANTS)
FULL = "inf-inferline"


@pytest.mark.parametrize("variant", ALL)
def test_every_manifest_validates_against_pinned_schemas(variant: str) -> None:
    docs = rendered(variant)
    for doc in docs:
        validate(doc)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceAccount",
    } <= kinds
    assert ("PrometheusRule" in kinds) == bool(
        merge(yaml.safe_load((CHART / "values.yaml").read_text()), VARIANTS[variant])["monitoring"][
            "enabled"
        ]
    )


def test_workloads_per_values_file() -> None:
    def deployments(variant: str) -> set[str]:
        return {d["metadata"]["name"] for d in of_kind(rendered(variant), "Deployment")}

    base = {f"{FULL}-router", f"{FULL}-edge", f"{FULL}-ratelimit", f"{FULL}-triton-cpu"}
    assert deployments("default") == base
    assert deployments("gpu") == base | {f"{FULL}-triton-gpu"}
    assert deployments("dedicated") == base | {f"{FULL}-triton-payments"}
    # Redis is never part of this release: "bundled-redis" points at a
    # side-by-side bitnami/redis release instead.
    assert of_kind(rendered("bundled-redis"), "StatefulSet") == []


def test_gpu_pool_requests_gpus_on_gpu_nodes() -> None:
    pod = named(rendered("gpu"), "Deployment", f"{FULL}-triton-gpu")["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["runtimeClassName"] == "nvidia"
    assert "--load-model=ranker" in triton["args"]
    assert "--allow-gpu-metrics=true" in triton["args"]
    # The GPU pool loads each model's configs/gpu.pbtxt (KIND_GPU), not the
    # CPU config the shared repository's config.pbtxt holds.
    assert "--model-config-name=gpu" in triton["args"]
    cpu = named(rendered("gpu"), "Deployment", f"{FULL}-triton-cpu")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert not any(a.startswith("--model-config-name") for a in cpu["containers"][0]["args"])


def _triton_args(variant: str, pool: str) -> list[str]:
    dep = named(rendered(variant), "Deployment", f"{FULL}-triton-{pool}")
    args: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_triton_model_control_probes_and_repository() -> None:
    args = _triton_args("default", "cpu")
    assert "--model-control-mode=explicit" in args
    assert {"--load-model=fraud", "--load-model=ranker"} <= set(args)
    assert "--model-repository=/artifacts/model_repository" in args
    c = named(rendered("default"), "Deployment", f"{FULL}-triton-cpu")["spec"]["template"]["spec"]
    triton = c["containers"][0]
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Model loading plus warmup: ten minutes before the kubelet gives up.
    assert (
        triton["startupProbe"]["periodSeconds"] * triton["startupProbe"]["failureThreshold"] == 600
    )
    sync = c["initContainers"][0]
    assert sync["name"] == "model-sync"
    assert "--include=model_repository/fraud/**" in sync["args"]
    # A PVC instead of object storage: no init container, a read-only claim.
    pvc = render({"modelRepository": {"source": "pvc", "pvc": {"claimName": "models"}}})
    pod = named(pvc, "Deployment", f"{FULL}-triton-cpu")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    vol = next(v for v in pod["volumes"] if v["name"] == "artifacts")
    assert vol["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_dedicated_pool_is_isolated_and_routed() -> None:
    docs = rendered("dedicated")
    name = f"{FULL}-triton-payments"
    pod = named(docs, "Deployment", name)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"inferline.io/tenant": "payments"}
    assert pod["containers"][0]["args"].count("--load-model=fraud") == 1
    svc = named(docs, "Service", name)
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    table = yaml.safe_load(configmap_data(docs, f"{FULL}-router-routing", "routing.yaml"))
    assert table["pools"] == {
        "payments": {"grpc": f"{name}:{ports['grpc']}", "http": f"{name}:{ports['http']}"}
    }
    assert table["tenants"]["payments"]["isolation"] == "dedicated"
    assert table["tenants"]["payments"]["pool"] == "payments"
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"):
        assert named(docs, kind, name)


@pytest.mark.parametrize("variant", ALL)
def test_routing_table_parses_with_the_routers_model(variant: str) -> None:
    docs = rendered(variant)
    table = RoutingTable.model_validate(
        yaml.safe_load(configmap_data(docs, f"{FULL}-router-routing", "routing.yaml"))
    )
    services = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    for pool in table.pools.values():
        host, port = pool.grpc.rsplit(":", 1)
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}


@pytest.mark.parametrize("variant", ALL)
def test_router_env_parses_with_the_routers_settings(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = rendered(variant)
    env = named(docs, "ConfigMap", f"{FULL}-router-env")["data"]
    for key in [k for k in __import__("os").environ if k.startswith("INFERLINE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.server.host == "0.0.0.0"
    assert s.triton.url == f"{FULL}-triton-cpu:8001"
    assert s.triton.http_url == f"{FULL}-triton-cpu:8000"
    tls = variant != "plaintext-probe"
    assert (s.tls.cert_file is not None) is tls
    assert s.auth.mode == ("edge" if tls else "header")
    assert str(s.routing.table_path) == "/etc/inferline/routing/routing.yaml"
    assert (s.metrics.enabled, s.metrics.host, s.metrics.port) == (True, "0.0.0.0", 9464)
    assert s.server.workers == 1  # the HPA and capacity model count one process per pod
    assert (s.server.port, s.server.bridge_port) == (50051, 50052)  # Predict fast lane on
    # Shutdown: Envoy's health checks (every 0.5 s) see NOT_SERVING before the
    # router stops accepting, and the kubelet waits out preStop + drain + grace.
    assert s.server.drain_s >= 3 * ROUTER_HEALTH_INTERVAL_S
    pod = named(docs, "Deployment", f"{FULL}-router")["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    budget = pre_stop + s.server.drain_s + s.server.grace_period_s
    assert pod["terminationGracePeriodSeconds"] > budget


def test_the_edge_drains_gracefully_before_envoy_is_signalled() -> None:
    """SIGTERM closes Envoy's listeners at once; the drainer's preStop starts
    the graceful drain over Envoy's loopback admin API, and Envoy's own preStop
    waits the same drain time, all within the grace period."""
    pod = named(rendered("default"), "Deployment", f"{FULL}-edge")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"envoy", "drainer"}
    args = containers["envoy"]["args"]
    drain_s = int(next(a for a in args if a.startswith("--drain-time-s=")).split("=")[1])
    assert containers["envoy"]["lifecycle"]["preStop"]["sleep"]["seconds"] == drain_s
    hook = containers["drainer"]["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:4] == ["python", "-m", "inferline_edge.drain", "now"]
    assert "--admin=127.0.0.1:9901" in hook and f"--hold={drain_s}" in hook
    assert pod["terminationGracePeriodSeconds"] > drain_s
    sc = containers["drainer"]["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False


def test_feast_and_edge_config() -> None:
    feast = yaml.safe_load(
        configmap_data(rendered("default"), f"{FULL}-router-feast", "feature_store.yaml")
    )
    assert feast["online_store"] == {
        "type": "redis",
        "redis_type": "redis_cluster",
        "connection_string": "redis-features.data.svc.cluster.local:6379",
    }
    bundled = yaml.safe_load(
        configmap_data(rendered("bundled-redis"), f"{FULL}-router-feast", "feature_store.yaml")
    )
    assert bundled["online_store"]["redis_type"] == "redis"
    assert bundled["online_store"]["connection_string"] == (
        "inf-redis-master:6379,password=${INFERLINE_REDIS_PASSWORD}"
    )
    router = named(rendered("bundled-redis"), "Deployment", f"{FULL}-router")
    env = router["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["valueFrom"]["secretKeyRef"] == {"name": "inf-redis", "key": "redis-password"}
    # The rate-limit service authenticates to that Redis too (else every quota
    # call is refused and quotas fail open), the password never on its argv.
    rls = named(rendered("bundled-redis"), "Deployment", f"{FULL}-ratelimit")
    (c,) = rls["spec"]["template"]["spec"]["containers"]
    (password,) = [e for e in c["env"] if e["name"] == "INFERLINE_RATELIMIT_REDIS_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "inf-redis", "key": "redis-password"}
    assert "--redis-password-env=INFERLINE_RATELIMIT_REDIS_PASSWORD" in c["args"]
    plain = named(rendered("default"), "Deployment", f"{FULL}-ratelimit")
    (c,) = plain["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith("--redis-password-env") for a in c["args"])
    cfg = edge_tenants.parse(
        configmap_data(rendered("default"), f"{FULL}-edge-tenants", "tenants.yaml")
    )
    assert set(cfg.tenants) == {"demo", "payments", "feed"}


def _xds_args(docs: tuple[Doc, ...]) -> dict[str, str]:
    """The xDS control plane's `--flag=value` arguments (edge pod, native sidecar)."""
    pod = named(docs, "Deployment", f"{FULL}-edge")["spec"]["template"]["spec"]
    (xds,) = [c for c in pod["initContainers"] if c["name"] == "xds"]
    return dict(a.removeprefix("--").partition("=")[::2] for a in xds["args"])


@pytest.mark.parametrize(
    ("override", "port", "app_protocol"),
    [
        ({}, 50052, "https"),
        ({"router": {"bridgePort": 50060}}, 50060, "https"),
        (VARIANTS["plaintext-probe"], 50052, "http"),
        ({"router": {"bridgePort": None}}, None, None),
    ],
)
def test_predict_fast_lane_is_wired_from_edge_to_router(
    override: dict[str, Any],
    port: int | None,
    app_protocol: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """router.bridgePort (on by default): the router listens on it, its Service and
    NetworkPolicy open it to the edge alone, and the control plane sends Predict
    there (`--bridge`). null: no trace of it, Predict stays on `--upstream` (gRPC)."""
    docs = tuple(render(override))
    for doc in docs:
        validate(doc)
    env = named(docs, "ConfigMap", f"{FULL}-router-env")["data"]
    for key in [k for k in os.environ if k.startswith("INFERLINE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings().server.bridge_port == port
    dep = named(docs, "Deployment", f"{FULL}-router")
    (router,) = dep["spec"]["template"]["spec"]["containers"]
    container = {p["name"]: p["containerPort"] for p in router["ports"]}
    svc = named(docs, "Service", f"{FULL}-router")
    service = {p["name"]: p for p in svc["spec"]["ports"]}
    policy = network_policy_for(docs, template_labels(docs, "Deployment", f"{FULL}-router"))
    # The gRPC rule (edge pods only, test_router_is_reachable_only_from_envoy)
    # admits the fast lane too; no other rule does.
    (edge_rule,) = [
        r for r in policy["spec"]["ingress"] if {"port": 50051, "protocol": "TCP"} in r["ports"]
    ]
    other_ports = [
        p["port"] for r in policy["spec"]["ingress"] if r is not edge_rule for p in r["ports"]
    ]
    args = _xds_args(docs)
    assert args["upstream"] == f"{svc['metadata']['name']}:{service['grpc']['port']}"
    if port is None:
        assert "INFERLINE_SERVER__BRIDGE_PORT" not in env
        assert "bridge" not in container and "bridge" not in service
        assert edge_rule["ports"] == [{"port": 50051, "protocol": "TCP"}]
        assert "bridge" not in args
        return
    assert env["INFERLINE_SERVER__BRIDGE_PORT"] == str(port)
    assert container["bridge"] == port
    assert service["bridge"] == {
        "name": "bridge",
        "port": port,
        "targetPort": "bridge",
        "protocol": "TCP",
        "appProtocol": app_protocol,
    }
    assert edge_rule["ports"] == [
        {"port": 50051, "protocol": "TCP"},
        {"port": port, "protocol": "TCP"},
    ]
    assert port not in other_ports
    # Envoy resolves the headless Service (every router pod) on the fast-lane port.
    assert args["bridge"] == f"{svc['metadata']['name']}:{port}"


def test_hpas_follow_the_capacity_model() -> None:
    docs = rendered("default")
    hpa = named(docs, "HorizontalPodAutoscaler", f"{FULL}-router")["spec"]
    want = capacity.hpa_values(capacity.Inputs.load())["router"]
    assert hpa["minReplicas"] == want["minReplicas"]
    assert hpa["maxReplicas"] == want["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == "inferline_inflight_requests"
    assert metric["pods"]["target"] == {
        "type": "AverageValue",
        "averageValue": want["targetInflightPerPod"],
    }
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    env = named(docs, "ConfigMap", f"{FULL}-router-env")["data"]
    assert env["INFERLINE_LIMITS__MAX_IN_FLIGHT"] == str(want["maxInFlight"])
    triton = named(docs, "HorizontalPodAutoscaler", f"{FULL}-triton-cpu")["spec"]
    assert triton["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_time_avg_us"
    plan = capacity.plan_region(capacity.Inputs.load(), 10_000).tier("triton-cpu")
    assert triton["maxReplicas"] == plan.ceiling


def _annotation(docs: list[Doc] | tuple[Doc, ...], name: str, key: str) -> str | None:
    tpl = named(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    value: str | None = tpl.get(key)
    return value


def test_config_changes_roll_exactly_the_pods_that_need_it() -> None:
    base = rendered("default")
    setting = render({"router": {"settings": {"limits": {"max_in_flight": 256}}}})
    key = "checksum/config"
    assert _annotation(setting, f"{FULL}-router", key) != _annotation(base, f"{FULL}-router", key)
    assert _annotation(setting, f"{FULL}-triton-cpu", key) == _annotation(
        base, f"{FULL}-triton-cpu", key
    )
    # The routing table is hot-reloaded: an alias move does not restart routers...
    alias = {"routing": {"models": {"fraud": {"aliases": {"prod": 2}}}}}
    moved = render(alias)
    assert _annotation(moved, f"{FULL}-router", key) == _annotation(base, f"{FULL}-router", key)
    assert _annotation(moved, f"{FULL}-router", "checksum/routing") is None
    # ...unless asked to.
    rolled = render(merge(alias, {"routing": {"rollOnChange": True}}))
    table = configmap_data(rolled, f"{FULL}-router-routing", "routing.yaml")
    assert "prod: 2" in table
    assert _annotation(rolled, f"{FULL}-router", "checksum/routing")
    bootstrap = render({"edge": {"envoy": {"maxHeapBytes": 1 << 29}}})
    assert _annotation(bootstrap, f"{FULL}-edge", key) != _annotation(base, f"{FULL}-edge", key)
    secret = render({"tls": {"routerSecret": "router-tls-2027"}})
    assert _annotation(secret, f"{FULL}-router", "checksum/secret-refs") != _annotation(
        base, f"{FULL}-router", "checksum/secret-refs"
    )
    triton = render({"triton": {"exitTimeoutSeconds": 45}})
    assert _annotation(triton, f"{FULL}-triton-cpu", key) != _annotation(
        base, f"{FULL}-triton-cpu", key
    )


def test_router_probes() -> None:
    c = named(rendered("default"), "Deployment", f"{FULL}-router")["spec"]["template"]["spec"]
    router = c["containers"][0]
    cmd = router["readinessProbe"]["exec"]["command"]
    assert cmd[0] == "/usr/local/bin/grpc_health_probe" and "-tls" in cmd
    assert router["livenessProbe"] == {
        "tcpSocket": {"port": "grpc"},
        "periodSeconds": 10,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    native = named(rendered("plaintext-probe"), "Deployment", f"{FULL}-router")
    probe = native["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["grpc"] == {"port": 50051}
    startup = router["startupProbe"]
    # The router opens its port only once Triton is ready: outlast that wait.
    assert startup["periodSeconds"] * startup["failureThreshold"] > 120


def test_burn_rate_alerts() -> None:
    group, quality = of_kind(rendered("gpu"), "PrometheusRule")[0]["spec"]["groups"]
    assert {r.get("alert") for r in quality["rules"]} >= {
        "InferlineFeatureDrift",
        "InferlineSchemaMismatch",
        "InferlineDegradedAnswersHigh",
    }
    records = {r["record"]: r["expr"] for r in group["rules"] if "record" in r}
    alerts = {r["alert"]: r for r in group["rules"] if "alert" in r}
    # Ratios are recorded before any alert reads them (same group, in order).
    kinds = ["record" in r for r in group["rules"]]
    assert kinds == sorted(kinds, reverse=True)
    expected = {  # name: (long window, short window, burn factor, severity)
        "InferlineErrorBudgetBurnPage1h": ("1h", "5m", "14.4", "page"),
        "InferlineErrorBudgetBurnPage6h": ("6h", "30m", "6", "page"),
        "InferlineErrorBudgetBurnTicket1d": ("1d", "2h", "3", "ticket"),
        "InferlineErrorBudgetBurnTicket3d": ("3d", "6h", "1", "ticket"),
    }
    assert set(alerts) == set(expected)
    for name, (long, short, factor, severity) in expected.items():
        expr = " ".join(alerts[name]["expr"].split())
        threshold = f"({factor} * (1 - 0.999))"
        assert expr == (
            f"inferline:slo_errors:ratio_rate{long} > {threshold} and "
            f"inferline:slo_errors:ratio_rate{short} > {threshold}"
        ), name
        assert alerts[name]["labels"]["severity"] == severity
        for window in (long, short):
            assert f"[{window}]" in records[f"inferline:slo_errors:ratio_rate{window}"]
    assert "monitoring.coreos.com" not in str(rendered("default"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"images": {"triton": {"tag": "latest"}}}, "images/triton/tag"),
        ({"router": {"replicas": 3}}, "additional properties 'replicas'"),
        ({"router": {"settings": {"server": {"host": "1.2.3.4"}}}}, "invalid propertyName 'host'"),
        ({"router": {"settings": {"server": {"workers": 2}}}}, "invalid propertyName 'workers'"),
        (
            {"router": {"settings": {"server": {"bridge_port": 1}}}},
            "invalid propertyName 'bridge_port'",
        ),
        ({"router": {"bridgePort": 0}}, "/router/bridgePort"),
        ({"router": {"bridgePort": "50052"}}, "/router/bridgePort"),
        ({"router": {"bridgePort": 50051}}, "needs a port of its own"),
        ({"router": {"bridgePort": 9464}}, "needs a port of its own"),
        ({"router": {"settings": {"metrics": {"port": 1}}}}, "invalid propertyName 'metrics'"),
        ({"routing": {"tenants": {"demo": {"model": ["fraud"]}}}}, "additional properties 'model'"),
        ({"securityContext": {"container": {"readOnlyRootFilesystem": False}}}, "must be true"),
        ({"router": {"probes": {"readinessMode": "grpc"}}}, "plaintext only"),
        (
            {"routing": {"tenants": {"feed": {"models": ["ranker"], "pool": "gpu"}}}},
            "no such Triton pool",
        ),
        (
            {"routing": {"tenants": {"feed": {"models": ["ranker"], "isolation": "dedicated"}}}},
            "needs its own pool",
        ),
        (
            {"edge": {"tenants": {"zz": {"rate_limit": {"requests_per_second": 1, "burst": 1}}}}},
            "not in routing.tenants",
        ),
        (
            {"dedicatedPools": [{"name": "acme", "kind": "cpu", "tenants": ["feed"]}]},
            "needs isolation: dedicated and pool: acme",
        ),
    ],
)
def test_invalid_values_fail_the_render(override: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        render(override)


def test_chart_has_no_subcharts_so_helm_needs_no_network() -> None:
    assert helm_python.dependency_list(CHART) == []
    assert not (CHART / "charts").exists()
    assert not any(d["kind"] == "StatefulSet" for d in rendered("default"))


def test_notes_list_pools_and_adapter_metrics() -> None:
    text = notes(VARIANTS["dedicated"])
    assert "payments (dedicated: payments): inf-inferline-triton-payments models fraud" in text
    assert "inferline_inflight_requests" in text and "triton_queue_time_avg_us" in text


def test_notes_name_the_fast_lane_when_on() -> None:
    assert "Router fast lane:     inf-inferline-router:50052" in notes(None)
    assert "fast lane" not in notes({"router": {"bridgePort": None}})


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        return [p for k, v in tree.items() for p in _leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_documented() -> None:
    """bitnami readme-generator style: a `## @param` for every leaf (or its object)."""
    text = (CHART / "values.yaml").read_text()
    params = set(re.findall(r"^\s*## @param ([\w.\-]+)", text, flags=re.M))
    values = yaml.safe_load(text)
    missing = [
        leaf
        for leaf in _leaves(values)
        if not any(leaf == p or leaf.startswith(p + ".") for p in params)
    ]
    assert missing == []
    stale = [
        p
        for p in params
        if p not in _leaves(values)
        and not any(leaf.startswith(p + ".") for leaf in _leaves(values))
    ]
    assert stale == []
    readme = (CHART / "README.md").read_text()
    assert [p for p in params if f"`{p}`" not in readme] == []
    # The README's Value column says what values.yaml holds (it once advertised
    # 6 to 75 router replicas for a chart that scaled 3 to 44).
    wrong = []
    for m in re.finditer(r"^\|\s*`([\w.\-]+)`\s*\|.*\|\s*`(.*)`\s*\|\s*$", readme, re.M):
        value: Any = values
        for part in m.group(1).split("."):
            value = value[part]
        if isinstance(value, dict | list):
            continue
        if isinstance(value, bool):
            want = str(value).lower()
        else:  # not a dict lookup: 1 == True would read as "true"
            want = "nil" if value is None else '""' if value == "" else str(value)
        if m.group(2) != want and not (isinstance(value, float) and float(m.group(2)) == value):
            wrong.append((m.group(1), want, m.group(2)))
    assert wrong == []


@pytest.mark.parametrize("variant", ["default", "gpu", "dedicated", "exclusive-cores"])
def test_helm_lint_strict(variant: str) -> None:
    report = helm_python.lint(
        CHART, VARIANTS[variant] or None, strict=True, kube_version="v1.31.0", with_subcharts=False
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_image_pull_secrets_reach_every_pod() -> None:
    pods = [t["spec"] for _, t in pod_templates(rendered("bundled-redis"))]
    assert len(pods) == 4  # router, edge, rate-limit service, Triton CPU pool
    assert all(p["imagePullSecrets"] == [{"name": "regcred"}] for p in pods)
    assert all("imagePullSecrets" not in t["spec"] for _, t in pod_templates(rendered("default")))


def _env(doc: Doc) -> dict[str, Any]:
    c = doc["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def test_allocator_env_per_component() -> None:
    """router.allocator / triton.allocator: the variables scripts/allocator.py sets."""
    from scripts.allocator import allocator_env

    lib = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    router = _env(named(rendered("default"), "Deployment", f"{FULL}-router"))
    # Any existing file stands in for the library: the chart uses jemallocPath.
    jemalloc = allocator_env("jemalloc", candidates=[CHART / "Chart.yaml"]) | {"LD_PRELOAD": lib}
    assert {k: router[k] for k in jemalloc} == jemalloc
    triton = _env(named(rendered("default"), "Deployment", f"{FULL}-triton-cpu"))
    assert not {"LD_PRELOAD", "PYTHONMALLOC", "GLIBC_TUNABLES"} & set(triton)  # system

    docs = render(
        {
            "router": {"allocator": "system", "extraEnv": [{"name": "X", "value": "1"}]},
            "triton": {"allocator": "hugepages"},
            "jemallocPath": "/opt/lib/libjemalloc.so.2",
        }
    )
    router = _env(named(docs, "Deployment", f"{FULL}-router"))
    assert router == {"X": "1"}
    triton = _env(named(docs, "Deployment", f"{FULL}-triton-cpu"))
    assert triton["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and "LD_PRELOAD" not in triton
    docs = render(
        {"triton": {"allocator": "jemalloc"}, "jemallocPath": "/opt/lib/libjemalloc.so.2"}
    )
    assert _env(named(docs, "Deployment", f"{FULL}-triton-cpu"))["LD_PRELOAD"] == (
        "/opt/lib/libjemalloc.so.2"
    )
    with pytest.raises(Exception, match="allocator"):
        render({"router": {"allocator": "tcmalloc"}})


_UNITS = {
    "m": 1e-3,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
}


def _quantity(value: str | int | float) -> float:
    text = str(value)
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _UNITS[suffix]
    return float(text)


def qos_class(pod: Doc) -> str:
    """The QoS class Kubernetes gives this pod spec: init containers count, and a
    request left unset defaults to its limit."""
    every = [*pod.get("initContainers", []), *pod["containers"]]
    guaranteed, any_set = True, False
    for c in every:
        limits = c.get("resources", {}).get("limits", {})
        requests = {**limits, **c.get("resources", {}).get("requests", {})}
        for resource in ("cpu", "memory"):
            any_set = any_set or resource in limits or resource in requests
            if resource not in limits or _quantity(requests[resource]) != _quantity(
                limits[resource]
            ):
                guaranteed = False
    return "Guaranteed" if guaranteed else "Burstable" if any_set else "BestEffort"


def test_qos_class_follows_kubernetes_rules() -> None:
    def pod(*resources: Doc, init: Doc | None = None) -> Doc:
        spec: Doc = {"containers": [{"resources": r} for r in resources]}
        if init is not None:
            spec["initContainers"] = [{"resources": init}]
        return spec

    whole = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": 1, "memory": "1024Mi"}}
    assert qos_class(pod(whole)) == "Guaranteed"
    assert qos_class(pod({"limits": {"cpu": "500m", "memory": "1Gi"}})) == "Guaranteed"
    assert qos_class(pod(whole, {})) == "Burstable"
    assert qos_class(pod(whole, init={"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}})) == (
        "Burstable"
    )
    assert qos_class(pod({}, {})) == "BestEffort"


def test_triton_pods_are_guaranteed_and_routers_in_the_exclusive_cores_profile() -> None:
    """Triton pods and, in the latency profile (ci/values-exclusive-cores.yaml),
    routers get whole CPUs with requests equal to limits, init containers
    included: Guaranteed pods, which the static CPU manager gives exclusive
    cores. The default router stays Burstable (1 CPU requested, 2 allowed)."""

    def pod(variant: str, name: str) -> Doc:
        dep = named(rendered(variant), "Deployment", f"{FULL}-{name}")
        spec: Doc = dep["spec"]["template"]["spec"]
        return spec

    assert pod("default", "router").get("initContainers"), "the artifacts sync init container"
    assert qos_class(pod("default", "router")) == "Burstable"
    assert qos_class(pod("default", "triton-cpu")) == "Guaranteed"
    assert qos_class(pod("gpu", "triton-gpu")) == "Guaranteed"
    router = pod("exclusive-cores", "router")
    assert qos_class(router) == "Guaranteed"
    cpu = _quantity(router["containers"][0]["resources"]["limits"]["cpu"])
    assert cpu == int(cpu) >= 1  # whole CPUs: only those are made exclusive
