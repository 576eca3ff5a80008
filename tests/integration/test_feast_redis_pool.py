"""The direct Redis client's connection pool when callers give up (a real
redis-server behind bench.delay_proxy, which makes it slow or silent on demand):
a connection whose caller's budget ran out reads the rest of its answer and is
reused, not closed and replaced; one whose answer never comes is closed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.delay_proxy import DelayProxy
from router.backends.feast_redis import RespClient, encode
from scripts.stack import RedisServer

PING = encode(b"PING")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[DelayProxy]:
    with RedisServer(tmp_path / "logs") as redis:
        p = DelayProxy(redis.url).start()
        try:
            yield p
        finally:
            p.stop()


def _client(proxy: DelayProxy) -> RespClient:
    host, _, port = proxy.address.rpartition(":")
    return RespClient(host, int(port), password=None, db=0)


async def _timed_out(client: RespClient, budget_s: float) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(budget_s):
            await client.call([PING])


async def test_slow_answer_keeps_its_connection(proxy: DelayProxy) -> None:
    client = _client(proxy)
    try:
        assert await client.call([PING]) == [b"PONG"]
        proxy.delay_s = 0.03
        await _timed_out(client, 0.005)
        await asyncio.sleep(0.1)  # the late PONG arrives and is read
        proxy.delay_s = 0.0
        assert await client.call([PING, PING]) == [b"PONG", b"PONG"]  # no stray reply
        assert proxy.connections == 1  # never reconnected
    finally:
        client.close()


async def test_slow_set_up_is_kept_for_the_next_caller(proxy: DelayProxy) -> None:
    """A new connection whose first answer outlasts every caller's budget would
    never be kept if each timeout closed it."""
    proxy.connect_delay_s = 0.03
    client = _client(proxy)
    try:
        await _timed_out(client, 0.005)
        await asyncio.sleep(0.1)
        async with asyncio.timeout(0.02):  # now on the warmed connection
            assert await client.call([PING]) == [b"PONG"]
        assert proxy.connections == 1
    finally:
        client.close()


async def test_silent_connection_is_closed_after_the_drain_limit(proxy: DelayProxy) -> None:
    client = _client(proxy)
    client.pool.drain_s = 0.1
    try:
        proxy.blackhole = True
        await _timed_out(client, 0.005)
        assert len(client.pool.draining) == 1
        await asyncio.sleep(0.15)
        assert not client.pool.draining and not client.pool.idle  # closed, not pooled
        proxy.blackhole = False
        assert await client.call([PING]) == [b"PONG"]  # a fresh connection
        assert proxy.connections == 2
    finally:
        client.close()
