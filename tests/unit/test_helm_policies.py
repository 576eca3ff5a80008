"""The chart's pod and network policies: hardened pods, a disruption budget per
workload, and ingress only from each server's own clients.

Rendered offline for every values variant (tests/unit/test_helm_render.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.test_helm_render import (
    VARIANTS,
    Doc,
    containers,
    network_policy_for,
    of_kind,
    ours,
    pod_templates,
    rendered,
    selects,
    template_labels,
)

ALL = list(VARIANTS)
FULL = "inf-inferline"


def _effective(pod: Doc, container: Doc, key: str) -> Any:
    return container.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


@pytest.mark.parametrize("variant", ALL)
def test_pod_policies(variant: str) -> None:
    """Non-root, read-only, no capabilities, seccomp, pinned images, resources, probes."""
    checked = 0
    for workload, template in pod_templates(rendered(variant)):
        pod = template["spec"]
        where = workload["metadata"]["name"]
        if ours(workload):
            assert pod["automountServiceAccountToken"] is False, where
            assert "checksum/config" in template["metadata"]["annotations"], where
            assert "checksum/secret-refs" in template["metadata"]["annotations"], where
            zones = [t["topologyKey"] for t in pod["topologySpreadConstraints"]]
            assert "topology.kubernetes.io/zone" in zones, where
        for c, long_running in containers(pod):
            at = f"{where}/{c['name']}"
            assert _effective(pod, c, "runAsNonRoot") is True, at
            assert (_effective(pod, c, "runAsUser") or 1) > 0, at
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, at
            assert sc["readOnlyRootFilesystem"] is True, at
            assert "ALL" in sc["capabilities"]["drop"], at
            assert (_effective(pod, c, "seccompProfile") or {}).get("type") == "RuntimeDefault", at
            image = c["image"]
            assert "@sha256:" in image or re.search(r":[\w][\w.-]*$", image.rsplit("/", 1)[-1]), at
            assert not image.endswith(":latest"), at
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{at} {kind}"
            if long_running:
                assert "readinessProbe" in c and "livenessProbe" in c, at
            checked += 1
    assert checked >= 7


@pytest.mark.parametrize("variant", ALL)
def test_every_workload_has_a_pdb(variant: str) -> None:
    docs = rendered(variant)
    pdbs = of_kind(docs, "PodDisruptionBudget")
    for workload, template in pod_templates(docs):
        if ours(workload):
            labels = template["metadata"]["labels"]
            assert any(selects(p["spec"]["selector"]["matchLabels"], labels) for p in pdbs), (
                workload["metadata"]["name"]
            )


@pytest.mark.parametrize("variant", ALL)
def test_router_is_reachable_only_from_envoy(variant: str) -> None:
    docs = rendered(variant)
    router = template_labels(docs, "Deployment", f"{FULL}-router")
    envoy = template_labels(docs, "Deployment", f"{FULL}-edge")
    policy = network_policy_for(docs, router)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    grpc_rules = [
        r for r in policy["spec"]["ingress"] if {"port": 50051, "protocol": "TCP"} in r["ports"]
    ]
    assert len(grpc_rules) == 1
    (peer,) = grpc_rules[0]["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector, no ipBlock
    assert selects(peer["podSelector"]["matchLabels"], envoy)
    for other in ("Deployment",):
        for d in of_kind(docs, other):
            if d["metadata"]["name"] != f"{FULL}-edge":
                labels = d["spec"]["template"]["metadata"]["labels"]
                assert not selects(peer["podSelector"]["matchLabels"], labels), d["metadata"]
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from") and rule.get("ports"), "no allow-all rule"
        if rule is not grpc_rules[0]:
            assert rule["ports"] == [{"port": 9464, "protocol": "TCP"}]


@pytest.mark.parametrize("variant", ALL)
def test_triton_and_redis_admit_only_their_clients(variant: str) -> None:
    docs = rendered(variant)
    router = template_labels(docs, "Deployment", f"{FULL}-router")
    ratelimit = template_labels(docs, "Deployment", f"{FULL}-ratelimit")
    for dep in of_kind(docs, "Deployment"):
        if dep["metadata"]["name"].startswith(f"{FULL}-triton-"):
            policy = network_policy_for(docs, dep["spec"]["template"]["metadata"]["labels"])
            serving = [
                r
                for r in policy["spec"]["ingress"]
                if {"port": 8000, "protocol": "TCP"} in r["ports"]
            ]
            assert [p["podSelector"]["matchLabels"] for p in serving[0]["from"]] == [
                {k: router[k] for k in serving[0]["from"][0]["podSelector"]["matchLabels"]}
            ]
    redis = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == f"{FULL}-redis"]
    assert bool(redis) == (variant == "bundled-redis")
    if redis:
        peers = [p["podSelector"]["matchLabels"] for p in redis[0]["spec"]["ingress"][0]["from"]]
        assert any(selects(p, router) for p in peers) and any(selects(p, ratelimit) for p in peers)
        # Selects the side-by-side bitnami/redis release's pods (`<release>-redis`).
        assert redis[0]["spec"]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "redis",
            "app.kubernetes.io/instance": "inf-redis",
        }
        assert len(peers) == 3  # router, rate-limit service, Redis itself (replication)
