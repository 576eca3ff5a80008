"""The router's one error root.

Every failure a caller may see is an ``InferlineError`` carrying a status code
and a public message (safe to return: no internals, no inputs echoed beyond
field names). The transport's error interceptor maps the code to a gRPC status;
anything else becomes INTERNAL with a generic message and a logged traceback.
The pipeline and backends never import grpc, so codes are our own enum whose
member names equal ``grpc.StatusCode`` names.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


class InferlineError(Exception):
    """Base of every error with a caller-visible status."""

    code: Code = Code.INTERNAL

    def __init__(self, public_message: str, *, code: Code | None = None) -> None:
        super().__init__(public_message)
        self.public_message = public_message
        if code is not None:
            self.code = code


class InvalidArgument(InferlineError):
    code = Code.INVALID_ARGUMENT


class NotFound(InferlineError):
    code = Code.NOT_FOUND


class Unauthenticated(InferlineError):
    code = Code.UNAUTHENTICATED


class PermissionDenied(InferlineError):
    code = Code.PERMISSION_DENIED


class ResourceExhausted(InferlineError):
    """Over a quota or shed under load. Carries what a well-behaved client needs
    to back off: a retry-after hint and which quota was exceeded (sent as
    google.rpc RetryInfo and QuotaFailure details by the transport)."""

    code = Code.RESOURCE_EXHAUSTED

    def __init__(
        self, public_message: str, *, retry_after_s: float = 1.0, quota_subject: str = ""
    ) -> None:
        super().__init__(public_message)
        self.retry_after_s = retry_after_s
        self.quota_subject = quota_subject


class FailedPrecondition(InferlineError):
    code = Code.FAILED_PRECONDITION


class Unavailable(InferlineError):
    """A dependency is down or overloaded; the caller may retry with backoff."""

    code = Code.UNAVAILABLE


class DeadlineExceeded(InferlineError):
    code = Code.DEADLINE_EXCEEDED


class Unimplemented(InferlineError):
    """A request the server understands but does not support (e.g. a compressed
    gRPC message on the fast lane)."""

    code = Code.UNIMPLEMENTED


class ConfigError(Exception):
    """Invalid configuration (settings, routing table, model metadata).

    Raised at start-up or on reload, never to a caller: a bad reload keeps the
    previous snapshot.
    """
