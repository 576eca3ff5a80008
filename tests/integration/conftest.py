"""Session fixtures: one demo build, one real stack (Triton + router + SQLite Feast).

Everything runs as real processes on 127.0.0.1 with free ports, started and
stopped by the same launcher `make demo` and the benchmarks use.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest

from inferline.v1 import inference_pb2_grpc
from scripts.stack import ROOT, Stack

# Generous feature budget: CI boxes are slow and these tests check values,
# not latency (the benchmarks measure latency).
# Probes off here so Triton's request counters count only the tests' requests
# (tests/integration/test_faults.py exercises the probes).
ROUTER_ENV = {
    "INFERLINE_FEATURES__TIMEOUT_MS": "1000",
    "INFERLINE_LOG__LEVEL": "warning",
    "INFERLINE_RELIABILITY__PROBE_INTERVAL_S": "0",
}
TENANT = (("x-inferline-tenant", "demo"),)


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "scripts.build_demo", "--out", str(out)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


@pytest.fixture(scope="session")
def stack(demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("logs")
    with Stack(
        demo_build,
        logs,
        routing_table=ROOT / "scripts" / "demo_routing.yaml",
        router_env=ROUTER_ENV,
    ) as s:
        yield s


@pytest.fixture
async def stub(stack: Stack) -> Any:
    assert stack.router is not None
    async with grpc.aio.insecure_channel(stack.router.address) as ch:
        yield inference_pb2_grpc.InferenceServiceStub(ch)


@dataclass
class OfflineData:
    """The offline truth: feature rows as written to the offline store, per view."""

    build: Path

    def metadata(self, model: str, version: int) -> dict[str, Any]:
        path = self.build / "model_repository" / model / str(version) / "metadata.json"
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def view_frame(self, view: str) -> pd.DataFrame:
        """Latest row per entity from the view's offline parquet source."""
        from feast import FeatureStore

        fs = FeatureStore(repo_path=str(self.build / "feast"))
        fv = fs.get_feature_view(view)
        source: Any = fv.batch_source  # a FileSource in this repo
        path = Path(source.path)
        if not path.is_absolute():
            path = self.build / "feast" / path
        df = pd.read_parquet(path)
        keys = [c.name for c in fv.entity_columns]
        ts = source.timestamp_field
        return df.sort_values(ts).groupby(keys, as_index=True).last()


@pytest.fixture(scope="session")
def offline(demo_build: Path) -> OfflineData:
    return OfflineData(demo_build)
