"""A copy of the router with its per-request modules compiled by mypyc.

The question it answers: is the router's CPU per request the interpreter
running our pipeline code, or the C, kernel and cache costs underneath it? The
code is ``mypy --strict`` clean, so mypyc (shipped with mypy) compiles the hot
modules to C extensions unchanged. ``bench.router_cpu --against OUT`` then runs
the compiled copy beside this tree on one Triton, alternating h2load runs:

    python -m bench.compiled_tree --out build/mypyc
    python -m bench.router_cpu --build build --against build/mypyc --repeats 5 --requests 4000

Not for serving: modules defining pydantic models (routing, catalog) are left
out (mypyc cannot compile them), tests run on the interpreted tree, and a
compiled module rejects at run time any value whose type differs from its
annotation, which only the interpreted tree's test suite has exercised.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HOT_MODULES = (
    "router/errors.py",
    "router/transport/fastlane.py",
    "router/transport/h1_framing.py",
    "router/transport/identity.py",
    "router/pipeline/predict.py",
    "router/pipeline/features.py",
    "router/pipeline/auth.py",
    "router/pipeline/admission.py",
    "router/pipeline/fallback.py",
    "router/pipeline/breaker.py",
    "router/pipeline/cache.py",
    "router/pipeline/inference.py",
    "router/pipeline/quality.py",
    "router/observability/quality.py",
    "router/observability/metrics.py",
    "router/observability/tracing.py",
    "router/backends/triton_http.py",
    "router/backends/feast_store.py",
    "router/backends/feast_values.py",
)
"""Every module on the fast lane's per-request path that mypyc accepts."""


def build(out: Path) -> list[Path]:
    """Copy the tree's router package (and mypy's configuration) to ``out`` and
    compile ``HOT_MODULES`` in place there; returns the extension modules."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(ROOT / "router", out / "router", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", out / "pyproject.toml")
    mypyc = Path(sys.executable).with_name("mypyc")
    subprocess.run([str(mypyc), *HOT_MODULES], cwd=out, check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(out / "build", ignore_errors=True)
    built = sorted(out.rglob("*.so"))
    if len([p for p in built if p.parent != out]) != len(HOT_MODULES):
        raise SystemExit(f"mypyc built {len(built)} extension modules for {len(HOT_MODULES)}")
    return built


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "mypyc")
    args = p.parse_args(argv)
    built = build(args.out.resolve())
    print(f"{len(built)} extension modules under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
