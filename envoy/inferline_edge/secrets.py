"""Where the edge's TLS material comes from, and how it is rotated on disk.

Envoy never reads a certificate file: the control plane reads these files, checks
them, and serves them as SDS ``Secret`` resources in its versioned snapshot (see
``resources._secrets``). A change on disk becomes a new Secret version pushed
over the open ADS stream; Envoy applies it to new handshakes without a restart
or a listener drain, and established connections keep going.

Two layouts:
- the dev PKI directory (``certs.DevPKI``: ``edge-server.pem`` ...), and
- Kubernetes-secret directories (``--secrets-dir``): ``server/``, ``client/``
  (each a mounted ``kubernetes.io/tls`` secret: ``tls.crt``, ``tls.key``) and
  ``ca/ca.crt`` (the trust bundle; several PEM certificates during a CA rollover).

``write_secret_dir`` writes a directory the way the kubelet's atomic writer does
(new timestamped directory, ``..data`` symlink swapped by rename, file symlinks
through ``..data``), so a reader sees the old set or the new set, never a mix.
Plain files written one by one can still be seen half-rotated: ``load_pair``
refuses a certificate whose key does not match, the build fails, the last good
snapshot stays, and the next poll (after the second file lands) succeeds.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from inferline_edge.certs import DevPKI


@dataclasses.dataclass(frozen=True)
class EdgeSecretFiles:
    """Paths of the three secrets the edge serves (names in ``common.SECRET_*``)."""

    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ca: Path

    @classmethod
    def from_pki(cls, pki: DevPKI) -> EdgeSecretFiles:
        return cls(
            pki.edge_server.cert,
            pki.edge_server.key,
            pki.edge_client.cert,
            pki.edge_client.key,
            pki.ca.cert,
        )

    @classmethod
    def from_dir(cls, root: Path) -> EdgeSecretFiles:
        """Kubernetes layout: ``server/tls.{crt,key}``, ``client/tls.{crt,key}``, ``ca/ca.crt``."""
        root = Path(root)
        return cls(
            root / "server" / "tls.crt",
            root / "server" / "tls.key",
            root / "client" / "tls.crt",
            root / "client" / "tls.key",
            root / "ca" / "ca.crt",
        )

    def paths(self) -> list[Path]:
        return [self.server_cert, self.server_key, self.client_cert, self.client_key, self.ca]


def load_pair(cert: Path, key: Path) -> tuple[str, str]:
    """PEM chain and key, checked to belong together (ValueError otherwise)."""
    chain, key_pem = cert.read_bytes(), key.read_bytes()
    leaf = x509.load_pem_x509_certificate(chain)
    private = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ValueError(f"{cert.name} and {key.name} do not match (rotation in progress?)")
    return chain.decode(), key_pem.decode()


def load_bundle(path: Path) -> str:
    """PEM trust bundle with at least one certificate (ValueError otherwise)."""
    text = path.read_bytes()
    if not x509.load_pem_x509_certificates(text):
        raise ValueError(f"{path.name} holds no certificate")
    return text.decode()


def write_secret_dir(root: Path, files: Mapping[str, bytes]) -> None:
    """Replace the contents of a secret directory atomically (kubelet's scheme)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = root / time.strftime(f"..%Y_%m_%d_%H_%M_%S.{time.monotonic_ns()}")
    stamp.mkdir(mode=0o755)
    for name, data in files.items():
        target = stamp / name
        target.write_bytes(data)
        target.chmod(0o600 if name.endswith(".key") else 0o644)
    tmp_link = root / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(stamp.name)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    os.replace(tmp_link, root / "..data")  # the one atomic step
    for name in files:
        link = root / name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(Path("..data") / name)
    if old is not None and old != stamp.name:
        for f in (root / old).iterdir():
            f.unlink()
        (root / old).rmdir()


def export_dir(pki: DevPKI, root: Path) -> EdgeSecretFiles:
    """Write the dev PKI's edge material into the Kubernetes layout under ``root``."""
    write_secret_dir(
        root / "server",
        {"tls.crt": pki.edge_server.cert.read_bytes(), "tls.key": pki.edge_server.key.read_bytes()},
    )
    write_secret_dir(
        root / "client",
        {"tls.crt": pki.edge_client.cert.read_bytes(), "tls.key": pki.edge_client.key.read_bytes()},
    )
    write_secret_dir(root / "ca", {"ca.crt": pki.ca.cert.read_bytes()})
    return EdgeSecretFiles.from_dir(root)
