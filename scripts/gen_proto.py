"""Generate the Python gRPC stubs from ``proto/`` into ``router/gen/``.

Generated code is never edited by hand: change the .proto and rerun
``make proto``. ``tests/unit/test_proto_stubs.py`` regenerates into a temporary
directory and fails on any difference, so committed stubs cannot drift.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "router" / "gen"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    # Every generated directory is a regular package (the stubs import each
    # other as `inferline.v1`), so mark each with an empty __init__.py.
    for d in {out / Path(f).parent for f in files}:
        while d != out.parent and d != out:
            (d / "__init__.py").touch()
            d = d.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
