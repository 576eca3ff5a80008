"""Server TLS material that follows its files: certificate rotation without a restart.

Why: certificates come from mounted secrets (Kubernetes ``kubernetes.io/tls``
volumes, a cert-manager renewal, a CA rollover) and must change under a running
router without dropping a request. gRPC's dynamic server credentials ask a
fetcher for the current configuration on every new handshake; established
connections keep the certificate they negotiated, new ones get the new one.

The fetcher re-reads the files at most every ``interval_s`` (a stat of three
files), and only swaps when the certificate and key belong together: a rotation
writes two files, and a poll that lands between the writes must not serve a
certificate with the wrong key (the handshake would fail). A half-written or
unreadable set keeps the previous configuration and is retried on the next poll.
Kubernetes' atomic ``..data`` symlink swap is followed like any file change.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from router.errors import ConfigError
from router.settings import TlsSettings

log = structlog.get_logger("router.tls")


@dataclass(frozen=True)
class TlsMaterial:
    """One consistent set: PEM key + chain, optional client-CA bundle."""

    key: bytes
    chain: bytes
    client_ca: bytes | None
    serial: int

    @classmethod
    def load(cls, cert: Path, key: Path, client_ca: Path | None) -> TlsMaterial:
        """Read and check the set; ValueError/OSError when it is not usable (yet)."""
        chain, key_pem = cert.read_bytes(), key.read_bytes()
        ca = client_ca.read_bytes() if client_ca is not None else None
        leaf = x509.load_pem_x509_certificate(chain)
        try:
            private = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError as e:
            raise ValueError("the private key is encrypted; it must not be") from e
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            raise ValueError("certificate and private key do not match")
        if ca is not None and not x509.load_pem_x509_certificates(ca):
            raise ValueError("client CA bundle holds no certificate")
        return cls(key_pem, chain, ca, leaf.serial_number)


class CertReloader:
    """Holds the served TLS material and swaps it when the files change."""

    def __init__(self, tls: TlsSettings, *, interval_s: float | None = None) -> None:
        if tls.cert_file is None or tls.key_file is None:
            raise ConfigError("tls.cert_file and tls.key_file must be set together")
        self._cert, self._key, self._ca = tls.cert_file, tls.key_file, tls.client_ca_file
        self.interval_s = tls.reload_interval_s if interval_s is None else interval_s
        self._lock = threading.Lock()  # the fetcher runs on gRPC core threads
        self._checked = 0.0
        self._stamp = self._stat()
        try:
            self.current = TlsMaterial.load(self._cert, self._key, self._ca)
        except (OSError, ValueError) as e:
            raise ConfigError(f"TLS files unusable: {e}") from e
        self.reloads = 0

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for p in (self._cert, self._key, self._ca):
            if p is None:
                continue
            try:
                st = p.stat()  # follows symlinks: a ..data swap changes inode/mtime
            except OSError:
                out.append((0, 0, 0))
                continue
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _config(self, m: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(m.key, m.chain)], m.client_ca)

    def poll(self) -> TlsMaterial | None:
        """New material if the files changed into a usable set since the last swap."""
        if self.interval_s <= 0:  # reloading off, on every listener alike
            return None
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.interval_s:
                return None
            self._checked = now
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            try:
                fresh = TlsMaterial.load(self._cert, self._key, self._ca)
            except (OSError, ValueError) as e:
                log.warning("tls.reload_deferred", error=str(e))
                return None  # stamp not recorded: retried on the next poll
            self._stamp = stamp
            if fresh == self.current:
                return None
            old, self.current = self.current, fresh
            self.reloads += 1
        log.info("tls.reloaded", old_serial=f"{old.serial:x}", new_serial=f"{fresh.serial:x}")
        return fresh

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate-configuration fetcher: None keeps the current one."""
        fresh = self.poll()
        return None if fresh is None else self._config(fresh)

    def credentials(self) -> grpc.ServerCredentials:
        if self.interval_s <= 0:  # reloading off: static credentials
            m = self.current
            return grpc.ssl_server_credentials(
                [(m.key, m.chain)],
                root_certificates=m.client_ca,
                require_client_auth=m.client_ca is not None,
            )
        return grpc.dynamic_ssl_server_credentials(
            self._config(self.current),
            self.fetch,
            require_client_authentication=self.current.client_ca is not None,
        )
