"""Scrub a PredictRequest in place: the first thing Predict does with a body.

After ``protect_request`` the request holds tokens where the tenant's PII
fields were, so everything derived from it (the pipeline command, the
idempotency fingerprint, captures) is derived from tokens.
"""

from __future__ import annotations

from inferline.v1 import inference_pb2
from router.security.pii import PiiGuard


def protect_request(
    guard: PiiGuard, tenant: str | None, request: inference_pb2.PredictRequest
) -> int:
    """Check ids and tokenize the tenant's PII fields; returns the values replaced."""
    guard.check_ids(
        request.request_id, request.idempotency_key, *(c.candidate_id for c in request.candidates)
    )
    fields = guard.fields(tenant)
    if not fields:
        return 0
    replaced = 0
    for cand in request.candidates:
        for values in (cand.entities, cand.features):
            for name in fields.intersection(values):
                value = values[name]
                kind = value.WhichOneof("kind")
                if kind is None:
                    continue
                value.string_value = guard.token(tenant, getattr(value, kind))
                replaced += 1
    return replaced
