"""Field-level envelope encryption of one capture record.

Every payload field is its own AES-256-GCM ciphertext under the record's data
key, with the record id and field name as associated data, so a field cannot
be moved to another record or renamed without failing to decrypt. The data
key is wrapped by the KMS with the record id and tenant as associated data.
Reading one field needs one unwrap and one decrypt; the plaintext metadata
(id, time, tenant, class, model, version) is what retention and queries use.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from router.security.kms import Kms

_NONCE = 12


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _aad(record_id: str, name: str) -> bytes:
    return f"{record_id}|{name}".encode()


def seal(kms: Kms, meta: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` (must hold "id" and "tenant") in clear; each of ``fields`` encrypted."""
    record_id, tenant = str(meta["id"]), str(meta["tenant"])
    dek = AESGCM.generate_key(bit_length=256)
    kek_id, wrapped = kms.wrap(dek, _aad(record_id, tenant))
    aead = AESGCM(dek)
    enc = {}
    for name, value in fields.items():
        nonce = os.urandom(_NONCE)
        plain = json.dumps(value, separators=(",", ":")).encode()
        enc[name] = _b64(nonce + aead.encrypt(nonce, plain, _aad(record_id, name)))
    return {**meta, "kek": kek_id, "dek": _b64(wrapped), "enc": enc}


def open_fields(kms: Kms, record: Mapping[str, Any]) -> dict[str, Any]:
    """Decrypt every field of a sealed record (raises on tampering or a wrong key)."""
    record_id = str(record["id"])
    dek = kms.unwrap(
        record["kek"], base64.b64decode(record["dek"]), _aad(record_id, str(record["tenant"]))
    )
    aead = AESGCM(dek)
    out = {}
    for name, blob in record["enc"].items():
        raw = base64.b64decode(blob)
        out[name] = json.loads(aead.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(record_id, name)))
    return out
