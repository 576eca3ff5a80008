"""Key-encryption keys behind a KMS interface (envelope encryption).

Data is encrypted with a fresh data key (DEK) per record; only the DEK is sent
to the KMS to be wrapped by a key-encryption key (KEK) that never leaves it.
``Kms`` is the seam: a cloud KMS (AWS KMS Encrypt/Decrypt, GCP Cloud KMS,
Vault transit) implements ``wrap``/``unwrap`` with one call each.
``LocalKeysetKms``, the default, holds the KEKs in a keyset file (a mounted
secret) and wraps with AES-256-GCM; rotating the file's primary key changes
the KEK new records are wrapped with, and old records still unwrap under the
key id they name.
"""

from __future__ import annotations

import os
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from router.security.keyset import KeysetFile

_NONCE = 12


class UnwrapError(Exception):
    """The wrapped key does not open under the named KEK (tampered or wrong key)."""


class Kms(Protocol):
    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        """(KEK id, wrapped DEK); ``aad`` binds the wrap to its record."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes: ...


class LocalKeysetKms:
    def __init__(self, keys: KeysetFile) -> None:
        self._keys = keys

    def wrap(self, dek: bytes, aad: bytes) -> tuple[str, bytes]:
        ks = self._keys.current
        nonce = os.urandom(_NONCE)
        return ks.primary, nonce + AESGCM(ks.primary_key).encrypt(nonce, dek, aad)

    def unwrap(self, kek_id: str, wrapped: bytes, aad: bytes) -> bytes:
        key = self._keys.current.key(kek_id)
        try:
            return AESGCM(key).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], aad)
        except InvalidTag as e:
            raise UnwrapError(f"data key does not open under KEK {kek_id!r}") from e
