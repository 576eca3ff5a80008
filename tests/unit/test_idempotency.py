from __future__ import annotations

import asyncio

import pytest

from router.errors import Code, InferlineError, Unavailable
from router.pipeline.idempotency import Idempotency, MemoryIdempotencyStore


async def test_same_key_computes_once_even_when_concurrent() -> None:
    idem = Idempotency(MemoryIdempotencyStore(10), ttl_s=60)
    calls = 0

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return b"resp-%d" % calls

    fp = Idempotency.fingerprint(b"req")
    results = await asyncio.gather(*(idem.run("k", fp, compute) for _ in range(5)))
    assert results == [b"resp-1"] * 5 and calls == 1
    assert await idem.run("k", fp, compute) == b"resp-1" and calls == 1


async def test_key_reuse_with_other_request_is_invalid_argument() -> None:
    idem = Idempotency(MemoryIdempotencyStore(10), ttl_s=60)

    async def compute() -> bytes:
        return b"x"

    await idem.run("k", Idempotency.fingerprint(b"a"), compute)
    with pytest.raises(InferlineError) as exc:
        await idem.run("k", Idempotency.fingerprint(b"b"), compute)
    assert exc.value.code is Code.INVALID_ARGUMENT


async def test_errors_are_not_stored() -> None:
    idem = Idempotency(MemoryIdempotencyStore(10), ttl_s=60)
    attempts = 0

    async def flaky() -> bytes:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise Unavailable("down")
        return b"ok"

    fp = Idempotency.fingerprint(b"a")
    with pytest.raises(InferlineError):
        await idem.run("k", fp, flaky)
    assert await idem.run("k", fp, flaky) == b"ok" and attempts == 2


async def test_a_waiting_retry_runs_again_when_the_first_attempt_fails() -> None:
    idem = Idempotency(MemoryIdempotencyStore(10), ttl_s=60)
    fp = Idempotency.fingerprint(b"a")
    started = asyncio.Event()

    async def failing() -> bytes:
        started.set()
        await asyncio.sleep(0.01)
        raise Unavailable("down")

    async def healthy() -> bytes:
        return b"ok"

    first = asyncio.create_task(idem.run("k", fp, failing))
    await started.wait()
    retry = asyncio.create_task(idem.run("k", fp, healthy))
    with pytest.raises(InferlineError) as exc:
        await first
    assert exc.value.code is Code.UNAVAILABLE
    assert await retry == b"ok"
    assert await idem.run("k", fp, failing) == b"ok"  # the retry's answer was stored


async def test_a_waiting_retry_survives_the_first_attempt_being_cancelled() -> None:
    idem = Idempotency(MemoryIdempotencyStore(10), ttl_s=60)
    fp = Idempotency.fingerprint(b"a")
    started = asyncio.Event()

    async def slow() -> bytes:
        started.set()
        await asyncio.sleep(10)
        return b"late"

    async def healthy() -> bytes:
        return b"ok"

    first = asyncio.create_task(idem.run("k", fp, slow))
    await started.wait()
    retry = asyncio.create_task(idem.run("k", fp, healthy))
    await asyncio.sleep(0)
    first.cancel()  # the first caller gave up (its deadline, its connection)
    assert await retry == b"ok" and not retry.cancelled()
    assert first.cancelled()


async def test_a_cancelled_waiter_leaves_the_attempt_it_waits_on_running() -> None:
    idem = Idempotency(MemoryIdempotencyStore(10), ttl_s=60)
    fp = Idempotency.fingerprint(b"a")
    release = asyncio.Event()

    async def gated() -> bytes:
        await release.wait()
        return b"first"

    first = asyncio.create_task(idem.run("k", fp, gated))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(idem.run("k", fp, gated))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    assert await first == b"first"
