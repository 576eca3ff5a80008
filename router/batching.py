"""A bounded queue drained in batches by one background task.

The audit trail's prediction records and the payload capture share this shape:
the request only ``offer``s an item (never blocks; False when the queue is
full, and the caller counts the drop), and one task hands batches to ``write``
(which does its blocking work in a thread). With ``linger_s`` the task waits
that long after the first item of a batch, so one write (and one fsync) covers
what arrives meanwhile: group commit. ``stop`` writes what is queued first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("router.batching")


class BatchQueue(Generic[T]):
    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[None]],
        *,
        size: int,
        batch_max: int,
        linger_s: float = 0.0,
    ) -> None:
        self._write = write
        self._queue: asyncio.Queue[T] = asyncio.Queue(size)
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._task: asyncio.Task[None] | None = None

    def offer(self, item: T) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def qsize(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if self._linger_s > 0 and self._queue.qsize() < self._batch_max:
                await asyncio.sleep(self._linger_s)
            batch = [first]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except Exception:
                # The writer task outlives one bad batch: a dead task would
                # silently fill the queue and drop everything after it.
                log.exception("batch_queue.write_failed", items=len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to ``timeout_s``), then stop the task."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
