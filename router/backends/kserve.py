"""Open Inference Protocol (KServe v2) pass-through to Triton.

Existing tooling (tritonclient, perf tools) speaks
``inference.GRPCInferenceService``. The router serves it itself so those
clients get the same authentication, authorization, admission and routing as
Predict, then forwards the request bytes to the tenant's Triton pool. Only the
model name and version are parsed and rewritten; tensors are never decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError, Message
from tritonclient.grpc import service_pb2

from router.errors import Code, DeadlineExceeded, InferlineError, InvalidArgument, Unavailable

SERVICE = "inference.GRPCInferenceService"

# Request type per method, and the fields naming the model in it.
_REQUESTS: dict[str, tuple[type[Message], str, str]] = {
    "ModelReady": (service_pb2.ModelReadyRequest, "name", "version"),
    "ModelMetadata": (service_pb2.ModelMetadataRequest, "name", "version"),
    "ModelInfer": (service_pb2.ModelInferRequest, "model_name", "model_version"),
}
MODEL_METHODS = tuple(_REQUESTS)
SERVER_METHODS = ("ServerLive", "ServerReady")

# Caller-caused statuses keep their code; the rest become UNAVAILABLE.
_PASS_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: Code.NOT_FOUND,
}


@dataclass(frozen=True, slots=True)
class ModelCall:
    method: str
    model: str
    version: str
    message: Message


def parse(method: str, raw: bytes) -> ModelCall:
    cls, name_field, version_field = _REQUESTS[method]
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except DecodeError as e:
        raise InvalidArgument("request body is not a valid protobuf message") from e
    return ModelCall(method, getattr(msg, name_field), getattr(msg, version_field), msg)


def rewrite(call: ModelCall, version: int) -> bytes:
    """The request with the resolved version pinned (an alias never reaches Triton)."""
    _, _, version_field = _REQUESTS[call.method]
    setattr(call.message, version_field, str(version))
    return call.message.SerializeToString()


def server_response(method: str, ready: bool) -> bytes:
    msg: Message = (
        service_pb2.ServerLiveResponse(live=ready)
        if method == "ServerLive"
        else service_pb2.ServerReadyResponse(ready=ready)
    )
    return msg.SerializeToString()


class Forwarder:
    """Raw-bytes unary calls to one Triton (no protobuf decode of tensors)."""

    def __init__(self, url: str) -> None:
        self._channel = grpc.aio.insecure_channel(url)
        self._calls = {
            m: self._channel.unary_unary(f"/{SERVICE}/{m}") for m in (*MODEL_METHODS, "ServerReady")
        }

    async def forward(self, method: str, raw: bytes, timeout_s: float) -> bytes:
        try:
            out: bytes = await self._calls[method](raw, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded("deadline exceeded during inference") from e
            if code in _PASS_CODES:
                raise InferlineError(e.details() or code.name, code=_PASS_CODES[code]) from e
            raise Unavailable("model server unavailable") from e
        return out

    async def close(self) -> None:
        await self._channel.close()
