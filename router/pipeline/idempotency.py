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
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
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
        """The stored response for ``key``, or ``compute()``'s, stored for the TTL."""
        stored = await self._store.get(key)
        if stored is not None:
            return self._unwrap(stored, fingerprint)
        pending = self._inflight.get(key)
        if pending is not None:
            return self._unwrap(await asyncio.shield(pending), fingerprint)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            response = await compute()
            value = fingerprint + response
            await self._store.put(key, value, self._ttl_s)
            future.set_result(value)
            return response
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # mark retrieved: waiters re-raise, nobody else must
            raise
        finally:
            del self._inflight[key]
