"""CPU cost of the compliance machinery per request, in-process (no network).

Hot path (on the request): scrubbing a request's PII fields, queueing its audit
record, drawing and queueing a capture. Background (same process, off the
request's latency, but on its CPU): sealing and appending audit records in
batches, sealing (per-record DEK, per-field AES-GCM, KEK wrap) and appending
captures.

    python -m bench.compliance_cost
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from inferline.v1 import inference_pb2 as pb
from router.audit.log import AuditLog, prediction_event
from router.audit.store import JsonlAuditStore
from router.capture.store import CaptureStore
from router.capture.writer import CaptureWriter
from router.pipeline.routing import DataPolicy, RoutingTable
from router.pipeline.types import CandidateIn, PredictCommand, PredictResult
from router.security.keyset import KeysetFile, rotate_keyset
from router.security.kms import LocalKeysetKms
from router.security.pii import PiiGuard, Tokenizer
from router.transport.pii import protect_request


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def _request() -> pb.PredictRequest:
    req = pb.PredictRequest(alias="fraud:prod", request_id="req-1")
    c = req.candidates.add(candidate_id="c-1")
    c.entities["account_id"].int64_value = 42
    c.entities["email"].string_value = "someone@example.com"
    c.features["amount"].double_value = 12.5
    c.features["phone"].string_value = "+15550100"
    c.features["card_number"].int64_value = 4111111111111111
    return req


def measure(work: Path, n: int = 20_000) -> dict[str, float]:
    for name in ("pii", "kek"):
        rotate_keyset(work / f"{name}.json")
    table = RoutingTable.model_validate(
        {"models": {"fraud": {"versions": [1]}},
         "tenants": {"payments": {"models": ["fraud"],
                                  "data": {"pii_fields": ["email", "phone", "card_number"]}}}}
    )  # fmt: skip
    guard = PiiGuard(Tokenizer(KeysetFile(work / "pii.json")), lambda: table, opaque_ids=True)
    template = _request()
    reqs = [pb.PredictRequest() for _ in range(n)]
    for r in reqs:
        r.CopyFrom(template)
    it = iter(reqs)
    out = {"scrub 3 PII fields (hot path)": _per_call_us(
        lambda: protect_request(guard, "payments", next(it)), n)}  # fmt: skip

    cand = CandidateIn("c-1", {"account_id": 42, "email": "tok_k1_x"}, {"amount": 12.5})
    cmd = PredictCommand("req-1", "payments", "fraud:prod", None, (cand,))
    result = PredictResult("fraud", 1, "prod", ["c-1"], [0.42], [()])

    async def queue_costs() -> tuple[float, float]:
        audit = AuditLog(JsonlAuditStore(work / "a.jsonl"), queue_size=n + 1)
        kms = LocalKeysetKms(KeysetFile(work / "kek.json"))
        cap = CaptureWriter(CaptureStore(work / "cap", 3600), kms, queue_size=n + 1)
        a = _per_call_us(lambda: audit.record_prediction(cmd, result, None), n)
        policy = DataPolicy(capture_class="debug", capture_ratio=1.0)
        c = _per_call_us(lambda: cap.offer(cmd, result, policy), n)
        return a, c

    a, c = asyncio.run(queue_costs())
    out["queue audit record (hot path)"] = a
    out["draw + queue capture (hot path)"] = c

    store = JsonlAuditStore(work / "b.jsonl")
    batch = 512
    events = [prediction_event(cmd, result, None) for _ in range(batch)]
    out["format + seal + append audit record (background, batches of 512, fsync)"] = (
        _per_call_us(lambda: store.append(events, time.time()), n // batch) / batch
    )
    writer = CaptureWriter(CaptureStore(work / "cap2", 3600),
                           LocalKeysetKms(KeysetFile(work / "kek.json")))  # fmt: skip
    pending = [(time.time(), "debug", cmd, result)] * 64
    out["seal + append capture record (background, batches of 64)"] = (
        _per_call_us(lambda: writer.store.append(writer.seal_batch(pending)), n // 64 // 4) / 64
    )
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        results = measure(Path(d))
    print("| step | CPU per request |\n| --- | --- |")
    for k, us in results.items():
        print(f"| {k} | {us:.1f} us |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
