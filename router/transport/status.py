"""An ``InferlineError`` as a gRPC status, independent of how it is sent.

The gRPC interceptor sends it as a status and trailers; the HTTP/1.1 fast lane
(``transport/fastlane.py``) sends the same fields as HTTP/1.1 trailers that the
edge passes on (or as headers, in its ``application/x-protobuf`` framing). One
function decides all of them, so a caller sees the same status, message and
details whichever way its request travelled.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from router.errors import InferlineError, ResourceExhausted

# google.rpc.Code numbers by our Code names (equal to grpc.StatusCode names).
CODE_NUMBERS: dict[str, int] = {
    "OK": code_pb2.OK,
    "CANCELLED": code_pb2.CANCELLED,
    "UNKNOWN": code_pb2.UNKNOWN,
    "INVALID_ARGUMENT": code_pb2.INVALID_ARGUMENT,
    "DEADLINE_EXCEEDED": code_pb2.DEADLINE_EXCEEDED,
    "NOT_FOUND": code_pb2.NOT_FOUND,
    "PERMISSION_DENIED": code_pb2.PERMISSION_DENIED,
    "RESOURCE_EXHAUSTED": code_pb2.RESOURCE_EXHAUSTED,
    "FAILED_PRECONDITION": code_pb2.FAILED_PRECONDITION,
    "UNIMPLEMENTED": code_pb2.UNIMPLEMENTED,
    "INTERNAL": code_pb2.INTERNAL,
    "UNAVAILABLE": code_pb2.UNAVAILABLE,
    "UNAUTHENTICATED": code_pb2.UNAUTHENTICATED,
}


@dataclasses.dataclass(frozen=True)
class WireStatus:
    """What a caller receives for an error: code name, message, optional
    ``grpc-status-details-bin`` payload and ``retry-after`` seconds."""

    code: str
    message: str
    details: bytes | None = None
    retry_after: int | None = None

    @property
    def number(self) -> int:
        return CODE_NUMBERS[self.code]


def wire_status(e: InferlineError) -> WireStatus:
    if isinstance(e, ResourceExhausted):
        return _quota_status(e)
    return WireStatus(e.code.name, e.public_message)


def _quota_status(e: ResourceExhausted) -> WireStatus:
    """RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure details (google.rpc)."""
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(
            seconds=int(e.retry_after_s), nanos=int((e.retry_after_s % 1) * 1e9)
        )
    )
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=e.quota_subject, description=e.public_message
            )
        ]
    )
    details = []
    for msg in (retry, quota):
        packed = any_pb2.Any()
        packed.Pack(msg)
        details.append(packed)
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED, message=e.public_message, details=details
    )
    return WireStatus(
        "RESOURCE_EXHAUSTED",
        e.public_message,
        status.SerializeToString(),
        max(1, round(e.retry_after_s)),
    )
