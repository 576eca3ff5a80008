"""Edge secrets: Kubernetes-style atomic directories, pair checks, SDS rebuilds."""

from __future__ import annotations

from pathlib import Path

import pytest

import inferline_edge.resources as resources
from inferline_edge.certs import DevPKI, issue_role
from inferline_edge.common import SECRET, SECRET_SERVER
from inferline_edge.secrets import EdgeSecretFiles, export_dir, load_pair, write_secret_dir
from inferline_edge.xds import ControlPlane

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path: Path) -> DevPKI:
    return DevPKI.create(tmp_path / "pki", days=1)


def test_secret_dir_swaps_atomically_and_cleans_up(tmp_path: Path) -> None:
    d = tmp_path / "s"
    write_secret_dir(d, {"tls.crt": b"one", "tls.key": b"k1"})
    first = (d / "..data").resolve()
    write_secret_dir(d, {"tls.crt": b"two", "tls.key": b"k2"})
    assert (d / "tls.crt").read_bytes() == b"two"
    assert (d / "tls.key").read_bytes() == b"k2"
    assert (d / "tls.crt").is_symlink()
    assert not first.exists()  # the previous generation is removed
    generations = [p for p in d.iterdir() if p.name.startswith("..") and not p.is_symlink()]
    assert generations == [(d / "..data").resolve()]


def test_load_pair_rejects_mismatched_key(pki: DevPKI) -> None:
    chain, key = load_pair(pki.edge_server.cert, pki.edge_server.key)
    assert chain.startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in key
    with pytest.raises(ValueError, match="do not match"):
        load_pair(pki.edge_server.cert, pki.edge_client.key)


def _topo(pki: DevPKI, files: EdgeSecretFiles) -> resources.Topology:
    return resources.Topology(
        pki=pki, mtls_port=10000, upstream=("127.0.0.1", 10001), secrets=files
    )


async def test_rotation_on_disk_changes_only_the_secret_version(
    pki: DevPKI, tmp_path: Path
) -> None:
    files = export_dir(pki, tmp_path / "secrets")
    cp = ControlPlane(ROOT / "envoy" / "tenants.yaml", _topo(pki, files))
    first = await cp.rebuild()
    assert first is not None
    assert files.server_cert in cp.watched()
    issue_role(pki.ca, pki.root / "edge-server", "edge-server", days=1)
    write_secret_dir(
        files.server_cert.parent,
        {"tls.crt": pki.edge_server.cert.read_bytes(), "tls.key": pki.edge_server.key.read_bytes()},
    )
    second = await cp.rebuild()
    assert second is not None
    changed = {t for t in first.types if first.types[t].version != second.types[t].version}
    assert changed == {SECRET}
    assert SECRET_SERVER in second.types[SECRET].resources


async def test_half_rotated_pair_keeps_the_last_snapshot(pki: DevPKI, tmp_path: Path) -> None:
    files = export_dir(pki, tmp_path / "secrets")
    cp = ControlPlane(ROOT / "envoy" / "tenants.yaml", _topo(pki, files))
    first = await cp.rebuild()
    assert first is not None
    issue_role(pki.ca, pki.root / "edge-server", "edge-server", days=1)
    files.server_cert.unlink()  # a plain-file rotation: new cert, old key
    files.server_cert.write_bytes(pki.edge_server.cert.read_bytes())
    assert await cp.rebuild() is None
    assert cp.last_error is not None and "do not match" in cp.last_error
    assert cp.cache.snapshot is first
