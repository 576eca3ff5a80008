"""Canary-inference probes: health that tells the truth.

Triton keeps reporting a Python-backend model READY after its stub process
died, while every request to it fails. So readiness is not asked, it is
measured: every ``interval_s`` each routed version in each pool scores one
row of its training defaults. A failure trips that version's breaker at once
(traffic falls down the ladder without waiting for real requests to fail); a
success closes it. The router reports NOT_SERVING when no version anywhere can
score, so load balancers prefer routers that can.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import structlog

from router.errors import InferlineError
from router.pipeline.breaker import BreakerRegistry, model_breaker_name
from router.pipeline.inference import ModelServer, score
from router.pipeline.snapshot import Snapshot

log = structlog.get_logger("router.probe")


class Prober:
    def __init__(
        self,
        *,
        snapshot: Callable[[], Snapshot],
        servers: Callable[[str], ModelServer],
        breakers: BreakerRegistry,
        interval_s: float,
        timeout_s: float,
        on_round: Callable[[dict[str, bool]], Awaitable[None]],
    ) -> None:
        self._snapshot = snapshot
        self._servers = servers
        self._breakers = breakers
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._on_round = on_round
        self.last: dict[str, bool] = {}

    async def probe_once(self) -> dict[str, bool]:
        snap = self._snapshot()
        pools = {"default", *(t.pool for t in snap.table.tenants.values())}
        targets = [(pool, v) for pool in sorted(pools) for v in snap.catalog]

        async def one(pool: str, version_name: str, coro: Awaitable[object]) -> bool:
            try:
                await coro
            except InferlineError as e:
                log.warning("probe.failed", target=version_name, code=e.code.name)
                self._breakers.get(version_name).trip()
                return False
            self._breakers.get(version_name).record_success()
            return True

        results = await asyncio.gather(
            *(
                one(
                    pool,
                    model_breaker_name(pool, v.model, v.version),
                    score(
                        self._servers(pool),
                        v,
                        np.asarray([v.defaults], dtype=np.float32),
                        self._timeout_s,
                    ),
                )
                for pool, v in targets
            )
        )
        self.last = {
            model_breaker_name(pool, v.model, v.version): ok
            for (pool, v), ok in zip(targets, results, strict=True)
        }
        return self.last

    async def run(self) -> None:
        while True:
            try:
                await self._on_round(await self.probe_once())
            except InferlineError:
                pass
            except Exception:
                # A bug in one round must not end probing for the process's
                # life (breakers would then only ever learn from live traffic).
                log.exception("probe.round_failed")
            await asyncio.sleep(self._interval_s)
