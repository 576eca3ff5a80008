"""Which memory allocator the router and Triton processes start with.

An allocator is chosen when a process is exec'd (``LD_PRELOAD``, glibc
tunables, ``PYTHONMALLOC``), so it is the launcher's job: this module for the
development stack, tests and benchmarks; the Helm chart's ``allocator`` values
for clusters (same variables). Measured on the 2 vCPU dev VM
(docs/benchmarks.md, "Allocator and huge pages"): jemalloc with transparent
huge pages cuts the router's CPU per request by ~8-11%; Triton's (server +
Python-backend stub) moved 2%, within noise, so Triton stays on ``system``.
Most of the gain is fewer TLB misses: on this nested-virtualised VM every
request starts with cold caches and TLB, and a miss costs a two-level page walk.

Modes:

- ``jemalloc``: preload jemalloc with THP for its arenas and metadata, and let
  Python allocate through it (``PYTHONMALLOC=malloc``) instead of pymalloc's
  4 KiB-page arenas. If the library is missing the loader only warns; the
  glibc tunable set alongside keeps the fallback on huge pages.
- ``hugepages``: glibc's own malloc on THP (``glibc.malloc.hugetlb=1``, glibc
  >= 2.35); pymalloc stays. About half the gain, no extra package.
- ``system``: nothing set (the baseline).
- ``auto``: ``jemalloc`` where the library is installed, else ``hugepages``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal, get_args

Allocator = Literal["auto", "jemalloc", "hugepages", "system"]
MODES: tuple[Allocator, ...] = get_args(Allocator)

# Debian's libjemalloc2 (a dependency of redis-server; `make venv` installs it).
JEMALLOC_PATHS: tuple[Path, ...] = (
    Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    Path("/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"),
)
GLIBC_HUGEPAGES = "glibc.malloc.hugetlb=1"
JEMALLOC_CONF = "thp:always,metadata_thp:always"
VARIABLES = ("LD_PRELOAD", "MALLOC_CONF", "PYTHONMALLOC", "GLIBC_TUNABLES")
"""Every variable a mode may set: ``system`` clears them all."""


def find_jemalloc(candidates: Iterable[Path] = JEMALLOC_PATHS) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def resolve(mode: Allocator, candidates: Iterable[Path] = JEMALLOC_PATHS) -> Allocator:
    """``auto`` made concrete on this machine; other modes unchanged."""
    if mode != "auto":
        return mode
    return "jemalloc" if find_jemalloc(candidates) is not None else "hugepages"


def allocator_env(
    mode: Allocator = "auto", *, candidates: Iterable[Path] = JEMALLOC_PATHS
) -> dict[str, str]:
    """The environment a process needs for ``mode``; empty strings clear a
    variable the parent may have set (``LD_PRELOAD=""`` preloads nothing)."""
    cleared = dict.fromkeys(VARIABLES, "")
    candidates = list(candidates)
    jemalloc = find_jemalloc(candidates)
    mode = resolve(mode, candidates)
    if mode == "system":
        return cleared
    if mode == "hugepages":
        return cleared | {"GLIBC_TUNABLES": GLIBC_HUGEPAGES}
    if jemalloc is None:
        raise FileNotFoundError(
            "allocator 'jemalloc': libjemalloc.so.2 not found (apt-get install libjemalloc2)"
        )
    return {
        "LD_PRELOAD": str(jemalloc),
        "MALLOC_CONF": JEMALLOC_CONF,
        "PYTHONMALLOC": "malloc",
        "GLIBC_TUNABLES": GLIBC_HUGEPAGES,
    }
