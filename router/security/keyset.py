"""Key material from files (Kubernetes-secret style), with key ids for rotation.

A keyset file is JSON ``{"primary": "k2", "keys": {"k1": "<base64>", "k2": "<base64>"}}``
(32-byte keys). New data is written under the primary key; older keys stay
listed so what was written under them can still be read or verified. A mounted
secret changes in place, so ``KeysetFile.reload()`` re-reads the file when it
changed and reports a change of primary (a rotation) for the audit trail.
Keys never appear in logs, errors or reprs.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from router.errors import ConfigError

KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Keyset:
    primary: str
    keys: Mapping[str, bytes] = field(repr=False)

    def key(self, kid: str) -> bytes:
        try:
            return self.keys[kid]
        except KeyError:
            raise ConfigError(f"key id {kid!r} is not in the keyset") from None

    @property
    def primary_key(self) -> bytes:
        return self.keys[self.primary]


def parse_keyset(raw: str, source: str) -> Keyset:
    try:
        data = json.loads(raw)
        primary = data["primary"]
        keys = {str(k): base64.b64decode(v, validate=True) for k, v in data["keys"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise ConfigError(f"invalid keyset {source}: {type(e).__name__}") from e
    if primary not in keys:
        raise ConfigError(f"invalid keyset {source}: primary key id is not listed")
    # Exactly 32: the same keyset may serve as an AES-256-GCM key (capture's
    # KEK), which refuses any other size at the first wrap, not at load.
    wrong = sorted(k for k, v in keys.items() if len(v) != KEY_BYTES)
    if wrong:
        raise ConfigError(f"invalid keyset {source}: keys {wrong} are not {KEY_BYTES} bytes")
    return Keyset(primary=str(primary), keys=keys)


def load_keyset(path: Path) -> Keyset:
    try:
        raw = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read keyset {path}: {e.strerror}") from e
    return parse_keyset(raw, str(path))


def write_keyset(path: Path, keyset: Keyset) -> None:
    """Atomically replace ``path`` (mode 0600), as a secret update would."""
    data = {
        "primary": keyset.primary,
        "keys": {k: base64.b64encode(v).decode() for k, v in keyset.keys.items()},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rotate_keyset(path: Path) -> str:
    """Add a fresh random key to ``path`` (created if absent) and make it primary."""
    current = load_keyset(path) if path.exists() else Keyset(primary="", keys={})
    n = len(current.keys) + 1
    while f"k{n}" in current.keys:
        n += 1
    kid = f"k{n}"
    keys = {**current.keys, kid: secrets.token_bytes(KEY_BYTES)}
    write_keyset(path, Keyset(primary=kid, keys=keys))
    return kid


class KeysetFile:
    """A keyset file and its last good contents; ``reload()`` picks up rotations."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current = load_keyset(path)
        self._mtime = path.stat().st_mtime

    def reload(self) -> tuple[str, str] | None:
        """Re-read a changed file; (old primary, new primary) when the primary changed.

        An unreadable or invalid file raises ConfigError and keeps the old keys.
        """
        try:
            mtime = self.path.stat().st_mtime
        except OSError as e:
            raise ConfigError(f"cannot stat keyset {self.path}: {e.strerror}") from e
        if mtime == self._mtime:
            return None
        new = load_keyset(self.path)
        self._mtime = mtime
        old, self.current = self.current, new
        # A new primary key is a rotation even under a reused id ("k1" again
        # after the file was re-created): compare the bytes too.
        rotated = old.primary != new.primary or old.primary_key != new.primary_key
        return (old.primary, new.primary) if rotated else None
