"""Locate the Triton Inference Server shipped in the ``nvidia-pytriton`` wheel.

The wheel carries a real ``tritonserver`` binary, its Python backend and one
Python-backend stub per Python minor version. Everything that starts Triton or
writes model configs (launcher, repository builder, GPU scripts) asks this
module where those pieces are, so there is one place that knows the layout.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path


class TritonNotInstalledError(RuntimeError):
    """The pytriton wheel (and so tritonserver) is not importable here."""


def triton_root() -> Path:
    """Directory holding ``bin/``, ``backends/`` and ``python_backend_stubs/``."""
    # Locate without importing: `import pytriton` pulls in its client, whose
    # dependencies are deliberately not installed (the wheel goes in --no-deps).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalledError("nvidia-pytriton is not installed: run `make venv`")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise TritonNotInstalledError(f"no tritonserver binary under {root}")
    return root


def tritonserver_binary() -> Path:
    return triton_root() / "bin" / "tritonserver"


def backends_dir() -> Path:
    return triton_root() / "backends"


def caches_dir() -> Path:
    """Triton's cache implementations (the local response cache ships in the wheel)."""
    return triton_root() / "caches"


def installed_backends(backend_dir: Path | None = None) -> frozenset[str]:
    """Names of the Triton backends present (``python``, ``fil``, ``onnxruntime``...).

    A backend is installed when its directory holds a ``libtriton_<name>.so``
    (the Python backend ships ``libtriton_python.so``).
    """
    root = backend_dir or backends_dir()
    if not root.is_dir():
        return frozenset()
    return frozenset(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("libtriton_*.so")))


def ensure_python_stub(python_version: str | None = None) -> Path:
    """Copy the stub matching the running Python into ``backends/python/``.

    Without it every Python-backend model fails to load with
    "triton_python_backend_stub is not found". Idempotent.
    """
    ver = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    root = triton_root()
    src = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    dst = root / "backends" / "python" / "triton_python_backend_stub"
    if not src.exists():
        raise TritonNotInstalledError(f"no Python-backend stub for Python {ver} in {src.parent}")
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        shutil.copy2(src, dst)
    return dst


def stub_site_packages() -> Path:
    """numpy 1.x installed apart (``make venv``) for Python-backend model processes.

    The pytriton 0.7.0 stub is built against NumPy 1.x: with NumPy 2 first on its
    path, inputs silently arrive as zeros and outputs come back empty.
    """
    return Path(sys.prefix) / "triton-stub-site"


def venv_site_packages() -> list[str]:
    """Paths for Python-backend model processes, in import order.

    The stub embeds the system libpython in isolated mode, so model.py adds
    these paths to ``sys.path`` itself (passed as INFERLINE_EXTRA_SITE_PACKAGES):
    first the NumPy 1.x stub site, then the venv's site-packages.
    """
    import site

    paths = [str(stub_site_packages()), *site.getsitepackages()]
    return [p for p in paths if Path(p).is_dir()]
