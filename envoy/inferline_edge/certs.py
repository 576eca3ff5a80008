"""Development PKI for the edge: a dev CA, an unrelated CA, and every leaf the stack needs.

Why a script and not static files: keys must never be committed, and tests need
fresh, short-lived material (plus a second CA to prove Envoy rejects strangers).
Identities follow SPIFFE-style URI SANs, which is what Envoy's RBAC, the Lua tenant
filter and the router's XFCC check match on:

- tenant clients  ``spiffe://inferline/tenant/<id>/svc/<name>`` (clientAuth)
- Envoy, upstream ``spiffe://inferline/edge/envoy`` (clientAuth, Envoy -> router)
- Envoy, public   server cert for ``edge.inferline.local``/``localhost``/127.0.0.1
- router          ``spiffe://inferline/router`` (serverAuth)
- JWT issuer      an ES256 key and its JWKS (Envoy ``jwt_authn`` local JWKS)

CLI: ``python -m inferline_edge.certs --out build/pki --tenant demo:cli``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import ipaddress
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "inferline"
EDGE_SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/edge/envoy"
ROUTER_SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}/router"
EDGE_DNS = "edge.inferline.local"
ROUTER_DNS = "router.inferline.local"
JWT_ISSUER = "https://auth.inferline.local"
JWT_AUDIENCE = "inferline"
JWT_KID = "inferline-dev-1"


def tenant_spiffe_id(tenant: str, svc: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/svc/{svc}"


@dataclasses.dataclass(frozen=True)
class CertPair:
    """PEM files of one leaf (or CA): certificate and its private key."""

    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes()


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate and verify, accepted by BoringSSL (Envoy) and gRPC.
    return ec.generate_private_key(ec.SECP256R1())


def _write_pair(
    path_stem: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    pair = CertPair(path_stem.with_suffix(".pem"), path_stem.with_suffix(".key"))
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pair.key.touch(mode=0o600)
    pair.key.write_bytes(key_pem)
    return pair


def _load_pair(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _make_ca(stem: Path, common_name: str, days: int) -> CertPair:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write_pair(stem, cert, key)


def _issue_leaf(
    ca: CertPair,
    stem: Path,
    *,
    common_name: str,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    server: bool = False,
    client: bool = False,
    days: int = 30,
) -> CertPair:
    ca_cert, ca_key = _load_pair(ca)
    key = _new_key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        # SPIFFE: the URI SAN is the identity; critical only when the subject is empty.
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _write_pair(stem, builder.sign(ca_key, hashes.SHA256()), key)


LEAF_ROLES: dict[str, dict[str, Any]] = {
    "edge-server": {
        "common_name": EDGE_DNS,
        "uris": [EDGE_SPIFFE_ID],
        "dns": [EDGE_DNS, "localhost"],
        "ips": ["127.0.0.1"],
        "server": True,
    },
    "edge-client": {"common_name": "envoy-edge", "uris": [EDGE_SPIFFE_ID], "client": True},
    "router": {
        "common_name": ROUTER_DNS,
        "uris": [ROUTER_SPIFFE_ID],
        "dns": [ROUTER_DNS, "localhost"],
        "ips": ["127.0.0.1"],
        "server": True,
    },
}
"""The infrastructure leaves and their identities (file stem = role name)."""


def issue_role(ca: CertPair, stem: Path, role: str, *, days: int = 30) -> CertPair:
    """(Re)issue one infrastructure leaf with a fresh key: rotation and rollover use it."""
    return _issue_leaf(ca, stem, days=days, **LEAF_ROLES[role])


def make_ca(stem: Path, common_name: str, *, days: int = 30) -> CertPair:
    """A fresh self-signed CA (a CA rollover's successor)."""
    return _make_ca(stem, common_name, days)


@dataclasses.dataclass(frozen=True)
class DevPKI:
    """File layout of one dev PKI directory (see ``create``)."""

    root: Path

    @property
    def ca(self) -> CertPair:
        return CertPair(self.root / "ca.pem", self.root / "ca.key")

    @property
    def other_ca(self) -> CertPair:
        """An unrelated CA: certificates it signs must be refused everywhere."""
        return CertPair(self.root / "other-ca.pem", self.root / "other-ca.key")

    @property
    def edge_server(self) -> CertPair:
        return CertPair(self.root / "edge-server.pem", self.root / "edge-server.key")

    @property
    def edge_client(self) -> CertPair:
        return CertPair(self.root / "edge-client.pem", self.root / "edge-client.key")

    @property
    def router(self) -> CertPair:
        return CertPair(self.root / "router.pem", self.root / "router.key")

    @property
    def jwt_key(self) -> Path:
        return self.root / "jwt-signing.key"

    @property
    def jwks(self) -> Path:
        return self.root / "jwks.json"

    def client(self, tenant: str, svc: str, *, other_ca: bool = False) -> CertPair:
        prefix = "other-" if other_ca else ""
        stem = self.root / "clients" / f"{prefix}{tenant}--{svc}"
        return CertPair(stem.with_suffix(".pem"), stem.with_suffix(".key"))

    @classmethod
    def create(
        cls, root: Path, *, tenants: Iterable[tuple[str, str]] = (), days: int = 30
    ) -> DevPKI:
        """Write a fresh CA, the other CA, the edge and router leaves, the JWT key and
        one client certificate per ``(tenant, svc)``. Overwrites what is there."""
        pki = cls(Path(root).resolve())
        pki.root.mkdir(parents=True, exist_ok=True)
        (pki.root / "clients").mkdir(exist_ok=True)
        _make_ca(pki.root / "ca", "inferline dev CA", days)
        _make_ca(pki.root / "other-ca", "unrelated dev CA", days)
        for role in LEAF_ROLES:
            issue_role(pki.ca, pki.root / role, role, days=days)
        pki._write_jwt_key()
        for tenant, svc in tenants:
            pki.issue_client(tenant, svc, days=days)
        return pki

    def issue_client(
        self, tenant: str, svc: str, *, other_ca: bool = False, days: int = 30
    ) -> CertPair:
        """Client certificate with URI SAN ``spiffe://inferline/tenant/<id>/svc/<name>``."""
        pair = self.client(tenant, svc, other_ca=other_ca)
        pair.cert.parent.mkdir(parents=True, exist_ok=True)
        ca = self.other_ca if other_ca else self.ca
        return _issue_leaf(
            ca,
            pair.cert.with_suffix(""),
            common_name=f"{tenant}/{svc}",
            uris=[tenant_spiffe_id(tenant, svc)],
            client=True,
            days=days,
        )

    def _write_jwt_key(self) -> None:
        key = _new_key()
        self.jwt_key.touch(mode=0o600)
        self.jwt_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk |= {"kid": JWT_KID, "alg": "ES256", "use": "sig"}
        self.jwks.write_text(json.dumps({"keys": [jwk]}, indent=2))

    def sign_jwt(
        self,
        tenant: str,
        subject: str,
        *,
        ttl_s: float = 300.0,
        extra: Mapping[str, Any] | None = None,
        key_path: Path | None = None,
    ) -> str:
        """An ES256 token with the claims Envoy checks (iss, aud, exp) plus ``tenant``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "sub": subject,
            "tenant": tenant,
            "iat": now,
            "nbf": now - 5,
            "exp": now + int(ttl_s),
            "jti": uuid.uuid4().hex,
        }
        claims |= dict(extra or {})
        key = (key_path or self.jwt_key).read_bytes()
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": JWT_KID})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inferline_edge.certs", description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="directory to (over)write")
    p.add_argument(
        "--tenant",
        action="append",
        default=[],
        metavar="ID:SVC",
        help="issue a client certificate for this tenant/service (repeatable)",
    )
    p.add_argument("--days", type=int, default=30)
    args = p.parse_args(argv)
    pairs = [tuple(t.split(":", 1)) for t in args.tenant]
    if any(len(t) != 2 for t in pairs):
        p.error("--tenant takes ID:SVC")
    pki = DevPKI.create(args.out, tenants=[(t, s) for t, s in pairs], days=args.days)
    print(f"dev PKI written to {pki.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
