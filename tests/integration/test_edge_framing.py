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
