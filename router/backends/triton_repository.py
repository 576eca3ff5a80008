"""Triton's model repository API, for the registry (explicit model-control mode).

In explicit mode Triton serves exactly what it was asked to load. The registry
decides which versions of a model are loaded: each call sends the model's own
``config.pbtxt``, parsed with Triton's model-config protobuf schema, with its
``version_policy`` replaced by the exact version set. Triton compares the new
config with the running one ignoring the version policy, so versions that stay
in the set keep serving untouched while others load or unload: the
last-known-good stays warm across every registration.

Also here: parsing ``config.pbtxt`` (the registry validates it before any load)
and warmup inference, because both need tritonclient, which only backends import.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import InferInput, InferRequestedOutput, model_config_pb2
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from router.registry.errors import RegistrationError
from router.registry.models import ServingConfig

_DTYPES = {
    model_config_pb2.TYPE_FP32: "FP32",
    model_config_pb2.TYPE_FP64: "FP64",
    model_config_pb2.TYPE_INT64: "INT64",
    model_config_pb2.TYPE_INT32: "INT32",
}


def parse_config_text(text: str, source: str) -> model_config_pb2.ModelConfig:
    """``config.pbtxt`` text -> ModelConfig, with Triton's own schema.

    Unknown fields or malformed text raise ``RegistrationError("config_invalid")``.
    """
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except (text_format.ParseError, DecodeError) as e:
        raise RegistrationError(
            "config_invalid", f"{source} is not a valid model config: {e}"
        ) from e
    return config


def serving_config(config: model_config_pb2.ModelConfig) -> ServingConfig:
    """The fields the registry checks against the version's metadata."""

    def dims(t: model_config_pb2.ModelInput | model_config_pb2.ModelOutput) -> tuple[int, ...]:
        return tuple(int(d) for d in t.dims)

    return ServingConfig(
        name=config.name,
        backend=config.backend or config.platform,
        max_batch_size=int(config.max_batch_size),
        inputs=tuple((i.name, _DTYPES.get(i.data_type, "OTHER"), dims(i)) for i in config.input),
        outputs=tuple((o.name, _DTYPES.get(o.data_type, "OTHER"), dims(o)) for o in config.output),
    )


def read_serving_config(model_dir: Path) -> tuple[ServingConfig, bytes]:
    """Parse ``<model_dir>/config.pbtxt``; returns the summary and the raw bytes."""
    path = model_dir / "config.pbtxt"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RegistrationError(
            "config_missing", f"no readable config.pbtxt in {model_dir.name}/"
        ) from e
    return serving_config(parse_config_text(raw.decode(errors="replace"), "config.pbtxt")), raw


class TritonRepository:
    """Implements ``router.registry.service.ModelServerControl`` for one Triton."""

    def __init__(self, url: str, repository: Path, *, timeout_s: float = 120.0) -> None:
        self.url = url
        self.repository = repository
        self._timeout_s = timeout_s
        self._client: InferenceServerClient | None = None
        # One model's load requests are serialized: two concurrent loads with
        # different version sets would race inside Triton.
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        self._client = InferenceServerClient(url=self.url)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _c(self) -> InferenceServerClient:
        assert self._client is not None, "TritonRepository.start() was not called"
        return self._client

    async def load_versions(self, model: str, versions: Iterable[int]) -> None:
        """Make exactly ``versions`` of ``model`` loaded (others unload)."""
        wanted = sorted(set(versions))
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            if not wanted:
                try:
                    await self._c().unload_model(model, client_timeout=self._timeout_s)
                except InferenceServerException as e:
                    raise RegistrationError(
                        "unload_failed", f"Triton could not unload {model}"
                    ) from e
                return
            config = parse_config_text(
                (self.repository / model / "config.pbtxt").read_text(), "config.pbtxt"
            )
            config.version_policy.CopyFrom(
                model_config_pb2.ModelVersionPolicy(
                    specific=model_config_pb2.ModelVersionPolicy.Specific(versions=wanted)
                )
            )
            body = json_format.MessageToJson(config, preserving_proto_field_name=True)
            try:
                await self._c().load_model(model, config=body, client_timeout=self._timeout_s)
            except InferenceServerException as e:
                raise RegistrationError(
                    "load_failed", f"Triton could not load {model} versions {wanted}: {e.message()}"
                ) from e

    async def loaded_versions(self, model: str) -> frozenset[int]:
        """Versions of ``model`` Triton reports READY."""
        index = await self._c().get_model_repository_index(as_json=True, client_timeout=5.0)
        out = set()
        for m in index.get("models", []):
            if m.get("name") == model and m.get("state") == "READY" and m.get("version"):
                out.add(int(m["version"]))
        return frozenset(out)

    async def warmup(
        self, model: str, version: int, input_name: str, output_name: str, rows: np.ndarray
    ) -> np.ndarray:
        """Score ``rows`` on the loaded version; raises ``RegistrationError`` when
        Triton refuses, or the output is not one finite score per row."""
        deadline = time.monotonic() + self._timeout_s
        while not await self._ready(model, version):
            if time.monotonic() > deadline:
                raise RegistrationError("warmup_failed", f"{model}@{version} never became ready")
            await asyncio.sleep(0.1)
        inp = InferInput(input_name, list(rows.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        try:
            result = await self._c().infer(
                model,
                [inp],
                model_version=str(version),
                outputs=[InferRequestedOutput(output_name)],
                client_timeout=30.0,
            )
        except InferenceServerException as e:
            raise RegistrationError(
                "warmup_failed", f"warmup inference on {model}@{version} failed: {e.message()}"
            ) from e
        out = result.as_numpy(output_name)
        if out is None or out.reshape(-1).shape[0] != rows.shape[0]:
            raise RegistrationError("warmup_failed", f"{model}@{version} returned a wrong shape")
        scores = np.asarray(out, dtype=np.float64).reshape(-1)
        if not np.isfinite(scores).all():
            raise RegistrationError("warmup_failed", f"{model}@{version} returned NaN or Inf")
        return scores

    async def _ready(self, model: str, version: int) -> bool:
        try:
            return bool(await self._c().is_model_ready(model, str(version), client_timeout=2.0))
        except InferenceServerException:
            return False
