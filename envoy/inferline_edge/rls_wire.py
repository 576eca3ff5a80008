"""The slice of Envoy's rate-limit API the quota service speaks, as C-backed messages.

Why: ``envoy-data-plane``'s betterproto classes parse and serialize in pure
Python: ~130 us per ShouldRateLimit even warm, a fifth of the service's CPU
on every quota-metered request, on the request's critical path. These
messages are wire-compatible with ``envoy/service/ratelimit/v3/rls.proto`` and
``envoy/extensions/common/ratelimit/v3/ratelimit.proto`` (same field numbers
and types) and run on protobuf's upb runtime. Only the fields the service
reads or writes are declared; anything else Envoy sends is kept as unknown
fields and ignored. tests/unit/test_rls_wire.py checks them against
envoy-data-plane's full-schema classes in both directions.

Built from descriptors at import (a private pool under a private package, so
nothing clashes with a real ``envoy.*`` registration) rather than generated
code: the schema is these few lines.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "inferline_edge.rls_wire"

# Values of envoy.service.ratelimit.v3.RateLimitResponse.Code and
# RateLimitResponse.RateLimit.Unit.
CODE_OK = 1
CODE_OVER_LIMIT = 2
UNIT_MINUTE = 2


def _field(name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> _F:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    field = _F(name=name, number=number, type=kind, label=label)  # type: ignore[arg-type]
    if type_name:
        field.type_name = f".{_PACKAGE}.{type_name}"
    return field


def _message(name: str, *fields: _F) -> descriptor_pb2.DescriptorProto:
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields))


def _file() -> descriptor_pb2.FileDescriptorProto:
    s, u32, b, msg, enum = (_F.TYPE_STRING, _F.TYPE_UINT32, _F.TYPE_BYTES, _F.TYPE_MESSAGE,
                            _F.TYPE_ENUM)  # fmt: skip
    code = descriptor_pb2.EnumDescriptorProto(
        name="Code",
        value=[
            descriptor_pb2.EnumValueDescriptorProto(name=n, number=i)
            for i, n in enumerate(("UNKNOWN", "OK", "OVER_LIMIT"))
        ],
    )
    unit = descriptor_pb2.EnumDescriptorProto(
        name="Unit",
        value=[
            descriptor_pb2.EnumValueDescriptorProto(name=n, number=i)
            for i, n in enumerate(("UNIT_UNKNOWN", "SECOND", "MINUTE", "HOUR", "DAY"))
        ],
    )
    return descriptor_pb2.FileDescriptorProto(
        name="inferline_edge/rls_wire.proto",
        package=_PACKAGE,
        syntax="proto3",
        enum_type=[code, unit],
        message_type=[
            # envoy.extensions.common.ratelimit.v3.RateLimitDescriptor(.Entry)
            _message("Entry", _field("key", 1, s), _field("value", 2, s)),
            _message("Descriptor", _field("entries", 1, msg, "Entry", repeated=True)),
            # envoy.service.ratelimit.v3.RateLimitRequest
            _message(
                "RateLimitRequest",
                _field("domain", 1, s),
                _field("descriptors", 2, msg, "Descriptor", repeated=True),
                _field("hits_addend", 3, u32),
            ),
            # google.protobuf.Duration
            _message(
                "Duration", _field("seconds", 1, _F.TYPE_INT64), _field("nanos", 2, _F.TYPE_INT32)
            ),
            # envoy.config.core.v3.HeaderValue
            _message(
                "HeaderValue", _field("key", 1, s), _field("value", 2, s), _field("raw_value", 3, b)
            ),
            # RateLimitResponse.RateLimit
            _message(
                "RateLimit",
                _field("requests_per_unit", 1, u32),
                _field("unit", 2, enum, "Unit"),
                _field("name", 3, s),
            ),
            # RateLimitResponse.DescriptorStatus
            _message(
                "DescriptorStatus",
                _field("code", 1, enum, "Code"),
                _field("current_limit", 2, msg, "RateLimit"),
                _field("limit_remaining", 3, u32),
                _field("duration_until_reset", 4, msg, "Duration"),
            ),
            # envoy.service.ratelimit.v3.RateLimitResponse
            _message(
                "RateLimitResponse",
                _field("overall_code", 1, enum, "Code"),
                _field("statuses", 2, msg, "DescriptorStatus", repeated=True),
                _field("response_headers_to_add", 3, msg, "HeaderValue", repeated=True),
                _field("request_headers_to_add", 4, msg, "HeaderValue", repeated=True),
                _field("raw_body", 5, b),
            ),
        ],
    )


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def _cls(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


RateLimitRequest: Any = _cls("RateLimitRequest")
RateLimitResponse: Any = _cls("RateLimitResponse")
DescriptorStatus: Any = _cls("DescriptorStatus")
RateLimit: Any = _cls("RateLimit")
HeaderValue: Any = _cls("HeaderValue")
Duration: Any = _cls("Duration")
