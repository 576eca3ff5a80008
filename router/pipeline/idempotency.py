"""Idempotent retries: same key within its TTL -> the same response, scored once.

A client retrying after a timeout must not be scored twice (a fraud check
that flips between retries is worse than a slow one), nor re-assigned an
experiment arm. The first response for (tenant, key) is stored with a
fingerprint of the request; a retry with the same key gets those exact bytes
back, a concurrent retry waits for the first to finish, and reusing a key for
a different request is refused. Only answered requests are stored: an error
is not an answer, so its retry runs again.

Stores are pluggable: in-process (embedded default, one router) or Redis
(several routers behind one balancer).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from router.errors import InvalidArgument
from router.pipeline.cache import TtlCache

_FP = 32  # sha256 digest length, stored in front of the response


class IdempotencyStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...


class MemoryIdempotencyStore:
    def __init__(self, max_entries: int) -> None:
        self._cache: TtlCache[bytes] = TtlCache(max_entries)

    async def get(self, key: str) -> bytes | None:
        return self._cache.get(key)

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._cache.put(key, value, ttl_s)


class Idempotency:
    def __init__(self, store: IdempotencyStore, ttl_s: float) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._inflight: dict[str, asyncio.Future[bytes | None]] = {}
        self.replayed = 0

    @staticmethod
    def fingerprint(request_bytes: bytes) -> bytes:
        return hashlib.sha256(request_bytes).digest()

    def _unwrap(self, stored: bytes, fingerprint: bytes) -> bytes:
        if stored[:_FP] != fingerprint:
            raise InvalidArgument("idempotency_key was already used for a different request")
        self.replayed += 1
        return stored[_FP:]

    async def run(
        self, key: str, fingerprint: bytes, compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        """The stored response for ``key``, or ``compute()``'s, stored for the TTL.

        A retry that arrives while the first attempt is in flight waits for it;
        if that attempt ends without an answer (an error, its own deadline, its
        caller gone), the retry runs its own ``compute()`` rather than inheriting
        a failure that was not its own.
        """
        while True:
            stored = await self._store.get(key)
            if stored is not None:
                return self._unwrap(stored, fingerprint)
            pending = self._inflight.get(key)
            if pending is None:
                break
            # shield: this caller's own cancellation must not cancel the attempt
            # the others wait on. None: that attempt gave no answer; go again.
            value = await asyncio.shield(pending)
            if value is not None:
                return self._unwrap(value, fingerprint)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        value = None
        try:
            response = await compute()
            value = fingerprint + response
            await self._store.put(key, value, self._ttl_s)
            return response
        finally:
            del self._inflight[key]
            future.set_result(value)
