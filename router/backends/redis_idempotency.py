"""Redis-backed idempotency store, shared by every router in a region."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.errors import Unavailable


class RedisIdempotencyStore:
    def __init__(self, url: str, *, prefix: str = "inferline:idem:", timeout_s: float = 0.05):
        host, _, port = url.rpartition(":")
        self._client = aioredis.Redis(
            host=host, port=int(port), socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._client.get(self._prefix + key)
        except RedisError as e:
            raise Unavailable("idempotency store unavailable") from e
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            # NX: the first writer wins; a racing router's copy is identical anyway.
            await self._client.set(self._prefix + key, value, px=int(ttl_s * 1000), nx=True)
        except RedisError as e:
            raise Unavailable("idempotency store unavailable") from e

    async def close(self) -> None:
        await self._client.aclose()
