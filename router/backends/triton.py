"""Triton backend: inference over ``tritonclient.grpc.aio``.

One long-lived client (one HTTP/2 channel) opened at start-up and closed at
shutdown. Every call carries the caller's remaining deadline as its gRPC
timeout, so no inference outlives the request it serves. Failures are mapped
by gRPC status code, never by message text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from router.backends.kserve import Forwarder
from router.backends.triton_http import TritonHttpClient
from router.errors import Code, DeadlineExceeded, InferlineError, Unavailable

_STATUS = {str(code): code for code in grpc.StatusCode}


def map_triton_error(e: InferenceServerException) -> InferlineError:
    """Translate a Triton failure into a caller-visible error, by status code."""
    code = _STATUS.get(e.status() or "")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("deadline exceeded during inference")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The router built the tensor: a rejection is our bug, not the caller's.
        return InferlineError("internal error", code=Code.INTERNAL)
    # UNAVAILABLE, NOT_FOUND (version not loaded), RESOURCE_EXHAUSTED, INTERNAL...
    return Unavailable("model server unavailable")


class TritonModelServer:
    """Implements ``router.pipeline.inference.ModelServer``."""

    def __init__(self, url: str, http_url: str | None = None, max_age_s: float = 0.0) -> None:
        self.url = url
        self.http_url = http_url
        self._max_age_s = max_age_s
        self._client: InferenceServerClient | None = None
        self._http: TritonHttpClient | None = None
        self.forwarder: Forwarder | None = None

    async def start(self, ready_timeout_s: float) -> None:
        self._client = InferenceServerClient(url=self.url)
        self.forwarder = Forwarder(self.url)
        if self.http_url:
            host, _, port = self.http_url.rpartition(":")
            self._http = TritonHttpClient(host, int(port), self._max_age_s)
        try:
            await self._wait_ready(self._client, ready_timeout_s)
        except BaseException:
            await self.close()  # a server that never came up keeps no channels open
            raise

    async def _wait_ready(self, client: InferenceServerClient, ready_timeout_s: float) -> None:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                if await client.is_server_ready(client_timeout=1.0):
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline:
                raise Unavailable(f"Triton at {self.url} not ready after {ready_timeout_s}s")
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self.forwarder is not None:
            await self.forwarder.close()
            self.forwarder = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def is_model_ready(self, model: str, version: int) -> bool:
        assert self._client is not None
        try:
            return bool(await self._client.is_model_ready(model, str(version), client_timeout=1.0))
        except InferenceServerException:
            return False

    def infer(
        self,
        model: str,
        version: int,
        input_name: str,
        output_name: str,
        batch: np.ndarray,
        timeout_s: float,
    ) -> Coroutine[Any, Any, np.ndarray]:
        """The inference's coroutine: the HTTP client's own when there is one (no
        wrapping layer on every request's path), else a gRPC call."""
        assert self._client is not None, "TritonModelServer.start() was not called"
        if self._http is not None:
            return self._http.infer(model, version, input_name, output_name, batch, timeout_s)
        inp = InferInput(input_name, list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch)
        return self._grpc_infer(model, str(version), inp, output_name, timeout_s)

    async def _grpc_infer(
        self, model: str, version: str, inp: InferInput, output_name: str, timeout_s: float
    ) -> np.ndarray:
        assert self._client is not None
        try:
            result = await self._client.infer(
                model,
                [inp],
                model_version=version,
                outputs=[InferRequestedOutput(output_name)],
                client_timeout=timeout_s,
            )
        except InferenceServerException as e:
            raise map_triton_error(e) from e
        out: np.ndarray | None = result.as_numpy(output_name)
        if out is None:
            raise Unavailable("model returned no output")
        return out


class TritonPools:
    """One long-lived client per Triton pool: "default" plus dedicated pools.

    Dedicated tenants are served by their own Triton process (hard isolation);
    the routing table names the pools, and a reload opens clients for new pools
    before the snapshot that uses them goes live.
    """

    def __init__(
        self,
        default_url: str,
        default_http_url: str | None,
        ready_timeout_s: float,
        retire_after_s: float = 30.0,
        http_max_age_s: float = 0.0,
    ) -> None:
        self._ready_timeout_s = ready_timeout_s
        self._http_max_age_s = http_max_age_s
        self._retire_after_s = retire_after_s
        self._default = (default_url, default_http_url)
        self._servers: dict[str, TritonModelServer] = {}
        self._retiring: dict[asyncio.Task[None], TritonModelServer] = {}

    async def start(self) -> None:
        await self.sync({})

    async def sync(self, pools: dict[str, tuple[str, str | None]]) -> None:
        """Make the open clients match ``pools`` (name -> (grpc, http) endpoints,
        plus "default").

        All or nothing: every new or moved pool is started first; if one does
        not come up, the ones just started are closed, the live clients are
        untouched and Unavailable is raised (the reload keeps its old snapshot).
        Replaced and dropped clients are closed ``retire_after_s`` later, not
        at once: requests routed before the swap may still be using them.
        """
        wanted = {"default": self._default, **pools}
        started: dict[str, TritonModelServer] = {}
        try:
            for name, (grpc_url, http_url) in wanted.items():
                current = self._servers.get(name)
                if current is not None and (current.url, current.http_url) == (grpc_url, http_url):
                    continue
                started[name] = server = TritonModelServer(grpc_url, http_url, self._http_max_age_s)
                await server.start(self._ready_timeout_s)
        except BaseException:
            for server in started.values():
                await server.close()
            raise
        retired = [self._servers[name] for name in started if name in self._servers]
        retired += [self._servers.pop(name) for name in set(self._servers) - set(wanted)]
        self._servers.update(started)
        for server in retired:
            task = asyncio.create_task(self._retire(server))
            self._retiring[task] = server
            task.add_done_callback(self._retiring.pop)

    async def _retire(self, server: TritonModelServer) -> None:
        await asyncio.sleep(self._retire_after_s)
        await server.close()

    def get(self, pool: str) -> TritonModelServer:
        try:
            return self._servers[pool]
        except KeyError as e:
            raise Unavailable("model server pool unavailable") from e

    @property
    def default(self) -> TritonModelServer:
        return self._servers["default"]

    async def close(self) -> None:
        for task, server in list(self._retiring.items()):
            task.cancel()
            await server.close()
        for server in self._servers.values():
            await server.close()
        self._servers.clear()
