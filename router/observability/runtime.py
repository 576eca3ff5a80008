"""Facts about the running process worth one start-up log line.

The allocator is chosen by whoever launches the router (``LD_PRELOAD`` and
friends: the Helm chart's ``router.allocator``, scripts/allocator.py in
development). A preload that fails only prints a loader warning and the router
runs on glibc malloc, ~8-11% more CPU per request, so the start-up log says
which one actually got loaded.
"""

from __future__ import annotations

from pathlib import Path

PROC_MAPS = Path("/proc/self/maps")


def malloc_library(maps: Path = PROC_MAPS) -> str:
    """``jemalloc`` when it is mapped into this process, else ``glibc``;
    ``unknown`` where /proc is unavailable."""
    try:
        text = maps.read_text()
    except OSError:
        return "unknown"
    return "jemalloc" if "libjemalloc" in text else "glibc"
