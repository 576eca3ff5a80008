"""Helpers for the chart tests: render with Helm's own engine, validate against pinned schemas.

Rendering uses helm-python-sdk, which bundles Helm's Go SDK (v4) as a shared
library: the real template engine and values.schema.json check, no network, no
cluster, ~30 ms a render. Manifests are validated against the Kubernetes 1.31
OpenAPI schemas shipped by kubernetes-validate (strict: unknown fields fail), and
prometheus-operator resources against the CRD schemas vendored in
tests/unit/test_helm_crds/ (prometheus-operator v0.93.0).

This module holds no tests; it is named test_helm_* so it sits with them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "inferline"
K8S_VERSION = "1.31.0"
CRD_DIR = Path(__file__).resolve().parent / "test_helm_crds"
RELEASE = "inf"
NAMESPACE = "ml"

Doc = dict[str, Any]
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def values_file(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / name).read_text()) or {}
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge like Helm's values coalescing (maps merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# The three values files the issue asks for, the latency profile, plus two that exercise the other
# branches: the kubelet's native gRPC probe (plaintext router) and the bundled
# Redis subchart with the chart's own NetworkPolicy for it.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": values_file("ci/values-gpu.yaml"),
    "dedicated": values_file("ci/values-dedicated.yaml"),
    "exclusive-cores": values_file("ci/values-exclusive-cores.yaml"),
    "plaintext-probe": {
        "router": {
            "tls": {"enabled": False},
            "probes": {"readinessMode": "grpc"},
            "settings": {"auth": {"mode": "header"}},
        },
    },
    "bundled-redis": {
        "redis": {"enabled": True},
        "monitoring": {"enabled": True},
        "global": {"imagePullSecrets": ["regcred"]},
    },
}


def render_raw(values: dict[str, Any] | None) -> dict[str, str]:
    with helm_python.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def render(values: dict[str, Any] | None) -> list[Doc]:
    """Every manifest the chart renders for these values (NOTES.txt excluded)."""
    docs: list[Doc] = []
    for path, text in sorted(render_raw(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                docs.append(doc)
    return docs


@cache
def rendered(variant: str) -> tuple[Doc, ...]:
    return tuple(render(VARIANTS[variant]))


def notes(values: dict[str, Any] | None) -> str:
    raw = render_raw(values)
    return next(text for path, text in raw.items() if path.endswith("NOTES.txt"))


@cache
def _crd_validator(kind: str) -> jsonschema.Draft7Validator:
    """The CRD's openAPIV3Schema as JSON Schema. Not meta-checked: a few of its
    patterns are Go regexes (inline flags) that Python rejects until used."""
    data = json.loads((CRD_DIR / f"{kind.lower()}-v1.json").read_text())
    return jsonschema.Draft7Validator(data["schema"])


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would silently prune (unknown to a structural CRD schema):
    a typo there is dropped config, not an error, so the tests make it one."""
    out: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        for key, sub in value.items():
            if key in props:
                out += pruned_fields(sub, props[key], f"{path}.{key}")
            elif not (
                schema.get("additionalProperties")
                or schema.get("x-kubernetes-preserve-unknown-fields")
            ):
                out.append(f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += pruned_fields(item, schema["items"], f"{path}[{i}]")
    return out


def validate(doc: Doc) -> None:
    """Raise on a manifest that the pinned API schema rejects."""
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        validator = _crd_validator(doc["kind"])
        validator.validate(doc)
        schema: dict[str, Any] = dict(validator.schema)  # type: ignore[arg-type]
        unknown = pruned_fields({k: v for k, v in doc.items() if k != "metadata"}, schema)
        if unknown:
            raise jsonschema.ValidationError(f"fields unknown to the CRD: {unknown}")
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def of_kind(docs: tuple[Doc, ...] | list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: tuple[Doc, ...] | list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def ours(doc: Doc) -> bool:
    """Rendered by this chart (not by the bundled subchart)."""
    labels: dict[str, str] = doc["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/part-of") == "inferline"


def pod_templates(docs: tuple[Doc, ...] | list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) for every workload."""
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield d, d["spec"]["template"]


def containers(pod_spec: Doc) -> Iterator[tuple[Doc, bool]]:
    """(container, long_running): init containers run to completion unless they are
    native sidecars (restartPolicy: Always)."""
    for c in pod_spec.get("initContainers", []):
        yield c, c.get("restartPolicy") == "Always"
    for c in pod_spec["containers"]:
        yield c, True


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def configmap_data(docs: tuple[Doc, ...] | list[Doc], name: str, key: str) -> str:
    value: str = named(docs, "ConfigMap", name)["data"][key]
    return value


def network_policy_for(docs: tuple[Doc, ...], labels: dict[str, str]) -> Doc:
    policies = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if selects(p["spec"]["podSelector"]["matchLabels"], labels)
    ]
    assert len(policies) == 1, labels
    return policies[0]


def template_labels(docs: tuple[Doc, ...], kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = named(docs, kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels
