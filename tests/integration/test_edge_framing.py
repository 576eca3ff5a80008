"""Both framings of bench.edge_framing on real Envoys: a gRPC caller gets the
upstream's message and status OK through each, so the benchmark compares two
working paths (the edge's own path is tests/integration/test_fastlane.py)."""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path

import pytest

from bench import edge_framing as ef
from bench.envoy_floor import FloorEnvoy
from inferline_edge.certs import DevPKI


@pytest.mark.parametrize("variant", ef.VARIANTS)
def test_each_framing_answers_a_grpc_caller(variant: str, tmp_path: Path) -> None:
    pki = DevPKI.create(tmp_path / "pki", days=1)
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(ef.upstream(pki, 0.0))
        front = stack.enter_context(
            FloorEnvoy(tmp_path, variant, partial(ef.front_config, variant, upstream=up, pki=pki))
        )
        ef.grpc_check(front.port, pki)  # raises unless OK with the upstream's message


def test_a_short_run_measures_both_fronts_at_both_loads() -> None:
    """The whole benchmark, cut short: every variant measured at c1 and c32 with
    Envoy CPU read from /proc, and the report renders from the result."""
    import argparse

    args = argparse.Namespace(machine="test", repeats=1, requests=100, upstream_delay_ms=0.5)
    result = ef.run(args)
    for load in ("c1", "c32"):
        for variant in ef.VARIANTS:
            [only] = result["runs"][load][variant]
            assert only["envoy_us"] > 0 and only["rps"] > 0
            assert result["median"][load][variant] == only
    assert "Envoy CPU per request, gRPC over HTTP/1.1 / bridge" in ef.markdown(result)
