"""The launcher's allocator modes (scripts/allocator.py) and the router's
start-up report of which malloc it actually got (router/observability/runtime.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.observability.runtime import malloc_library
from scripts.allocator import GLIBC_HUGEPAGES, VARIABLES, allocator_env, find_jemalloc, resolve


@pytest.fixture
def libjemalloc(tmp_path: Path) -> Path:
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"\x7fELF")
    return lib


def test_jemalloc_mode_preloads_it_with_huge_pages_and_python_on_malloc(libjemalloc: Path) -> None:
    env = allocator_env("jemalloc", candidates=[libjemalloc])
    assert env == {
        "LD_PRELOAD": str(libjemalloc),
        "MALLOC_CONF": "thp:always,metadata_thp:always",
        "PYTHONMALLOC": "malloc",
        # If the preload fails the loader only warns: glibc then still uses THP.
        "GLIBC_TUNABLES": GLIBC_HUGEPAGES,
    }


def test_auto_prefers_jemalloc_and_falls_back_to_glibc_huge_pages(
    libjemalloc: Path, tmp_path: Path
) -> None:
    assert allocator_env("auto", candidates=[libjemalloc])["LD_PRELOAD"] == str(libjemalloc)
    fallback = allocator_env("auto", candidates=[tmp_path / "missing.so"])
    assert fallback["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert fallback["LD_PRELOAD"] == "" and fallback["PYTHONMALLOC"] == ""  # pymalloc stays
    assert resolve("auto", [libjemalloc]) == "jemalloc"
    assert resolve("auto", [tmp_path / "missing.so"]) == "hugepages"
    assert resolve("system", [libjemalloc]) == "system"


def test_system_mode_clears_every_variable_a_parent_may_have_set(libjemalloc: Path) -> None:
    env = allocator_env("system", candidates=[libjemalloc])
    assert env == dict.fromkeys(VARIABLES, "")


def test_jemalloc_mode_without_the_library_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="libjemalloc2"):
        allocator_env("jemalloc", candidates=[tmp_path / "missing.so"])
    assert find_jemalloc([tmp_path / "missing.so"]) is None


def test_malloc_library_reads_the_process_mappings(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f10 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
        "7f20-7f30 r-xp 00000000 08:01 43 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    )
    assert malloc_library(maps) == "jemalloc"
    maps.write_text("7f20-7f30 r-xp 00000000 08:01 43 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert malloc_library(maps) == "glibc"
    assert malloc_library(tmp_path / "no-proc") == "unknown"
