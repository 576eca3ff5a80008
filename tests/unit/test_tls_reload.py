"""Router certificate reload: swaps only to a complete, matching set; throttled."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from inferline_edge.certs import DevPKI, issue_role
from router.errors import ConfigError
from router.settings import TlsSettings
from router.transport.tls_reload import CertReloader


@pytest.fixture
def pki(tmp_path: Path) -> DevPKI:
    return DevPKI.create(tmp_path / "pki", days=1)


def _settings(pki: DevPKI) -> TlsSettings:
    return TlsSettings(
        cert_file=pki.router.cert, key_file=pki.router.key, client_ca_file=pki.ca.cert
    )


def test_swaps_after_rotation_and_ignores_unchanged(pki: DevPKI) -> None:
    r = CertReloader(_settings(pki), interval_s=1e-9)
    first = r.current.serial
    assert r.fetch() is None  # nothing changed
    issue_role(pki.ca, pki.root / "router", "router", days=1)
    assert r.fetch() is not None
    assert r.current.serial != first
    assert r.reloads == 1
    assert r.fetch() is None


def test_half_rotated_pair_is_deferred_until_complete(pki: DevPKI, tmp_path: Path) -> None:
    r = CertReloader(_settings(pki), interval_s=1e-9)
    first = r.current.serial
    old_key = tmp_path / "old.key"
    shutil.copy(pki.router.key, old_key)
    issue_role(pki.ca, pki.root / "router", "router", days=1)
    new_key = pki.router.key.read_bytes()
    pki.router.key.write_bytes(old_key.read_bytes())  # new cert, old key: mid-rotation
    assert r.fetch() is None
    assert r.current.serial == first
    pki.router.key.write_bytes(new_key)  # the second file lands
    assert r.fetch() is not None
    assert r.current.serial != first


def test_throttled_by_interval(pki: DevPKI) -> None:
    r = CertReloader(_settings(pki), interval_s=3600.0)
    r.poll()  # consumes the first check
    issue_role(pki.ca, pki.root / "router", "router", days=1)
    assert r.fetch() is None  # next check not due yet


def test_unusable_files_at_start_are_a_config_error(pki: DevPKI) -> None:
    pki.router.key.write_bytes(pki.edge_client.key.read_bytes())
    with pytest.raises(ConfigError):
        CertReloader(_settings(pki))


def test_interval_zero_never_reloads_on_any_listener(pki: DevPKI) -> None:
    """0 means never: the gRPC port then has static credentials, and the fast
    lane, which polls on each handshake, must not swap certificates alone."""
    r = CertReloader(_settings(pki), interval_s=0.0)
    first = r.current.serial
    issue_role(pki.ca, pki.root / "router", "router", days=1)
    assert r.poll() is None and r.fetch() is None
    assert (r.current.serial, r.reloads) == (first, 0)


def test_an_encrypted_key_is_unusable_not_a_crash(pki: DevPKI) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.router.key.read_bytes(), password=None)
    good = pki.router.key.read_bytes()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    pki.router.key.write_bytes(encrypted)
    with pytest.raises(ConfigError):
        CertReloader(_settings(pki))  # at start: a config error, not a bare TypeError
    pki.router.key.write_bytes(good)
    r = CertReloader(_settings(pki), interval_s=1e-9)
    pki.router.key.write_bytes(encrypted)  # a rotation to an encrypted key: deferred
    assert r.poll() is None and r.reloads == 0
