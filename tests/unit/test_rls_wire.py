"""inferline_edge.rls_wire against envoy-data-plane's full-schema classes.

The quota service parses Envoy's ShouldRateLimit and answers with the upb
messages of rls_wire; envoy-data-plane (betterproto, generated from Envoy's own
protos) is the independent reference for the wire format in both directions.
"""

from __future__ import annotations

import datetime as dt

from envoy_data_plane.envoy.config.core.v3 import HeaderValue
from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
    RateLimitDescriptor,
    RateLimitDescriptorEntry,
    RateLimitDescriptorRateLimitOverride,
)
from envoy_data_plane.envoy.service.ratelimit.v3 import (
    RateLimitRequest,
    RateLimitResponse,
    RateLimitResponseCode,
    RateLimitResponseDescriptorStatus,
    RateLimitResponseRateLimit,
    RateLimitResponseRateLimitUnit,
)
from envoy_data_plane.envoy.type.v3 import RateLimitUnit

from inferline_edge import rls_wire


def test_envoys_request_parses_including_fields_we_do_not_declare() -> None:
    sent = RateLimitRequest(
        domain="inferline",
        descriptors=[
            RateLimitDescriptor(
                entries=[
                    RateLimitDescriptorEntry(key="generic_key", value="x"),
                    RateLimitDescriptorEntry(key="tenant", value="payments"),
                ],
                # Not declared in rls_wire: kept as unknown fields, ignored.
                limit=RateLimitDescriptorRateLimitOverride(
                    requests_per_unit=5, unit=RateLimitUnit.SECOND
                ),
            ),
            RateLimitDescriptor(entries=[RateLimitDescriptorEntry(key="tenant", value="demo")]),
        ],
        hits_addend=7,
    )
    got = rls_wire.RateLimitRequest.FromString(bytes(sent))
    assert got.domain == "inferline"
    assert got.hits_addend == 7
    assert [[(e.key, e.value) for e in d.entries] for d in got.descriptors] == [
        [("generic_key", "x"), ("tenant", "payments")],
        [("tenant", "demo")],
    ]
    assert bytes(RateLimitRequest.parse(got.SerializeToString())) == bytes(sent)


def test_an_empty_request_reads_as_defaults() -> None:
    got = rls_wire.RateLimitRequest.FromString(b"")
    assert (got.domain, got.hits_addend, len(got.descriptors)) == ("", 0, 0)


def test_our_answer_reads_back_in_envoys_schema() -> None:
    resp = rls_wire.RateLimitResponse(overall_code=rls_wire.CODE_OVER_LIMIT, raw_body=b"no")
    ok = resp.statuses.add(code=rls_wire.CODE_OK)
    over = resp.statuses.add(code=rls_wire.CODE_OVER_LIMIT, limit_remaining=0)
    over.current_limit.name = "tenant-demo"
    over.current_limit.requests_per_unit = 60000
    over.current_limit.unit = rls_wire.UNIT_MINUTE
    over.duration_until_reset.seconds = 12
    over.duration_until_reset.nanos = 500_000_000
    resp.response_headers_to_add.add(key="retry-after", value="13")
    del ok

    got = RateLimitResponse.parse(resp.SerializeToString())
    assert got == RateLimitResponse(
        overall_code=RateLimitResponseCode.OVER_LIMIT,
        statuses=[
            RateLimitResponseDescriptorStatus(code=RateLimitResponseCode.OK),
            RateLimitResponseDescriptorStatus(
                code=RateLimitResponseCode.OVER_LIMIT,
                current_limit=RateLimitResponseRateLimit(
                    name="tenant-demo",
                    requests_per_unit=60000,
                    unit=RateLimitResponseRateLimitUnit.MINUTE,
                ),
                limit_remaining=0,
                duration_until_reset=dt.timedelta(seconds=12.5),
            ),
        ],
        response_headers_to_add=[HeaderValue(key="retry-after", value="13")],
        raw_body=b"no",
    )


def test_codes_and_units_match_envoys_enums() -> None:
    assert rls_wire.CODE_OK == RateLimitResponseCode.OK
    assert rls_wire.CODE_OVER_LIMIT == RateLimitResponseCode.OVER_LIMIT
    assert rls_wire.UNIT_MINUTE == RateLimitResponseRateLimitUnit.MINUTE
