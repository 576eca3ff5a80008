"""The hash chain: how a record is sealed and how a trail is verified.

Each record is ``{seq, ts, actor, tenant, action, subject, details, prev_hash,
[kid], hash}``; ``hash`` is SHA-256 (or, with a key, HMAC-SHA256 under key
``kid``) over the canonical JSON of every other field, ``prev_hash`` included.
So editing a record breaks its hash, and deleting, inserting or reordering
records breaks the sequence numbers and the next record's ``prev_hash``.
Without a key, someone who can rewrite the file can recompute the whole chain;
the HMAC key (held by the writer only) and the separately kept checkpoint
(the head's seq and hash) close that: a rewriter cannot forge the MACs, and a
truncated tail no longer matches the checkpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from router.security.keyset import Keyset

GENESIS = "0" * 64
"""``prev_hash`` of the first record."""

FIELDS = ("seq", "ts", "actor", "tenant", "action", "subject", "details", "prev_hash")


def canonical(body: Mapping[str, Any]) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(body: Mapping[str, Any], key: bytes | None) -> str:
    data = canonical(body)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def seal(
    event: Mapping[str, Any], *, seq: int, ts: str, prev_hash: str, keys: Keyset | None
) -> dict[str, Any]:
    """The sealed record for ``event`` (actor, tenant, action, subject, details)."""
    body: dict[str, Any] = {
        "seq": seq,
        "ts": ts,
        "actor": event.get("actor", ""),
        "tenant": event.get("tenant"),
        "action": event["action"],
        "subject": event.get("subject", ""),
        "details": event.get("details") or {},
        "prev_hash": prev_hash,
    }
    if keys is not None:
        body["kid"] = keys.primary
    body["hash"] = digest(body, keys.primary_key if keys is not None else None)
    return body


def checkpoint_mac(seq: int, head: str, keys: Keyset | None) -> str | None:
    if keys is None:
        return None
    msg = f"{seq}:{head}".encode()
    return hmac.new(keys.primary_key, msg, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str = ""


def _check_record(rec: Any, expected_seq: int, prev: str, keys: Keyset | None) -> str | None:
    """Why ``rec`` does not continue the chain at ``expected_seq``, or None."""
    if not isinstance(rec, dict) or not isinstance(rec.get("hash"), str):
        return "not a sealed record"
    seq = rec.get("seq")
    if seq != expected_seq:
        return f"found seq {seq} (a record was deleted, inserted or reordered)"
    if rec.get("prev_hash") != prev:
        return "prev_hash does not match the previous record (deleted or reordered)"
    body = {k: v for k, v in rec.items() if k != "hash"}
    key: bytes | None = None
    if keys is not None:
        kid = rec.get("kid")
        if not isinstance(kid, str) or kid not in keys.keys:
            return "record is not keyed with a known key id"
        key = keys.keys[kid]
    elif "kid" in rec:
        return "record is keyed: pass the audit key file to verify it"
    if not hmac.compare_digest(digest(body, key), rec["hash"]):
        return "hash mismatch (the record was edited)"
    return None


def verify(
    lines: Iterable[bytes | str],
    *,
    keys: Keyset | None = None,
    checkpoint: Mapping[str, Any] | None = None,
) -> Verdict:
    """Walk the chain; stop at the first record that does not continue it."""
    prev, seq, count = GENESIS, 0, 0
    cp_seq = checkpoint.get("seq") if checkpoint is not None else None
    at_checkpoint: str | None = None
    for line in lines:
        if not line.strip():
            continue
        expected = seq + 1
        try:
            rec = json.loads(line)
        except ValueError:
            return Verdict(False, count, seq, prev, expected, "unparseable line")
        why = _check_record(rec, expected, prev, keys)
        if why is not None:
            return Verdict(False, count, seq, prev, expected, why)
        prev, seq, count = rec["hash"], expected, count + 1
        if seq == cp_seq:
            at_checkpoint = prev
    if checkpoint is not None:
        cp_hash = checkpoint.get("hash")
        if not isinstance(cp_seq, int) or not isinstance(cp_hash, str):
            return Verdict(False, count, seq, prev, None, "checkpoint file is malformed")
        if keys is not None and checkpoint_mac(cp_seq, cp_hash, _keyed(keys, checkpoint)) != (
            checkpoint.get("mac")
        ):
            return Verdict(False, count, seq, prev, None, "checkpoint MAC mismatch")
        if cp_seq > seq:
            return Verdict(
                False, count, seq, prev, seq + 1, f"trail ends at seq {seq}, checkpoint at {cp_seq}"
            )
        if cp_seq > 0 and at_checkpoint != cp_hash:
            return Verdict(
                False, count, seq, prev, cp_seq, "record at the checkpoint differs from it"
            )
    return Verdict(True, count, seq, prev)


def _keyed(keys: Keyset, checkpoint: Mapping[str, Any]) -> Keyset:
    kid = checkpoint.get("kid")
    if isinstance(kid, str) and kid in keys.keys:
        return Keyset(primary=kid, keys=keys.keys)
    return keys
