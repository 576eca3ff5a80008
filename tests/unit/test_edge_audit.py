"""Quota and rate-limit changes applied by the edge control plane are admin
actions: each applied change is one record on the hash-chained audit trail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

import inferline_edge.resources as resources
from inferline_edge.certs import DevPKI
from inferline_edge.xds import ControlPlane
from router.audit.cli import main as audit_cli
from router.audit.store import JsonlAuditStore

ROOT = Path(__file__).resolve().parents[2]


async def test_quota_changes_are_audited_and_chain_verifies(tmp_path: Path) -> None:
    pki = DevPKI.create(tmp_path / "pki", days=1)
    tenants = tmp_path / "tenants.yaml"
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "envoy" / "tenants.yaml").read_text())
    tenants.write_text(yaml.safe_dump(cfg))
    trail = tmp_path / "audit" / "audit.jsonl"
    store = JsonlAuditStore(trail)

    def audit(event: dict[str, Any]) -> None:
        store.append([event], 1_700_000_000.0)

    cp = ControlPlane(
        tenants,
        resources.Topology(pki=pki, mtls_port=10000, upstream=("127.0.0.1", 10001)),
        audit=audit,
    )
    assert await cp.rebuild() is not None
    assert await cp.rebuild() is not None  # nothing changed: no record

    tid = sorted(cfg["tenants"])[0]
    old = cfg["tenants"][tid].get("quota_per_minute", 0)
    cfg["tenants"][tid]["quota_per_minute"] = old + 600
    cfg["version"] = "quota-edit"
    tenants.write_text(yaml.safe_dump(cfg))
    assert await cp.rebuild() is not None

    records = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [r["action"] for r in records] == ["quota.load", "quota.change"]
    change = records[1]
    assert change["actor"] == "edge-control-plane" and change["subject"] == "tenants:quota-edit"
    assert list(change["details"]["changes"]) == [tid]
    assert change["details"]["changes"][tid]["from"]["quota_per_minute"] == old
    assert change["details"]["changes"][tid]["to"]["quota_per_minute"] == old + 600
    store.close()
    assert audit_cli(["verify", str(trail)]) == 0
