"""Certificate rotation under load through the real chain (Envoy SDS + router reload).

Leaves are re-keyed, then the CA is rolled, while traffic runs on fresh mTLS
connections through Envoy and straight to the router; no request may fail and
new handshakes must present the new certificates. Figures: bench.cert_rotation.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.cert_rotation import rotate_under_load, start_stack


@pytest.mark.slow
async def test_rotation_under_load_fails_no_request(
    demo_build: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    full, secrets = start_stack(demo_build, tmp_path_factory.mktemp("rotation"))
    first_edge = secrets.pki.edge_server.cert.read_bytes()
    await asyncio.to_thread(full.start)  # no fork after this process used gRPC
    try:
        report = await rotate_under_load(full, secrets, seconds=15, rps=40, rollover=True)
    finally:
        await asyncio.to_thread(full.stop)
    assert report.failures == {}
    assert report.ok == report.requests > 300
    assert report.connections > 60  # handshakes all through the rotation
    assert [p.name for p in report.phases] == ["leaves", "ca-rollover"]
    for phase in report.phases:
        # The new serial was seen on a handshake after the files changed, on both servers.
        assert phase.edge_new_after_s is not None, phase
        assert phase.router_new_after_s is not None, phase
        # Envoy took the new upstream client cert over SDS too (no handshake shows it).
        for name in ("edge_server_cert", "edge_client_cert"):
            assert phase.envoy_secrets_after[name] != phase.envoy_secrets_before[name], name
    leaves, rollover = report.phases
    # The successor CA reached Envoy's trust bundle before any leaf it signed.
    assert rollover.envoy_secrets_before["trusted_ca"] != leaves.envoy_secrets_after["trusted_ca"]
    assert report.phases[0].edge_serial != report.phases[1].edge_serial
    assert secrets.pki.edge_server.cert.read_bytes() != first_edge
    assert len(secrets.ca_pems) == 2  # old + successor CA trusted after the rollover
