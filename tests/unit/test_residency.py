"""Data residency: region pinning in the tenant table, refusals, sink destinations."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from router.errors import Code, InferlineError
from router.pipeline.auth import authenticate
from router.pipeline.residency import Residency, ResidencyDenied
from router.pipeline.routing import RoutingTable
from router.settings import RegionSettings

TABLE = RoutingTable.model_validate(
    {
        "models": {"fraud": {"versions": [1]}},
        "tenants": {
            "eu-bank": {"models": ["fraud"], "regions": ["eu-west"]},
            "twin": {"models": ["fraud"], "regions": ["eu-west", "us-east"]},
            "anywhere": {"models": ["fraud"]},
        },
    }
)


def test_authenticate_refuses_tenant_outside_its_regions() -> None:
    assert authenticate(TABLE, "eu-bank", "eu-west").tenant == "eu-bank"
    with pytest.raises(ResidencyDenied) as e:
        authenticate(TABLE, "eu-bank", "us-east")
    assert e.value.code is Code.FAILED_PRECONDITION
    assert "us-east" in e.value.public_message and "eu-bank" not in e.value.public_message
    assert authenticate(TABLE, "anywhere", "us-east").tenant == "anywhere"
    assert authenticate(TABLE, "eu-bank").tenant == "eu-bank"  # no region: no check


def test_unknown_tenant_is_still_unauthenticated_first() -> None:
    with pytest.raises(InferlineError) as e:
        authenticate(TABLE, "ghost", "eu-west")
    assert e.value.code is Code.UNAUTHENTICATED


def test_residency_object_for_sinks(tmp_path: Path) -> None:
    r = Residency("us-east", lambda: TABLE, tmp_path)
    assert r.allowed("anywhere") and r.allowed("twin")
    assert not r.allowed("eu-bank")
    assert r.allowed("eu-bank", "eu-west")
    assert not r.allowed("ghost")
    assert r.destination("twin", "captures") == tmp_path / "us-east" / "captures"
    with pytest.raises(ResidencyDenied):
        r.destination("eu-bank", "audit")
    assert r.replica_regions("eu-bank", ["us-east", "eu-west", "ap-south"]) == ["eu-west"]
    assert r.replica_regions("anywhere", ["us-east", "eu-west"]) == ["us-east", "eu-west"]


@pytest.mark.parametrize("bad", ["EU", "eu_west", "", "1eu"])
def test_region_names_validated(bad: str) -> None:
    with pytest.raises(ValidationError):
        RoutingTable.model_validate(
            {
                "models": {"fraud": {"versions": [1]}},
                "tenants": {"t": {"models": ["fraud"], "regions": [bad]}},
            }
        )
    with pytest.raises(ValidationError):
        RegionSettings(name=bad)
