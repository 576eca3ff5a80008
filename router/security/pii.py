"""PII tokenization: keyed, deterministic, per-tenant tokens.

A tenant's routing-table entry lists which candidate entity/feature keys carry
personal data (``data.pii_fields``). The transport replaces those values at
the very start of Predict handling, so features, logs, traces, metrics,
Triton, the idempotency store, the audit trail and payload captures only ever
see tokens.

Token = ``tok_<kid>_<base64url(HMAC-SHA256(k_tenant, value))[:22]>`` (128
bits), with ``k_tenant = HKDF-SHA256(primary key, info="inferline/pii/v1/" +
tenant)``. Deterministic, so the same email is the same token within a tenant
(joins, counts and feature lookups keyed by token still work: the offline
pipeline tokenizes with the same keyset) but different across tenants, and
irreversible: the router never needs the raw value back. The key id in the
token says which key made it; rotating the PII key re-keys every token, so it
is a planned migration (feature stores re-keyed), not a routine event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from router.errors import InvalidArgument
from router.pipeline.routing import RoutingTable
from router.pipeline.types import Scalar
from router.security.keyset import KeysetFile

_INFO = b"inferline/pii/v1/"
_OPAQUE_ID = re.compile(r"^[A-Za-z0-9._:\-]*$")


def _canonical(value: Scalar) -> bytes:
    """One byte string per value whatever its wire type (7 and "7" tokenize alike)."""
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)).encode()
    return str(value).encode()


_MAX_DERIVED = 4096
"""Derived keys kept (tenant x purpose x key): bounded, since in header mode an
unknown tenant's name is whatever the caller sent."""


class Tokenizer:
    def __init__(self, keys: KeysetFile) -> None:
        self._keys = keys
        self._derived: dict[tuple[bytes, str, bytes], bytes] = {}

    def _key(self, tenant: str, purpose: bytes = b"") -> tuple[str, bytes]:
        ks = self._keys.current
        # By the key's bytes, not its id: a keyset re-created from scratch
        # names a new key "k1" again, which must not reuse the old one's.
        cache_key = (ks.primary_key, tenant, purpose)
        key = self._derived.get(cache_key)
        if key is None:
            if len(self._derived) >= _MAX_DERIVED:  # tenant names can come from callers
                self._derived.clear()
            hkdf = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=_INFO + purpose + tenant.encode(),
            )
            key = self._derived[cache_key] = hkdf.derive(ks.primary_key)
        return ks.primary, key

    def token(self, tenant: str, value: Scalar) -> str:
        kid, key = self._key(tenant)
        mac = hmac.digest(key, _canonical(value), "sha256")[:16]
        return f"tok_{kid}_{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def opaque(self, tenant: str, text: str) -> str:
        """A keyed digest for values stored as keys (idempotency keys)."""
        _, key = self._key(tenant, b"idempotency/")
        return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


class PiiGuard:
    """Which fields are PII for a tenant (from the current routing table) and
    their tokens. Unknown or missing tenants get the union of every tenant's
    fields: their request fails authentication, but not before it is scrubbed."""

    def __init__(
        self, tokenizer: Tokenizer, table: Callable[[], RoutingTable], *, opaque_ids: bool
    ) -> None:
        self._tokenizer = tokenizer
        self._table = table
        self.opaque_ids = opaque_ids
        self._cached: tuple[RoutingTable, dict[str, frozenset[str]], frozenset[str]] | None = None

    def fields(self, tenant: str | None) -> frozenset[str]:
        table = self._table()
        if self._cached is None or self._cached[0] is not table:
            per = {t: frozenset(p.data.pii_fields) for t, p in table.tenants.items()}
            union = frozenset().union(*per.values()) if per else frozenset()
            self._cached = (table, per, union)
        _, per, union = self._cached
        got = per.get(tenant) if tenant else None
        return union if got is None else got

    def token(self, tenant: str | None, value: Scalar) -> str:
        return self._tokenizer.token(tenant or "", value)

    def idempotency_key(self, tenant: str | None, key: str) -> str:
        return self._tokenizer.opaque(tenant or "", key)

    def check_ids(self, *ids: str) -> None:
        """Refuse ids that could carry personal data (never echoing them)."""
        if self.opaque_ids and not all(_OPAQUE_ID.fullmatch(i) for i in ids):
            raise InvalidArgument(
                "request_id, idempotency_key and candidate_id may only contain "
                "letters, digits and '._:-'"
            )
