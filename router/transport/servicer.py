"""inferline.v1.InferenceService over the Predict pipeline.

Converts protobuf to plain pipeline data and back; owns caller identity
extraction from metadata, request/trace ids and the caller's deadline. No
business logic lives here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

import grpc

from inferline.v1 import inference_pb2, inference_pb2_grpc
from router.errors import InvalidArgument
from router.logging import bind_request
from router.observability.tracing import RequestSpans
from router.pipeline.idempotency import Idempotency
from router.pipeline.predict import Predictor
from router.pipeline.types import CandidateIn, PredictCommand, PredictResult, Scalar
from router.security.pii import PiiGuard
from router.settings import AuthSettings
from router.transport.identity import caller_identity, caller_tenant, peer_uris
from router.transport.pii import protect_request

_MAX_ID_LEN = 128


def _scalar(name: str, value: inference_pb2.Value) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(f"'{name}' has no value set")
    result: Scalar = getattr(value, kind)
    return result


def _candidate(c: inference_pb2.Candidate) -> CandidateIn:
    # Keys, then lookups: a protobuf map's items() is a Python-level view
    # (collections.abc), ~15% of this conversion.
    entities, features = c.entities, c.features
    return CandidateIn(
        candidate_id=c.candidate_id,
        entities={k: _scalar(k, entities[k]) for k in entities},
        features={k: _scalar(k, features[k]) for k in features},
    )


def _freshness_counts(result: PredictResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for per_candidate in result.freshness:
        for f in per_candidate:
            key = f"{f.view}:{f.status.name}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def _response(
    result: PredictResult, request_id: str, trace_id: str, timings: bool
) -> inference_pb2.PredictResponse:
    # The request's one log line (written by the interceptor) carries these.
    bind_request(
        version=result.version,
        degraded=result.degraded,
        fallback_level=result.fallback_level.name,
        degraded_reasons=result.degraded_reasons,
        stages_us=result.timings_us,
        candidates=len(result.scores),
        freshness=_freshness_counts(result),
    )
    # Fields set in place and defaults left unset: a third cheaper than building
    # the ServedModel apart (then copied in) and passing every default.
    resp = inference_pb2.PredictResponse(request_id=request_id, trace_id=trace_id)
    model = resp.model
    model.name = result.model
    model.version = result.version
    if result.alias:
        model.alias = result.alias
    if result.arm:
        model.arm = result.arm
    if result.degraded:
        resp.degraded = True
    if result.fallback_level:
        resp.fallback_level = int(result.fallback_level)  # type: ignore[assignment]
    if result.degraded_reasons:
        resp.degraded_reasons.extend(result.degraded_reasons)
    for i, score in enumerate(result.scores):
        s = resp.scores.add(candidate_id=result.candidate_ids[i], score=score)
        for f in result.freshness[i]:
            s.freshness.add(feature_view=f.view, status=int(f.status), age_ms=f.age_ms)  # type: ignore[arg-type]
    if timings:
        for stage, us in result.timings_us.items():
            resp.timings.add(stage=stage, duration_us=us)
    return resp


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(
        self,
        predictor: Predictor,
        *,
        auth: AuthSettings,
        default_deadline_s: float,
        idempotency: Idempotency,
        spans: RequestSpans,
        pii: PiiGuard | None = None,
    ) -> None:
        self._spans = spans
        self._pii = pii
        self._predictor = predictor
        self._idempotency = idempotency
        self._auth = auth
        self._default_deadline_s = default_deadline_s

    async def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.PredictResponse:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return await self.handle(
            request, metadata, lambda: peer_uris(context), context.time_remaining()
        )

    async def handle(
        self,
        request: inference_pb2.PredictRequest,
        metadata: Mapping[str, str],
        peers: Callable[[], frozenset[str]],
        time_remaining: float | None,
    ) -> inference_pb2.PredictResponse:
        """One Predict, whatever carried it (gRPC here, HTTP/1.1 in the fast lane).

        ``metadata``: request headers, lower-case keys; ``peers``: the mTLS peer's
        URI SANs (asked only when forwarded identity must be checked);
        ``time_remaining``: the caller's deadline in seconds, None when unset."""
        # Continue the caller's trace (W3C traceparent) or start one; its id is
        # echoed in the response and the log line even when not sampled.
        with self._spans.start("inferline.Predict", metadata) as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            if len(request.request_id) > _MAX_ID_LEN or len(request.idempotency_key) > _MAX_ID_LEN:
                raise InvalidArgument(
                    f"request_id and idempotency_key are limited to {_MAX_ID_LEN} characters"
                )
            # 128 random bits as 32 hex digits, like uuid4().hex at a fifth of its cost:
            # an id to correlate by, not a secret.
            if len(request.candidates) > self._predictor.max_candidates:
                # Before any per-candidate work: an empty candidate is 2 bytes, so
                # a 4 MiB body holds ~2M of them (seconds of this loop's time).
                raise InvalidArgument(
                    f"at most {self._predictor.max_candidates} candidates per request"
                )
            request_id = request.request_id or f"{random.getrandbits(128):032x}"
            tenant = caller_tenant(self._auth, metadata, peers)
            if self._pii is not None:  # before anything reads, logs or stores the body
                protect_request(self._pii, tenant, request)
            if span.is_recording():
                span.set_attribute("inferline.tenant", tenant or "")
                span.set_attribute("inferline.request_id", request_id)
            bind_request(request_id=request_id, trace_id=trace_id, tenant=tenant)
            deadline = time.monotonic() + (
                time_remaining if time_remaining is not None else self._default_deadline_s
            )
            which = request.WhichOneof("model")
            cmd = PredictCommand(
                request_id=request_id,
                tenant=tenant,
                alias=request.alias if which == "alias" else None,
                version=request.version if which == "version" else None,
                candidates=tuple(_candidate(c) for c in request.candidates),
                idempotency_key=request.idempotency_key,
                priority=metadata.get(self._auth.priority_header),
                identity=caller_identity(self._auth, metadata),
            )
            if request.idempotency_key:
                return await self._idempotent(request, cmd, deadline, trace_id)
            result = await self._predictor.predict(cmd, deadline)
            return _response(result, request_id, trace_id, request.options.return_timings)

    async def _idempotent(
        self,
        request: inference_pb2.PredictRequest,
        cmd: PredictCommand,
        deadline: float,
        trace_id: str,
    ) -> inference_pb2.PredictResponse:
        """A request with an idempotency key: a retry within the window gets the
        first answer (the same bytes); a different body under the same key is
        refused."""

        async def compute() -> bytes:
            result = await self._predictor.predict(cmd, deadline)
            resp = _response(result, cmd.request_id, trace_id, request.options.return_timings)
            return bytes(resp.SerializeToString())

        # The fingerprint ignores request_id: a retry may carry a new one.
        body = inference_pb2.PredictRequest()
        body.CopyFrom(request)
        body.request_id = ""
        fingerprint = Idempotency.fingerprint(body.SerializeToString(deterministic=True))
        idem_key = request.idempotency_key
        if self._pii is not None:
            idem_key = self._pii.idempotency_key(cmd.tenant, idem_key)
        key = f"{cmd.tenant}\x00{idem_key}"
        raw = await self._idempotency.run(key, fingerprint, compute)
        return inference_pb2.PredictResponse.FromString(raw)
