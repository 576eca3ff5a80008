"""The committed generated stubs must equal a fresh generation from proto/."""

from __future__ import annotations

import filecmp
from pathlib import Path

from scripts import gen_proto


def _files(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_stubs_match_proto(tmp_path: Path) -> None:
    gen_proto.generate(tmp_path)
    fresh = _files(tmp_path)
    committed = _files(gen_proto.DEFAULT_OUT)
    assert sorted(fresh) == sorted(committed), "stub file set differs: run `make proto`"
    stale = [
        name for name, p in fresh.items() if not filecmp.cmp(p, committed[name], shallow=False)
    ]
    assert stale == [], f"stubs out of date, run `make proto`: {stale}"


def test_stubs_import_as_inferline_package() -> None:
    from inferline.v1 import inference_pb2, inference_pb2_grpc

    assert inference_pb2.DESCRIPTOR.package == "inferline.v1"
    assert hasattr(inference_pb2_grpc, "InferenceServiceStub")
