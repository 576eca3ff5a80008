"""The servicer's PredictResponse: every field the pipeline's result carries, set
in place (defaults left unset), equals building the message whole."""

from __future__ import annotations

import pytest

from inferline.v1 import inference_pb2 as pb
from router.pipeline.types import FallbackLevel, Freshness, PredictResult, ViewFreshness
from router.transport.servicer import _response


def _whole(r: PredictResult, request_id: str, trace_id: str) -> pb.PredictResponse:
    return pb.PredictResponse(
        request_id=request_id,
        trace_id=trace_id,
        model=pb.ServedModel(name=r.model, version=r.version, alias=r.alias or "", arm=r.arm),
        degraded=r.degraded,
        fallback_level=int(r.fallback_level),  # type: ignore[arg-type]
        degraded_reasons=r.degraded_reasons,
        scores=[
            pb.Score(
                candidate_id=c,
                score=s,
                freshness=[
                    pb.FeatureFreshness(feature_view=f.view, status=int(f.status), age_ms=f.age_ms)  # type: ignore[arg-type]
                    for f in fr
                ],
            )
            for c, s, fr in zip(r.candidate_ids, r.scores, r.freshness, strict=True)
        ],
    )


@pytest.mark.parametrize(
    "result",
    [
        PredictResult("fraud", 3, "prod", ["a"], [0.25],
                      [(ViewFreshness("accounts", Freshness.FRESH, 1200),)]),
        PredictResult("ranker", 1, None, ["x", "y"], [0.0, -1.5],
                      [(), (ViewFreshness("items", Freshness.MISSING, 0),)],
                      FallbackLevel.CACHED_SCORE, ["features_missing", "primary_unavailable"],
                      arm="canary"),
        PredictResult("fraud", 2, "prod", [], [], [], FallbackLevel.STATIC_DEFAULT),
    ],
)  # fmt: skip
def test_response_equals_the_message_built_whole(result: PredictResult) -> None:
    got = _response(result, "req-1", "ab" * 16, timings=False)
    assert got == _whole(result, "req-1", "ab" * 16)
    assert got.SerializeToString(deterministic=True) == _whole(
        result, "req-1", "ab" * 16
    ).SerializeToString(deterministic=True)
