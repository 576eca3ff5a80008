"""``python -m router``: run the inference router (settings from INFERLINE_* env).

With ``server.workers`` > 1 this process becomes a small supervisor: it starts
that many router processes on the same port (SO_REUSEPORT; the kernel spreads
connections), forwards SIGTERM/SIGINT to them and exits when they all have.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from types import FrameType

from router.app import run
from router.settings import Settings


def _worker_settings(settings: Settings, i: int) -> Settings:
    """Worker i scrapes on metrics.port + i (each process has its own counters)."""
    port = settings.metrics.port + i if settings.metrics.port else 0
    return settings.model_copy(
        update={"metrics": settings.metrics.model_copy(update={"port": port})}
    )


def _supervise(settings: Settings) -> int:
    if settings.server.port == 0 or settings.server.bridge_port == 0:
        print("server.workers > 1 needs a fixed server.port (and bridge_port)", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=run, args=(_worker_settings(settings, i),), name=f"router-{i}")
        for i in range(settings.server.workers)
    ]

    def forward(_signum: int, _frame: FrameType | None) -> None:
        # SIGTERM each worker: it stops accepting, drains, and exits.
        for p in procs:
            if p.is_alive():
                p.terminate()

    for p in procs:
        p.start()
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)


def main() -> int:
    settings = Settings()
    if settings.server.workers > 1:
        return _supervise(settings)
    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
